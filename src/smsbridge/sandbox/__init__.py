"""Loopback stand-ins for the outside world, for `make run --sandbox`, demos and tests."""

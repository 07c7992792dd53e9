"""Delivery adapters: how a text reaches a PBX extension (HTTP POST, AMQP publish)."""

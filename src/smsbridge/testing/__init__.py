"""Test doubles for code that runs on the broker, and configuration files for tests and benchmarks.

`smsbridge.testing.broker`: an in-memory publisher and a stub channel, queue and message, so a stage's
consumer loop and handlers run without RabbitMQ (in the spirit of dramatiq's StubBroker and
FastStream's test broker). What only a broker shows (confirms, permissions, delivery limits,
redelivery after a crash) stays with the integration tests against a real RabbitMQ.

`smsbridge.testing.config`: one builder for every configuration file a test or benchmark writes.
"""

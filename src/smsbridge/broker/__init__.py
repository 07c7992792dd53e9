"""RabbitMQ: topology, confirmed publishing and the consumer loop (ack policy, retries, dead letters)."""

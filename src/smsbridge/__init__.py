"""smsbridge: an SMS/MMS bridge between Flowroute and business phone systems, over RabbitMQ."""

__version__ = "0.1.0"

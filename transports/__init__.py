"""ZeroMQ transports and client libraries. Never imports torch or the training engine."""

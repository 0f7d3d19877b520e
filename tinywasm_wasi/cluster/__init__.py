"""More than one process: the embedded nats-server and the worker supervisor."""

"""Control plane: command handlers in the daemon and the ``ferretctl`` client."""

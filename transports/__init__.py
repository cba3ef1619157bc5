"""ZeroMQ transports and client libraries. Never imports torch or the training engine.

* ``wire``: msgpack framing (no numpy); ``arrays``: numpy arrays, the strict decoder, samples.
* ``client``: device publisher, snapshot subscriber, inference client (no structlog);
  ``control_client``: the control socket's client (what ``ferretctl`` uses).
* ``zmq_ingest``, ``zmq_snapshots``, ``zmq_control``: the daemon's servers (they log through
  structlog); ``security``: socket limits and CURVE keys. ``codec`` re-exports for old imports.
"""

"""The control component: the operator-facing endpoints (control ROUTER, OpenMetrics over HTTP).

``ferretctl`` talks to the control socket (:class:`transports.zmq_control.ControlServer`); its
handlers (:mod:`ferretd.control.commands`) read thread-safe state or enqueue a call for the
loop. With ``[metrics] listen`` set, an OpenMetrics endpoint serves the status too
(``prometheus_client`` is imported only then). Both are restart-only: no live key, nothing in
a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from ferretd.config import Config
from transports.zmq_control import ControlServer


class ControlComponent:
    def __init__(self, config: Config) -> None:
        self._config = config
        self.server: ControlServer | None = None
        self.metrics_endpoint: Any = None  # ferretd.exposition.MetricsEndpoint when [metrics] listen is set

    def bind(self, context: zmq.Context[Any], curve: Any, handler: Any) -> None:
        cfg = self._config.control
        self.server = ControlServer(
            context,
            cfg.endpoint,
            handler,
            max_request_bytes=cfg.max_request_bytes,
            rcvhwm=cfg.rcvhwm,
            curve=curve,
        )

    def start(self, status: Callable[[], dict[str, Any]]) -> None:
        """Serve control requests; and the status over OpenMetrics when ``[metrics] listen`` is set."""
        if self.server is not None:
            self.server.start()
        if self._config.metrics.listen:
            from ferretd.exposition import MetricsEndpoint

            self.metrics_endpoint = MetricsEndpoint(self._config.metrics.listen, status)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()

    @property
    def errors(self) -> int:
        return self.server.errors if self.server is not None else 0

    # ------------------------------------------------------------------ component

    def capture(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing in a checkpoint."""

    def reconfigure(self, config: Config) -> None:
        """No live key: endpoints and limits need a restart."""
        self._config = config

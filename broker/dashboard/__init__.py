"""The broker's live dashboard (docs/dashboard.md): pages, ``/api/``, ``/metrics``.

It runs in the broker's process and trio loop (hypercorn's trio worker serving a starlette
app) but reads the lab only through the public trio SDK on the broker's own bus, like any
other client, plus the broker's ``BrokerMetrics`` counters. It is read-only and binds where
it is told (loopback by default). If it cannot start (port taken, hypercorn missing) it
logs why and the broker runs on without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio

if TYPE_CHECKING:
    from labctl.broker.server import Broker

log = structlog.get_logger("dashboard")


def loopback(endpoint: str) -> str:
    """The broker's bus as a local client dials it (a wildcard bind becomes loopback)."""
    return endpoint.replace("://0.0.0.0:", "://127.0.0.1:").replace("://*:", "://127.0.0.1:")


def bind_address(listen: str) -> str:
    """``HOST:PORT``, ``:PORT`` (loopback) or ``PORT`` (loopback), as hypercorn binds it."""
    listen = listen.strip()
    if listen.isdigit():
        return f"127.0.0.1:{listen}"
    if listen.startswith(":"):
        return f"127.0.0.1{listen}"
    return listen


async def serve_dashboard(
    listen: str, broker: Broker, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; ``task_status.started`` once bound (or once it gave up)."""
    try:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        from labctl.aio import AsyncLab
        from labctl.broker.auth import insecure_addresses, is_loopback_host

        from .app import build_app
        from .fanout import Fanout
        from .view import LabView
    except ImportError as exc:
        log.error("dashboard not served: a dependency is missing", error=str(exc))
        task_status.started([])
        return
    config = Config()
    config.bind = [bind_address(listen)]
    config.accesslog = None
    config.errorlog = None  # structlog reports what matters; hypercorn's own log is noise
    config.graceful_timeout = 0.5
    config.websocket_ping_interval = 20.0  # a dead page's socket is noticed and closed
    keys = broker.curve.viewer_keys() if broker.curve else False  # CURVE: an in-memory viewer
    async with AsyncLab(loopback(broker.bus_endpoint), keys=keys) as lab:
        view = LabView(lab)
        view.insecure = insecure_addresses(broker.settings)  # a warning on every page
        fanout = Fanout(view)
        host = config.bind[0].rsplit(":", 1)[0]
        app = build_app(view, fanout, broker.metrics, loopback=is_loopback_host(host))
        async with trio.open_nursery() as nursery:
            try:
                binds = await nursery.start(serve, app, config)
            except Exception as exc:  # the port is taken, the address is malformed
                log.error("dashboard not served", listen=listen, error=_first_cause(exc))
                task_status.started([])
                nursery.cancel_scope.cancel()
                return
            log.info("dashboard", url=binds[0] if binds else listen)
            task_status.started(binds)
            nursery.start_soon(fanout.run)
            nursery.start_soon(_follow, view)


def _first_cause(exc: BaseException) -> str:
    """The error itself, not trio's "Exceptions from Trio nursery" group around it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


async def _follow(view: Any) -> None:
    """Keep the view current; if the subscription fails, start it again."""
    while True:
        try:
            await view.run()
        except Exception as exc:  # the broker is shutting down or the bus hiccupped
            log.warning("dashboard lost the event stream; resubscribing", error=str(exc))
        await trio.sleep(1.0)

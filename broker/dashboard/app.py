"""The dashboard's ASGI app (starlette): pages, JSON under ``/api/``, ``/metrics``, and two
WebSockets, ``/ws`` (the lab, live) and ``/ws/console/<device>`` (a read-only console).

Everything is read-only: the app reads the lab through the SDK (``LabView``) and never
sends a mutating call. Pages and their assets are files shipped in this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from labctl.aio import AsyncDevice
from labctl.broker.metrics import BrokerMetrics
from labctl.durations import parse_duration
from labctl.errors import LabError, SelectorError
from labctl.selector import parse as parse_selector

from . import prometheus
from .fanout import Fanout
from .guard import SameOrigin
from .view import LabView, to_json

log = structlog.get_logger("dashboard")

STATIC = Path(__file__).parent / "static"
CONSOLE_TAIL = 64 * 1024  # scrollback a console page starts with
CONSOLE_BACKLOG = 256 * 1024  # bytes held for a slow page before it is reset to the tail


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return to_json(content).encode()


def build_app(
    view: LabView, fanout: Fanout, metrics: BrokerMetrics, loopback: bool = True
) -> Starlette:
    """``loopback``: the dashboard binds loopback (only loopback Host names are served)."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def api_devices(request: Request) -> Response:
        text = request.query_params.get("selector", "")
        try:
            selector = parse_selector(text)
        except SelectorError as err:
            return JSON(
                {"error": err.message.splitlines()[0], "selector": text, **(err.details or {})},
                status_code=400,
            )
        return JSON([d for d in view.devices.values() if selector.matches(d["labels"])])

    async def api_device(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            return JSON(await view.device_detail(name))
        except LabError as err:
            return JSON({"error": err.message, "code": err.code}, status_code=404)

    async def api_leases(request: Request) -> Response:
        return JSON({"leases": view.leases, "queue": view.queue})

    async def api_events(request: Request) -> Response:
        q = request.query_params
        try:
            since = parse_duration(q.get("since", "1h"))
            limit = min(int(q.get("limit", "1000")), 10000)
            after = int(q.get("after", "0"))
            if limit < 1:
                raise ValueError(f"limit must be at least 1, not {limit}")
        except (LabError, ValueError) as err:
            return JSON({"error": str(getattr(err, "message", err))}, status_code=400)
        rows = await view.lab.history(since, q.get("topic", "*"), limit)
        return JSON([ev for ev in rows if ev["seq"] > after])

    async def metrics_page(request: Request) -> Response:
        text = prometheus.render(view, metrics, fanout)
        return Response(text, media_type=prometheus.CONTENT_TYPE)

    async def lab_socket(ws: WebSocket) -> None:
        await ws.accept()
        q = fanout.add()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
                while True:
                    message = await q.next()
                    await ws.send_text(view.snapshot_json() if message is None else message)
        except Exception as exc:  # the page went away mid-send
            log.debug("dashboard socket closed", error=repr(exc))
        finally:
            fanout.remove(q)

    async def console_socket(ws: WebSocket) -> None:
        await ws.accept()
        name = ws.path_params["name"]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
                await ConsoleRelay(view, name, ws).run()
        except Exception as exc:
            log.debug("console socket closed", device=name, error=repr(exc))

    routes = [
        Route("/", page),
        Route("/device/{name:path}", page),
        Route("/api/devices", api_devices),
        Route("/api/devices/{name:path}", api_device),
        Route("/api/leases", api_leases),
        Route("/api/events", api_events),
        Route("/metrics", metrics_page),
        WebSocketRoute("/ws", lab_socket),
        WebSocketRoute("/ws/console/{name:path}", console_socket),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SameOrigin, loopback=loopback)])


async def _until_closed(ws: WebSocket, scope: trio.CancelScope) -> None:
    """Read (and ignore) what the page sends; cancel its handler when it disconnects."""
    try:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass
    finally:
        scope.cancel()


class ConsoleRelay:
    """One page's read-only console: the device's ``console`` stream (no lease, so it
    cannot write), its scrollback first, then live bytes. Bytes are held for the page up to
    ``CONSOLE_BACKLOG``; past that the page is told to reset and gets the newest tail, so
    the stream's credit is always granted and a slow page never holds the board back."""

    def __init__(self, view: LabView, name: str, ws: WebSocket) -> None:
        self.view, self.name, self.ws = view, name, ws
        self.buf = bytearray()
        self.reset = False
        self.notes: list[str] = []  # state changes for the page (open, closed), in order
        self._wake = trio.Event()

    async def run(self) -> None:
        dev = self.view.devices.get(self.name)
        if dev is None or dev.get("kind") != "serial":
            await self.ws.send_text(to_json({"type": "error", "error": "not a serial device"}))
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, dev)
            while True:
                while not self.buf and not self.reset and not self.notes:
                    self._wake = trio.Event()
                    await self._wake.wait()
                if self.notes:
                    await self.ws.send_text(self.notes.pop(0))
                    continue
                if self.reset:
                    self.reset = False
                    await self.ws.send_text(to_json({"type": "reset"}))
                    continue
                data, self.buf = bytes(self.buf), bytearray()
                await self.ws.send_bytes(data)

    def _got(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > CONSOLE_BACKLOG:
            del self.buf[:-CONSOLE_TAIL]
            self.reset = True
        self._wake.set()

    def _note(self, note: dict[str, Any]) -> None:
        self.notes.append(to_json(note))
        self._wake.set()

    async def _read(self, dev: dict[str, Any]) -> None:
        first = True
        while True:
            try:
                device = AsyncDevice(self.view.lab, self.name, dev)  # no lease: read-only
                stream = device.stream("console", write=False, tail=CONSOLE_TAIL)
                async with stream:
                    if not first:  # reopened: the tail repeats what the page has
                        self.buf.clear()
                        self.reset = True
                    first = False
                    self._note({"type": "open"})
                    async for data in stream:
                        self._got(data)
                why = stream.closed_reason or "closed"
            except LabError as err:
                why = err.message
            self._note({"type": "closed", "reason": why})
            await trio.sleep(1.0)  # the service may be restarting: try again

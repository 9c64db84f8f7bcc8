"""The one thread that talks to SQLite, so a slow disk or a long journal scan never stalls
the broker's loop (a lease grant waits for its commit; an RPC next to it does not).

Jobs run in the order they were submitted, on one connection. A job's ``then`` runs back in
the broker's trio thread with the result (or the exception), so everything that touches the
broker's state stays on one thread. ``after_writes(fn)`` runs ``fn`` once every write
submitted before it is committed: what makes "granted leases are committed before the grant
reply is sent" (PROTOCOL.md §8) hold without waiting on the loop.

The thread is started and joined by its owner (``Broker.serve``); ``stop`` lets it finish
the queued jobs first.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog
import trio

from .store import Store

log = structlog.get_logger("store")

_STOP = object()


class StoreThread:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def start(self) -> None:
        """Start the thread; from the broker's trio thread (results come back to it)."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name="labctl-store", daemon=False)
        self._thread.start()

    def stop(self) -> None:
        """Finish every queued job, close the database and join the thread."""
        if self._thread is None:
            self.store.close()
            return
        self._jobs.put(_STOP)
        self._thread.join()
        self._thread = None

    def submit(
        self, fn: Callable[..., Any], *args: Any, then: Callable[[Any], None] | None = None
    ) -> None:
        """Run ``fn(*args)`` on the store's thread; ``then(result)`` back on the loop."""
        if self._thread is None:  # not started (loading at bind time): run it here
            result = _call(fn, args)
            if then is not None:
                _deliver(then, result)
            return
        self._jobs.put((fn, args, then))

    def after_writes(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on the loop once everything submitted so far is committed."""
        self.submit(_nothing, then=lambda _result: fn())

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                break
            fn, args, then = job
            result = _call(fn, args)
            if then is not None and self._token is not None:
                try:
                    self._token.run_sync_soon(_deliver, then, result)
                except trio.RunFinishedError:
                    pass  # the broker is gone; nobody waits for this any more
        try:
            self.store.close()
        except Exception:
            log.exception("closing the store failed")


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # the loop decides what a failed job means
        log.error("store job failed", job=getattr(fn, "__name__", "?"), error=str(exc))
        return exc


def _deliver(then: Callable[[Any], None], result: Any) -> None:
    try:
        then(result)
    except Exception:  # a callback bug must not take trio's run loop down
        log.exception("store callback failed")


def _nothing() -> None:
    return None

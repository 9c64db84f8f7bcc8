"""The one thread that talks to SQLite, so a slow disk or a long journal scan never stalls
the broker's loop (a lease grant waits for its commit; an RPC next to it does not).

Jobs run in the order they were submitted, on one connection. A job's ``then`` runs back in
the broker's trio thread with the result (or the exception), so everything that touches the
broker's state stays on one thread. ``after_writes(fn)`` runs ``fn`` once every write
submitted before it is committed: what makes "granted leases are committed before the grant
reply is sent" (PROTOCOL.md §8) hold without waiting on the loop.

The thread is started and joined by its owner (``Broker.serve``); ``stop`` lets it finish
the queued jobs first.

A full disk (``store.is_full``) sets ``full``: the lease table then refuses new lease changes
(``storage-full``), durable jobs (state changes the broker made by itself: expiry, a failed
reset) are kept in order and written by ``recover`` once a probe write succeeds again (the
broker's heartbeat tick submits it), and ``full`` clears. Nothing granted is lost: a grant is
answered only after its commit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog
import trio

from .store import Store, is_full

log = structlog.get_logger("store")

_STOP = object()


class StoreThread:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.full = False  # the last write found no space; cleared by ``recover``
        self.full_reason = ""
        self._retry: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

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
        self,
        fn: Callable[..., Any],
        *args: Any,
        then: Callable[[Any], None] | None = None,
        durable: bool = False,
    ) -> None:
        """Run ``fn(*args)`` on the store's thread; ``then(result)`` back on the loop.
        A ``durable`` write that finds the disk full is kept and written on recovery."""
        if self._thread is None:  # not started (loading at bind time): run it here
            result = self._job(fn, args, durable)
            if then is not None:
                _deliver(then, result)
            return
        self._jobs.put((fn, args, then, durable))

    def status(self) -> dict[str, Any]:
        return {"full": self.full, "reason": self.full_reason, "waiting_writes": len(self._retry)}

    def recover(self) -> None:
        """While full: try a probe write; if it works, write the kept jobs in order."""
        if self.full:
            self.submit(self._recover)

    def _recover(self) -> None:
        if not self.full:
            return
        try:
            self.store.probe()
            while self._retry:
                fn, args = self._retry[0]
                fn(*args)
                self._retry.pop(0)
        except Exception as exc:
            if not is_full(exc):
                raise
            return  # still full: try again next tick
        self.full, self.full_reason = False, ""
        log.warning("broker state disk writable again", dir=str(self.store.dir))

    def _job(self, fn: Callable[..., Any], args: tuple[Any, ...], durable: bool) -> Any:
        if durable and self.full:
            self._retry.append((fn, args))  # in order, after the ones kept before it
            return None
        result = _call(fn, args)
        if isinstance(result, Exception) and is_full(result):
            if not self.full:
                log.error(
                    "broker state disk is full: lease changes are refused until it has space",
                    dir=str(self.store.dir),
                    error=str(result),
                )
            self.full, self.full_reason = True, str(result)
            if durable:
                self._retry.append((fn, args))
                return None
        return result

    def after_writes(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on the loop once everything submitted so far is committed."""
        self.submit(_nothing, then=lambda _result: fn())

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                break
            fn, args, then, durable = job
            result = self._job(fn, args, durable)
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

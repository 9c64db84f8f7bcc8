"""A warmed parent that forks services, so a lab host pays for Python's imports once.

`labctl lab up` starts one fork server. It imports the service runtime and the drivers the lab
uses, freezes what it imported out of the garbage collector's reach (so children do not copy
those pages by touching them), and then forks one child per service on request. A child shares
the parent's pages copy-on-write; only what it changes is its own (DESIGN §13: under 12 MB
unique memory per service).

Protocol, one JSON object per line: lab up writes ``{"spawn": NAME, "config": PATH}`` on the
server's stdin and reads ``{"spawned": NAME, "pid": PID}`` then, when the child exits,
``{"exited": PID, "rc": RC}`` on its stdout. The server never runs trio or ZeroMQ itself
(neither survives a fork); each child starts both fresh. When lab up goes away (stdin closes,
or the parent dies: PDEATHSIG), the server terminates its children and exits.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import selectors
import signal
import sys
from typing import Any

from labctl.errors import LabError

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` when the parent (thread) exits."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def preload(kinds_drivers: list[str]) -> None:
    """Import the runtime and each ``kind:driver`` the lab will run."""
    from . import launch  # noqa: F401  (the runtime, config models, logging)
    from .catalog import load_driver

    for item in kinds_drivers:
        kind, _, driver = item.partition(":")
        try:
            load_driver(kind, driver)
        except Exception:  # a bad driver fails in its own child, with its own message
            continue
    importlib.invalidate_caches()


def child(config: str, close_fds: list[int]) -> None:
    """In the forked child: become the service named by ``config``; never returns."""
    signal.set_wakeup_fd(-1)  # trio sets its own
    for fd in close_fds:
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the command pipe is the server's, not the service's
    os.close(devnull)
    os.dup2(2, 1)  # what a service prints goes where its logs go
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()
    gc.unfreeze()
    rc = 0
    try:
        from .launch import run_service

        sys.argv = ["labctl-service", config]
        run_service(config)
    except LabError as err:
        print(f"error: {err.message}", file=sys.stderr)
        rc = err.exit_code
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - report and exit like an interpreter would
        import traceback

        traceback.print_exception(exc)
        rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(rc)


class ForkServer:
    def __init__(self) -> None:
        self.children: set[int] = set()
        self.out = sys.stdout
        self.wake_r, self.wake_w = os.pipe()

    def say(self, msg: dict[str, Any]) -> None:
        self.out.write(json.dumps(msg) + "\n")
        self.out.flush()

    def spawn(self, name: str, config: str) -> None:
        pid = os.fork()
        if pid == 0:
            child(config, [self.wake_r, self.wake_w])
        self.children.add(pid)
        self.say({"spawned": name, "pid": pid})

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.say({"exited": pid, "rc": os.waitstatus_to_exitcode(status)})

    def stop(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def serve(self) -> None:
        wake_r = self.wake_r
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "cmd")
        sel.register(wake_r, selectors.EVENT_READ, "signal")
        buf = b""
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "signal":
                        sigs = os.read(wake_r, 256)
                        self.reap()
                        if signal.SIGTERM.to_bytes(1, "little") in sigs:
                            return
                        continue
                    chunk = os.read(sys.stdin.fileno(), 65536)
                    if not chunk:
                        return  # lab up is gone
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        cmd = json.loads(line)
                        self.spawn(cmd["spawn"], cmd["config"])
        finally:
            self.stop()


def main() -> None:
    die_with_parent()
    preload(sys.argv[1:])
    gc.collect()
    gc.freeze()  # children never scan (and so never copy) what the parent imported
    ForkServer().serve()


if __name__ == "__main__":
    main()

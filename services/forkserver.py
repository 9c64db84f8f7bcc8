"""A warmed parent that forks services, so a lab host pays for Python's imports once.

`labctl lab up` starts one fork server. It imports the service runtime and the drivers the lab
uses, freezes what it imported out of the garbage collector's reach (so children do not copy
those pages by touching them), and then forks one child per service on request. A child shares
the parent's pages copy-on-write; only what it changes is its own (DESIGN §13: under 12 MB
unique memory per service).

Forked services are named ``svc:NAME`` (``ps -o pid,comm``). Protocol, one JSON object per line: lab up writes ``{"spawn": NAME, "config": PATH}`` on the
server's stdin and reads ``{"spawned": NAME, "pid": PID}`` then, when the child exits,
``{"exited": PID, "rc": RC}`` on its stdout. The server never runs trio or ZeroMQ itself
(neither survives a fork); each child starts both fresh. When lab up goes away (stdin closes,
or the parent dies: PDEATHSIG), the server terminates its children and exits.
"""

from __future__ import annotations

import contextlib
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
    import pwd  # noqa: F401  (getpass.getuser(), at registration)

    from labctl import client  # noqa: F401  (the broker address and keys, read at start)

    from . import launch  # noqa: F401  (the runtime, config models, logging)
    from .catalog import load_driver

    for item in kinds_drivers:
        kind, _, driver = item.partition(":")
        try:
            load_driver(kind, driver)
        except Exception:  # a bad driver fails in its own child, with its own message
            continue
    importlib.invalidate_caches()


def set_process_name(name: str) -> None:
    """Name this process ``name`` for ps/top (``ps -o comm``); a fork keeps its parent's argv."""
    import ctypes

    PR_SET_NAME = 15
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15])


def child(name: str, config: str, close_fds: list[int], log: str | None = None) -> None:
    """In the forked child: become the service ``name`` from ``config``; never returns.
    Its stdout and stderr go to ``log`` (a FIFO lab up reads) when given."""
    set_process_name(f"svc:{name}")
    signal.set_wakeup_fd(-1)  # trio sets its own
    for fd in close_fds:
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the command pipe is the server's, not the service's
    os.close(devnull)
    if log is not None:  # lab up reads each service's output apart, to prefix and keep it
        out = os.open(log, os.O_WRONLY)
        os.dup2(out, 2)
        os.close(out)
    os.dup2(2, 1)  # what a service prints goes where its logs go
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()
    # What the parent imported stays frozen: a collection in the child (the runtime runs one
    # after start-up) would otherwise touch every shared object and copy its page.
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

    def spawn(self, name: str, config: str, log: str | None = None) -> None:
        pid = os.fork()
        if pid == 0:
            child(name, config, [self.wake_r, self.wake_w], log)
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
                        self.spawn(cmd["spawn"], cmd["config"], cmd.get("log"))
        finally:
            self.stop()


def main() -> None:
    set_process_name("lab-forkserver")
    die_with_parent()
    preload(sys.argv[1:])
    gc.collect()
    gc.freeze()  # children never scan (and so never copy) what the parent imported
    ForkServer().serve()


if __name__ == "__main__":
    main()


class ForkServerClient:
    """`lab up`'s end of the fork server: spawn services in it and learn when they exit.

    ``run()`` starts the server process and reads its reports until cancelled (it belongs in
    the lab's nursery); ``spawn`` and ``wait`` are called by the supervisors. When the server
    process dies, its children die with it (PDEATHSIG): every waiter gets rc ``None``, and
    ``run`` starts a new server, so supervisors simply restart their service.
    """

    def __init__(self, kinds_drivers: list[str], env: dict[str, str]) -> None:
        import trio

        self.argv = [sys.executable, "-m", "labctl.services.forkserver", *kinds_drivers]
        self.env = env
        self._ready = trio.Event()
        self._lock = trio.Lock()
        self._answers: dict[str, trio.Event] = {}  # spawn requests by service name
        self._pids: dict[str, int] = {}
        self._exits: dict[int, trio.Event] = {}
        self._rc: dict[int, int | None] = {}
        self._proc: Any = None

    async def run(self) -> None:
        import subprocess

        import trio

        while True:
            self._proc = subprocess.Popen(  # noqa: PLW1509 - lab up forks from its main thread
                self.argv, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                preexec_fn=die_with_parent,
            )  # fmt: skip
            stdout = trio.lowlevel.FdStream(os.dup(self._proc.stdout.fileno()))
            self._ready.set()
            try:
                buf = b""
                while chunk := await stdout.receive_some(65536):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        self._on_report(json.loads(line))
            finally:
                self._ready = trio.Event()
                with trio.CancelScope(shield=True):
                    await stdout.aclose()
                    self._stop_server()
                    for pid in list(self._exits):
                        self._exited(pid, None)
                    for answer in self._answers.values():
                        answer.set()  # its spawn() fails and its supervisor retries
            await trio.sleep(0.5)

    def _on_report(self, msg: dict[str, Any]) -> None:
        if "spawned" in msg:
            self._pids[msg["spawned"]] = int(msg["pid"])
            answer = self._answers.get(msg["spawned"])
            if answer is not None:
                answer.set()
        elif "exited" in msg:
            self._exited(int(msg["exited"]), msg.get("rc"))

    def _exited(self, pid: int, rc: int | None) -> None:
        self._rc[pid] = rc
        event = self._exits.get(pid)
        if event is not None:
            event.set()

    def _stop_server(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.stdin.close()  # the server terminates its children and exits
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
                proc.wait()

    async def spawn(self, name: str, config: str, log: str | None = None) -> int:
        """Fork the service ``name`` from its ``config`` file, its output to the FIFO
        ``log`` if given; returns its pid."""
        import trio

        async with self._lock:
            await self._ready.wait()
            answer = self._answers[name] = trio.Event()
            self._pids.pop(name, None)
            try:
                cmd = {"spawn": name, "config": config, **({"log": log} if log else {})}
                line = json.dumps(cmd).encode() + b"\n"
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
                with trio.fail_after(30):
                    await answer.wait()
            except (OSError, ValueError):  # the server just died: run() starts another
                raise ChildProcessError("the fork server went away") from None
            finally:
                del self._answers[name]
        if name not in self._pids:
            raise ChildProcessError("the fork server went away")
        pid = self._pids[name]
        self._exits[pid] = trio.Event()
        if pid in self._rc:  # it exited before we asked
            self._exits[pid].set()
        return pid

    async def wait(self, pid: int) -> int | None:
        """Wait until the forked ``pid`` exits; its exit code (None: the server died)."""
        event = self._exits.get(pid)
        if event is not None:
            await event.wait()
        self._exits.pop(pid, None)
        return self._rc.pop(pid, None)

    async def stop(self, pid: int) -> None:
        """SIGTERM ``pid``, wait up to 5 s for it to exit, then SIGKILL it."""
        import trio

        with trio.CancelScope(shield=True):
            if pid not in self._exits:
                return  # already reaped
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            with trio.move_on_after(5):
                await self.wait(pid)
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

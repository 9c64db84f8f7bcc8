"""A net-snmp ``pass_persist`` helper emulating writable PDU outlet tables for snmpd.

snmpd starts it once per registered subtree and talks to it over stdin/stdout
(``PING``/``get``/``getnext``/``set``). Outlet states live in one file per outlet under
the state directory (``apc.3`` holds ``1`` or ``0``), so a test can also change an outlet
"by hand" and both helper processes (one per subtree) agree without locking.

Emulated tables (numeric OIDs, no MIBs needed), outlets 1-8:

- APC rPDUOutletControlOutletCommand ``.1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.N``: 1 on, 2 off,
  3 reboot (ends on); reads back 1/2. rPDUOutletStatusOutletState ``...12.3.5.1.1.4.N``: 1/2.
- Raritan PX2 switchingOperation ``.1.3.6.1.4.1.13742.6.4.1.2.1.2.1.N``: 0 off, 1 on, 2 cycle;
  outletSwitchingState ``...6.4.1.2.1.3.1.N``: 7 on, 8 off (read-only).
- Raritan PX1 outletOperationalState ``.1.3.6.1.4.1.13742.4.1.2.2.1.3.N``: 0 off, 1 on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OUTLETS = range(1, 9)
APC_CMD = ".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"
APC_STATUS = ".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4"
PX2_OP = ".1.3.6.1.4.1.13742.6.4.1.2.1.2.1"
PX2_STATE = ".1.3.6.1.4.1.13742.6.4.1.2.1.3.1"
PX1_OP = ".1.3.6.1.4.1.13742.4.1.2.2.1.3"

# column -> (table, read map on->value, write map value->on or None if read-only)
COLUMNS: dict[str, tuple[str, dict[bool, int], dict[int, bool] | None]] = {
    APC_CMD: ("apc", {True: 1, False: 2}, {1: True, 2: False, 3: True}),
    APC_STATUS: ("apc", {True: 1, False: 2}, None),
    PX2_OP: ("raritan", {True: 1, False: 0}, {0: False, 1: True, 2: True}),
    PX2_STATE: ("raritan", {True: 7, False: 8}, None),
    PX1_OP: ("px1", {True: 1, False: 0}, {0: False, 1: True}),
}


def oid_key(oid: str) -> tuple[int, ...]:
    return tuple(int(p) for p in oid.strip(".").split("."))


ALL_OIDS = sorted((f"{col}.{n}" for col in COLUMNS for n in OUTLETS), key=oid_key)


class Outlets:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    def get(self, table: str, outlet: int) -> bool:
        try:
            return (self.dir / f"{table}.{outlet}").read_text().strip() == "1"
        except FileNotFoundError:
            return False

    def put(self, table: str, outlet: int, on: bool) -> None:
        tmp = self.dir / f".{table}.{outlet}.{os.getpid()}"
        tmp.write_text("1" if on else "0")
        tmp.replace(self.dir / f"{table}.{outlet}")


def split(oid: str) -> tuple[str, int] | None:
    col, _, last = oid.rpartition(".")
    if col in COLUMNS and last.isdigit() and int(last) in OUTLETS:
        return col, int(last)
    return None


def answer_get(outlets: Outlets, oid: str) -> list[str]:
    found = split(oid)
    if found is None:
        return ["NONE"]
    col, n = found
    table, read, _ = COLUMNS[col]
    return [oid, "integer", str(read[outlets.get(table, n)])]


def answer_set(outlets: Outlets, oid: str, typed_value: str) -> str:
    found = split(oid)
    if found is None:
        return "not-writable"
    col, n = found
    table, _, write = COLUMNS[col]
    if write is None:
        return "not-writable"
    kind, _, value = typed_value.partition(" ")
    if kind.lower() not in ("integer", "int", "i"):
        return "wrong-type"
    try:
        on = write[int(value)]
    except (KeyError, ValueError):
        return "wrong-value"
    outlets.put(table, n, on)
    return "DONE"


def main() -> None:
    outlets = Outlets(Path(sys.argv[1]))
    out = sys.stdout
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "PING":
            reply = ["PONG"]
        elif cmd == "get":
            reply = answer_get(outlets, sys.stdin.readline().strip())
        elif cmd == "getnext":
            oid = sys.stdin.readline().strip()
            nxt = [o for o in ALL_OIDS if oid_key(o) > oid_key(oid)]
            reply = answer_get(outlets, nxt[0]) if nxt else ["NONE"]
        elif cmd == "set":
            oid = sys.stdin.readline().strip()
            reply = [answer_set(outlets, oid, sys.stdin.readline().strip())]
        elif cmd == "":
            continue
        else:
            reply = ["NONE"]
        out.write("\n".join(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

"""The broker's durable state in one SQLite file: event journal, leases, audit journal.

Plain blocking SQLite on one connection. After the broker has loaded its state, only the
store thread (``store_thread.StoreThread``) calls these methods, so no query runs on the
broker's loop. Events come in batches (the event hub buffers them for a heartbeat tick);
lease changes and audit rows are committed at once, because a lease that was granted must
survive ``kill -9``.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from labctl.errors import ConfigError

#: an audit row: who, action, target, why
Audit = tuple[str, str, str, str]

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, topic TEXT NOT NULL, body BLOB
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY, holder TEXT NOT NULL, selector TEXT NOT NULL,
    devices TEXT NOT NULL, begin REAL NOT NULL, end REAL NOT NULL,
    grace REAL NOT NULL, reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, who TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, why TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS owed_reset (device TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS health (
    device TEXT PRIMARY KEY, health TEXT NOT NULL, reason TEXT NOT NULL DEFAULT ''
);
"""


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "broker.sqlite3"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            # a writer waits up to 30 s for a lock (a backup, an admin's sqlite3 shell): on
            # the store thread, where waiting costs the loop nothing
            self.db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.probe()  # a read-only directory or file fails here, not at the first lease
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"broker state directory {state_dir} is not usable ({exc}): make it writable "
                "by this user, free space on its disk, or pass --state DIR"
            ) from None
        self.retention = 7 * 24 * 3600.0

    def probe(self) -> None:
        """One small write: raises if the disk is full or read-only (see ``is_full``)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (int(time.time()),))

    def close(self) -> None:
        self.db.close()

    # -- events -------------------------------------------------------------------------
    def last_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def insert_events(self, rows: list[tuple[int, float, str, bytes]]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO events VALUES (?,?,?,?)", rows)

    def events_since(
        self, since_ts: float, topic_glob: str, limit: int
    ) -> list[tuple[int, float, str, bytes]]:
        """The newest ``limit`` events since ``since_ts`` whose topic matches, oldest first.

        SQLite's GLOB has fnmatch's ``*``, ``?`` and ``[...]``; only the negated class is
        spelt ``[^...]`` there instead of ``[!...]``, so that is translated. The event hub
        hands its buffered rows to the store thread before it asks.
        """
        cur = self.db.execute(
            "SELECT seq, ts, topic, body FROM events WHERE ts >= ? AND topic GLOB ? "
            "ORDER BY seq DESC LIMIT ?",
            (since_ts, topic_glob.replace("[!", "[^"), limit),
        )
        return list(cur)[::-1]

    # -- sequence numbers ---------------------------------------------------------------
    SEQ_BLOCK = 100_000

    def reserve_seq(self, current: int) -> int:
        """Persist a ceiling above ``current`` and return it.

        Events reach SQLite in batches, so after ``kill -9`` the journal may lack the last
        few; restarting from the reserved ceiling (not the last saved seq) keeps sequence
        numbers increasing for subscribers that stayed connected.
        """
        ceiling = current + self.SEQ_BLOCK
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('seq_ceiling', ?)", (ceiling,))
        return ceiling

    def seq_ceiling(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'seq_ceiling'").fetchone()
        return int(row[0]) if row else 0

    def prune(self) -> None:
        """Forget events past the retention (indexed on ``ts``)."""
        self.db.execute("DELETE FROM events WHERE ts < ?", (time.time() - self.retention,))

    # -- state changes: each one transaction with its audit row -------------------------------
    def grant(self, row: dict[str, Any], audit: Audit) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.save_lease(row)
            self.audit(*audit)

    def extend(self, row: dict[str, Any], audit: Audit) -> None:
        self.grant(row, audit)

    def end_lease(self, lease_id: str, audit: Audit, owed: list[str]) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.delete_lease(lease_id)
            for name in owed:
                self.set_owed_reset(name, True)
            self.audit(*audit)

    def health_change(self, device: str, health: str, reason: str, audit: Audit) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.set_health(device, health, reason)
            self.audit(*audit)

    # -- leases -------------------------------------------------------------------------
    def save_lease(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO leases VALUES (?,?,?,?,?,?,?,?)",
            (
                row["id"],
                row["holder"],
                row["selector"],
                json.dumps(row["devices"]),
                row["begin"],
                row["end"],
                row["grace"],
                row.get("reason", ""),
            ),
        )

    def delete_lease(self, lease_id: str) -> None:
        self.db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def load_leases(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT id, holder, selector, devices, begin, end, grace FROM leases")
        return [
            {
                "id": r[0],
                "holder": r[1],
                "selector": r[2],
                "devices": json.loads(r[3]),
                "begin": r[4],
                "end": r[5],
                "grace": r[6],
            }
            for r in cur
        ]

    # -- audit and health ---------------------------------------------------------------
    def audit(self, who: str, action: str, target: str, why: str = "") -> None:
        self.db.execute(
            "INSERT INTO audit (ts, who, action, target, why) VALUES (?,?,?,?,?)",
            (time.time(), who, action, target, why),
        )

    def audit_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT ts, who, action, target, why FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [dict(zip(("ts", "who", "action", "target", "why"), r, strict=True)) for r in cur]

    def set_health(self, device: str, health: str, reason: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO health VALUES (?,?,?)", (device, health, reason))

    def set_owed_reset(self, device: str, owed: bool) -> None:
        if owed:
            self.db.execute("INSERT OR IGNORE INTO owed_reset VALUES (?)", (device,))
        else:
            self.db.execute("DELETE FROM owed_reset WHERE device = ?", (device,))

    def load_owed_resets(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT device FROM owed_reset")}

    def load_health(self) -> dict[str, tuple[str, str]]:
        return {r[0]: (r[1], r[2]) for r in self.db.execute("SELECT * FROM health")}


def is_full(exc: BaseException) -> bool:
    """Whether a failed write means the disk takes no more (full, I/O error, read-only):
    the broker keeps serving and refuses lease changes until a probe write succeeds."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", 0) or 0
        # SQLITE_FULL, SQLITE_IOERR (a WAL write that found no space), SQLITE_READONLY
        return code & 0xFF in (13, 10, 8) or "full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

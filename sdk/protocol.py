"""The LAB1 wire protocol: the only module that builds or parses raw frames.

Mirrors PROTOCOL.md section by section. A message, as a DEALER sees it, is::

    [b"LAB1", type (1 byte), header (msgpack map), payload frame, ...]

and the broker's ROUTER sees the peer's routing id in front. Headers are small maps the
receiver decodes; payload frames are opaque to the broker and pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from . import fields
from .errors import BadRequest, LabError, ProtocolError, VersionMismatch, from_wire

# -- 1. Framing ---------------------------------------------------------------------------
TAG = b"LAB1"
TAG_PREFIX = b"LAB"

# -- 2. Message types ---------------------------------------------------------------------
REGISTER = b"\x01"
WELCOME = b"\x02"
HEARTBEAT = b"\x03"
DISCONNECT = b"\x04"
REQUEST = b"\x10"
REPLY = b"\x11"
ERROR = b"\x12"
CALL = b"\x13"
STREAM_OPEN = b"\x20"
STREAM_DATA = b"\x21"
STREAM_CREDIT = b"\x22"
STREAM_CLOSE = b"\x23"
EVENT = b"\x30"

NAMES = {
    REGISTER: "register",
    WELCOME: "welcome",
    HEARTBEAT: "heartbeat",
    DISCONNECT: "disconnect",
    REQUEST: "request",
    REPLY: "reply",
    ERROR: "error",
    CALL: "call",
    STREAM_OPEN: "stream-open",
    STREAM_DATA: "stream-data",
    STREAM_CREDIT: "stream-credit",
    STREAM_CLOSE: "stream-close",
    EVENT: "event",
}

# -- 3. Limits (checked before anything is decoded) -----------------------------------------
MAX_FRAMES = 16
MAX_HEADER = 64 * 1024
MAX_PAYLOAD = 16 * 1024 * 1024
ZERO_COPY = 64 * 1024  # frames from this size on are handed on without a copy (§3)

# -- 4. Timing defaults ---------------------------------------------------------------------
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_LIVENESS = 3  # intervals of silence before a peer counts as gone
DEFAULT_TIMEOUT = 10.0


def pack(obj: Any) -> bytes:
    """A msgpack body (bytes stay bytes, str stays str)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(mtype: bytes, header: dict[str, Any], *payload: Any) -> list[Any]:
    """Raw frames of one message: what the typed classes below build on. Outside this
    module only tests use it (to build messages a well-behaved peer never sends)."""
    return [TAG, mtype, pack(header), *payload]


@dataclass(slots=True)
class Message:
    """One received message before it is typed: what ``decode`` checked, routing needs
    (type, ``id``, ``sid``) and what the broker forwards untouched (payload frames)."""

    mtype: bytes
    header: dict[str, Any]
    payload: list[Any]
    raw_header: Any = b""  # the header frame as received

    @property
    def name(self) -> str:
        return NAMES.get(self.mtype, self.mtype.hex())

    @property
    def id(self) -> Any:
        """The request id the message carries or answers (nil if none)."""
        return self.header.get("id")

    @property
    def sid(self) -> Any:
        """The stream id (stream messages; nil on a client's STREAM-OPEN)."""
        return self.header.get("sid")


def _raw(frame: Any) -> bytes | memoryview:
    return frame.buffer if hasattr(frame, "buffer") else frame


def decode(frames: list[Any], max_payload: int = MAX_PAYLOAD) -> Message:
    """Parse frames (bytes or zmq.Frame) into a Message; ProtocolError if malformed.

    Sizes and counts are checked before msgpack sees a byte, so a hostile peer cannot
    make the receiver allocate or decode more than the limits allow.
    """
    n = len(frames)
    if n < 3:
        raise ProtocolError(f"message has {n} frames; at least 3 are required")
    if n > MAX_FRAMES:
        raise ProtocolError(f"message has {n} frames; at most {MAX_FRAMES} allowed")
    # the broker's bus hands over the first frames as bytes: no conversion (issue 8.5)
    tag, mtype, raw_header = frames[0], frames[1], frames[2]
    if type(tag) is not bytes:
        tag = bytes(_raw(tag))
    if tag != TAG:
        if tag.startswith(TAG_PREFIX) and len(tag) <= 8:
            raise VersionMismatch(
                f"peer speaks protocol {tag.decode(errors='replace')}, this end speaks "
                f"{TAG.decode()}; upgrade the older side",
                {"peer": tag.decode(errors="replace"), "ours": TAG.decode()},
            )
        raise ProtocolError("not a labctl message (first frame is not the LAB1 tag)")
    if type(mtype) is not bytes:
        mtype = bytes(_raw(mtype))
    if mtype not in NAMES:
        raise ProtocolError(f"unknown message type 0x{mtype.hex() or '??'}")
    if type(raw_header) is not bytes:
        raw_header = _raw(raw_header)
    if len(raw_header) > MAX_HEADER:
        raise ProtocolError(f"header of {len(raw_header)} bytes exceeds {MAX_HEADER}")
    try:
        header = unpack(raw_header)  # at most MAX_HEADER bytes: safe to decode
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a msgpack map")
    if n == 3:
        return Message(mtype, header, [], frames[2])
    payload = frames[3:]
    for frame in payload:
        if (len(frame) if type(frame) is bytes else len(_raw(frame))) > max_payload:
            # the header is fine, so the error can name the request it answers
            raise ProtocolError(
                f"payload frame of {len(_raw(frame))} bytes exceeds the limit of {max_payload}",
                {"id": header.get("id")},
            )
    return Message(mtype, header, payload, frames[2])


def forward(msg: Message, **changes: Any) -> list[Any]:
    """The broker's forwarding: the same message with header keys replaced (a reply's
    ``id``); payload frames pass through untouched, keys it does not know stay."""
    if not changes:
        return [TAG, msg.mtype, msg.raw_header, *msg.payload]
    return [TAG, msg.mtype, pack({**msg.header, **changes}), *msg.payload]


def _body(msg: Message, what: str) -> Any:
    """The one msgpack body frame (nil if absent); ProtocolError if it does not decode."""
    if not msg.payload:
        return None
    try:
        return unpack(_raw(msg.payload[0]))
    except Exception:
        raise ProtocolError(f"{what} body is not valid msgpack") from None


#: the body of a call without arguments, ``[[], {}]``: packed and recognized without msgpack
EMPTY_ARGS = b"\x92\x90\x80"


def pack_args(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> bytes:
    return pack([list(args), kwargs]) if args or kwargs else EMPTY_ARGS


def unpack_args(frame: Any) -> tuple[list[Any], dict[str, Any]]:
    """A REQUEST/CALL body: ``[args, kwargs]``; ProtocolError if it is anything else."""
    if frame is None or frame == EMPTY_ARGS:
        return [], {}
    try:
        args, kwargs = unpack(_raw(frame))
    except Exception:
        raise ProtocolError("request payload must be msgpack [args, kwargs]") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ProtocolError("request payload must be msgpack [args, kwargs]")
    return args, kwargs


# -- 2. Message types, in PROTOCOL.md's order ---------------------------------------------
# Each class is one message type: ``to_frames()`` builds it, ``parse(msg)`` reads it from a
# decoded Message. Parsing checks every field's type and range (``fields``: BadRequest
# naming the field) and leaves checks that need context (is the device known? is the
# credit within what the route allows?) to the receiver, which answers as §2 says.


@dataclass(slots=True)
class Register:
    """REGISTER: a service's identity in the header, its device list as the body."""

    service: Any
    devices: Any
    host: Any = ""
    pid: Any = 0
    user: Any = ""
    version: Any = ""

    def to_frames(self) -> list[Any]:
        header = {"service": self.service, "host": self.host, "pid": self.pid,
                  "user": self.user, "version": self.version}  # fmt: skip
        return [TAG, REGISTER, pack(header), pack(self.devices)]

    @classmethod
    def parse(cls, msg: Message) -> Register:
        if len(msg.payload) != 1:
            raise ProtocolError("register carries the device list as one payload frame")
        try:
            devices = unpack(_raw(msg.payload[0]))
        except Exception:
            raise ProtocolError("register's device list is not msgpack") from None
        h = msg.header
        if "service" not in h:
            raise ProtocolError("malformed registration: no 'service'")
        if not isinstance(devices, list):
            raise ProtocolError("register's device list must be a msgpack array")
        try:
            return cls(fields.text(h["service"], "service", 200, empty_ok=False), devices,
                       fields.text(h.get("host", ""), "host", 200),
                       fields.integer(h.get("pid", 0), "pid", 0, 1 << 32),
                       str(h.get("user", ""))[:200], str(h.get("version", ""))[:200])  # fmt: skip
        except BadRequest as exc:
            raise ProtocolError(f"malformed registration: {exc.message}", exc.details) from None


@dataclass(slots=True)
class Welcome:
    """WELCOME: the broker's settings for a service; a missing key is None (keep yours)."""

    events: Any = None
    heartbeat: Any = None
    liveness: Any = None
    broker: Any = None
    started: Any = None
    group_label: Any = None  # the label that groups one DUT's devices (§8)

    def as_dict(self) -> dict[str, Any]:
        """Also the result of the ``hello`` call."""
        return {"events": self.events, "heartbeat": self.heartbeat, "liveness": self.liveness,
                "broker": self.broker, "started": self.started,
                "group_label": self.group_label}  # fmt: skip

    def to_frames(self) -> list[Any]:
        return [TAG, WELCOME, pack(self.as_dict())]

    @classmethod
    def parse(cls, msg: Message) -> Welcome:
        h = msg.header
        return cls(h.get("events"), h.get("heartbeat"), h.get("liveness"), h.get("broker"),
                   h.get("started"), h.get("group_label"))  # fmt: skip


@dataclass(slots=True)
class Heartbeat:
    """HEARTBEAT: ``role`` "service" from a service, nothing from the broker."""

    role: str | None = None

    def to_frames(self) -> list[Any]:
        return [TAG, HEARTBEAT, pack({} if self.role is None else {"role": self.role})]

    @classmethod
    def parse(cls, msg: Message) -> Heartbeat:
        role = msg.header.get("role")
        return cls(role if isinstance(role, str) else None)


@dataclass(slots=True)
class Disconnect:
    reason: str = ""

    def to_frames(self) -> list[Any]:
        return [TAG, DISCONNECT, pack({"reason": self.reason})]

    @classmethod
    def parse(cls, msg: Message) -> Disconnect:
        return cls(str(msg.header.get("reason", "disconnected")))


@dataclass(slots=True)
class Request:
    """REQUEST: call ``method`` on ``device``; ``body`` is the packed ``[args, kwargs]``
    frame, kept as received so the broker forwards it without decoding."""

    id: Any
    device: Any
    method: Any
    lease: Any = None
    timeout: Any = None
    body: Any = None
    force: Any = None  # the reason for using a device in maintenance (§8), or nil

    @classmethod
    def call(
        cls,
        device: str,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        lease: str | None = None,
        force: str | None = None,
    ) -> Request:
        body = pack([list(args), kwargs or {}]) if args or kwargs else EMPTY_ARGS
        return cls(None, device, method, lease, None, body, force)

    def to_frames(self) -> list[Any]:
        header = {"id": self.id, "device": self.device, "method": self.method,
                  "lease": self.lease, "timeout": self.timeout}  # fmt: skip
        if self.force is not None:
            header["force"] = self.force
        if self.body is None:
            return [TAG, REQUEST, pack(header)]
        return [TAG, REQUEST, pack(header), self.body]

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return unpack_args(self.body)

    @classmethod
    def parse(cls, msg: Message) -> Request:
        """``lease`` a string or nil; ``timeout`` a finite number of seconds > 0, anything
        else reads as nil (the default, §2). ``device``/``method`` are checked by the
        receiver, which names them in ``bad-request``/``unknown-method``."""
        h = msg.header
        lease, force = h.get("lease"), h.get("force")
        return cls(h.get("id"), h.get("device"), h.get("method"),
                   None if lease is None else fields.text(lease, "lease", 200),
                   _timeout(h.get("timeout")), msg.payload[0] if msg.payload else None,
                   None if force is None else fields.text(force, "force"))  # fmt: skip


def _timeout(value: Any) -> float | None:
    if type(value) is float and 0.0 < value <= fields.MAX_SECONDS:
        return value  # the usual case, without the calls (a NaN or inf fails the test)
    try:
        return fields.seconds(value, "timeout")
    except BadRequest:
        return None


@dataclass(slots=True)
class Reply:
    """REPLY: the ``result`` of request ``id``; ``progress`` marks an interim one."""

    id: Any
    result: Any = None
    progress: bool = False

    def to_frames(self) -> list[Any]:
        """TypeError/ValueError if ``result`` cannot be packed."""
        body = pack(self.result)
        if self.progress:
            return [TAG, REPLY, pack({"id": self.id, "progress": True}), body]
        return [TAG, REPLY, pack({"id": self.id}), body]

    @classmethod
    def parse(cls, msg: Message) -> Reply:
        return cls(msg.header.get("id"), _body(msg, "reply"), bool(msg.header.get("progress")))


def reply_parts(msg: Message) -> tuple[bool, Any]:
    """A REPLY's ``(progress, result)`` without building a ``Reply`` (the client's hot path)."""
    return bool(msg.header.get("progress")), _body(msg, "reply")


@dataclass(slots=True)
class Error:
    """ERROR: request ``id`` (nil if none) failed with a typed error."""

    id: Any
    code: str
    message: str
    details: dict[str, Any] | None = None

    @classmethod
    def of(cls, err: LabError, rid: Any = None) -> Error:
        return cls(rid, err.code, err.message, err.details or None)

    def to_frames(self) -> list[Any]:
        header: dict[str, Any] = {"id": self.id, "code": self.code, "message": self.message}
        if self.details:
            header["details"] = self.details
        return [TAG, ERROR, pack(header)]

    def exception(self) -> LabError:
        """The exception of the error's class (``LabError`` for a code this end lacks)."""
        return from_wire(self.code, self.message, self.details)

    @classmethod
    def parse(cls, msg: Message) -> Error:
        h = msg.header
        details = h.get("details")
        return cls(h.get("id"), str(h.get("code")), str(h.get("message")),
                   details if isinstance(details, dict) else None)  # fmt: skip


def error_frames(err: LabError, rid: Any = None) -> list[Any]:
    return Error.of(err, rid).to_frames()


@dataclass(slots=True)
class Call:
    """CALL: a broker call (§7) by name; ``body`` is the packed ``[[], kwargs]``."""

    id: Any
    method: Any
    timeout: Any = None
    body: Any = None

    @classmethod
    def of(cls, method: str, kwargs: dict[str, Any]) -> Call:
        return cls(None, method, None, pack([[], kwargs]))

    def to_frames(self) -> list[Any]:
        header = {"id": self.id, "method": self.method, "timeout": self.timeout}
        if self.body is None:
            return [TAG, CALL, pack(header)]
        return [TAG, CALL, pack(header), self.body]

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments; ProtocolError if the body is not ``[args, kwargs]``,
        BadRequest for a keyword that is not a string."""
        kwargs = unpack_args(self.body)[1]
        for key in kwargs:
            fields.text(key, "keyword name", 100)
        return kwargs

    @classmethod
    def parse(cls, msg: Message) -> Call:
        h = msg.header
        return cls(h.get("id"), h.get("method"), _timeout(h.get("timeout")),
                   msg.payload[0] if msg.payload else None)  # fmt: skip


@dataclass(slots=True)
class StreamOpen:
    """STREAM-OPEN from a client: open ``stream`` on ``device``; REPLY or ERROR answers."""

    id: Any
    device: Any
    stream: Any
    write: bool = False
    lease: Any = None
    args: Any = None
    credit: Any = 0
    timeout: Any = None
    force: Any = None  # the reason for writing to a device in maintenance (§8), or nil

    def to_frames(self) -> list[Any]:
        header = {"id": self.id, "device": self.device, "stream": self.stream,
                  "write": self.write, "lease": self.lease, "args": self.args or {},
                  "credit": self.credit, "timeout": self.timeout}  # fmt: skip
        if self.force is not None:
            header["force"] = self.force
        return [TAG, STREAM_OPEN, pack(header)]

    @property
    def body(self) -> None:
        """No payload frame (the size check of ``Request``/``Call`` bodies skips it)."""
        return None

    @classmethod
    def parse(cls, msg: Message) -> StreamOpen:
        """``write`` a boolean, ``lease`` a string or nil, ``args`` a map, ``credit`` an int
        ≥ 0 (BadRequest naming the field); ``device``/``stream`` checked by the broker."""
        h = msg.header
        return cls(h.get("id"), h.get("device"), h.get("stream"),
                   fields.flag(h.get("write", False), "write"),
                   fields.optional_text(h.get("lease"), "lease", 200),
                   fields.mapping(h.get("args"), "args"),
                   fields.integer(h.get("credit", 0), "credit"),
                   _timeout(h.get("timeout")),
                   fields.optional_text(h.get("force"), "force"))  # fmt: skip


@dataclass(slots=True)
class StreamOffer:
    """STREAM-OPEN from the broker to a service: a client wants ``stream`` as ``sid``."""

    sid: Any
    device: Any
    stream: Any
    args: Any
    writable: bool
    credit: Any

    def to_frames(self) -> list[Any]:
        header = {"sid": self.sid, "device": self.device, "stream": self.stream,
                  "args": self.args, "writable": self.writable, "credit": self.credit}  # fmt: skip
        return [TAG, STREAM_OPEN, pack(header)]

    @classmethod
    def parse(cls, msg: Message) -> StreamOffer:
        h = msg.header
        return cls(h.get("sid"), h.get("device"), h.get("stream"), h.get("args") or {},
                   bool(h.get("writable")), h.get("credit", 0))  # fmt: skip


@dataclass(slots=True)
class StreamAccept:
    """STREAM-OPEN from a service with the ``sid``: it has the stream; ``credit`` for
    the client's writes. The broker tells it from a client's open by the ``sid``."""

    sid: Any
    credit: Any = 0

    def to_frames(self) -> list[Any]:
        return [TAG, STREAM_OPEN, pack({"sid": self.sid, "credit": self.credit})]

    @staticmethod
    def is_accept(msg: Message) -> bool:
        return "sid" in msg.header

    @classmethod
    def parse(cls, msg: Message) -> StreamAccept:
        return cls(msg.header.get("sid"), msg.header.get("credit", 0))


@dataclass(slots=True)
class StreamData:
    """STREAM-DATA: bytes of stream ``sid`` (``data``, one or more frames); ``meta`` is the
    service's extra header (serial: ``offset``, ``gap``; parsed, the whole header, which
    saves a copy per message); ``end`` is the writer's end of data (no bytes, the stream
    stays open for the service's verdict)."""

    sid: Any
    data: list[Any]
    meta: dict[str, Any] | None = None
    end: bool = False

    def to_frames(self) -> list[Any]:
        header = {"sid": self.sid} if self.meta is None else {"sid": self.sid, **self.meta}
        if self.end:
            header["end"] = True
        return [TAG, STREAM_DATA, pack(header), *self.data]

    @property
    def offset(self) -> int | None:
        off = None if self.meta is None else self.meta.get("offset")
        return off if isinstance(off, int) else None

    def size(self) -> int:
        return sum(len(_raw(f)) for f in self.data)

    def chunks(self, zero_copy: int = ZERO_COPY) -> list[bytes | memoryview]:
        """The data as the receiver hands it on: bytes, except frames of ``zero_copy``
        bytes or more received without copying (zmq.Frame), which stay a memoryview of
        the message (an upload's megabyte frames are not copied again on the way in)."""
        out: list[bytes | memoryview] = []
        for f in self.data:
            if isinstance(f, bytes):
                out.append(f)
            else:
                buf = _raw(f)
                out.append(buf if len(buf) >= zero_copy else bytes(buf))
        return out

    @classmethod
    def parse(cls, msg: Message) -> StreamData:
        h = msg.header
        return cls(h.get("sid"), msg.payload, h, bool(h.get("end", False)))


@dataclass(slots=True)
class StreamCredit:
    """STREAM-CREDIT: the receiver lets the sender send ``credit`` more bytes (0: a ping)."""

    sid: Any
    credit: Any

    def to_frames(self) -> list[Any]:
        return [TAG, STREAM_CREDIT, pack({"sid": self.sid, "credit": self.credit})]

    @classmethod
    def parse(cls, msg: Message) -> StreamCredit:
        return cls(msg.header.get("sid"), msg.header.get("credit", 0))


# -- stream ends: STREAM-DATA's end of data, STREAM-CLOSE's verdict ---------------------------
class _NoResult:
    """STREAM-CLOSE without a result frame (``None`` is a result like any other)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_RESULT"


NO_RESULT: Any = _NoResult()


def error_map(err: LabError) -> dict[str, Any]:
    """An error as the map ERROR headers and STREAM-CLOSE's ``error`` carry."""
    out: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.details:
        out["details"] = err.details
    return out


def error_from_map(value: Any) -> LabError:
    """The typed exception for an ``error`` map; a malformed map is a ProtocolError."""
    if not isinstance(value, dict):
        return ProtocolError(f"error must be a map, not {type(value).__name__}")
    details = value.get("details")
    return from_wire(
        str(value.get("code")),
        str(value.get("message", "")),
        details if isinstance(details, dict) else None,
    )


@dataclass(slots=True)
class StreamClose:
    """STREAM-CLOSE: the route ends; the service may say how (a result or a typed error).

    ``result`` travels as one payload frame (absent: ``NO_RESULT``), ``error`` as a map in
    the header. The broker's own closes carry ``error`` ``stream-closed``.
    """

    sid: Any
    reason: str = ""
    unknown: bool = False
    error: LabError | None = None
    result: Any = NO_RESULT

    def to_frames(self) -> list[Any]:
        header: dict[str, Any] = {"sid": self.sid, "reason": self.reason}
        if self.unknown:
            header["unknown"] = True
        if self.error is not None:
            header["error"] = error_map(self.error)
        if self.result is NO_RESULT:
            return [TAG, STREAM_CLOSE, pack(header)]
        return [TAG, STREAM_CLOSE, pack(header), pack(self.result)]

    @classmethod
    def parse(cls, msg: Message) -> StreamClose:
        h = msg.header
        err = h.get("error")
        result = NO_RESULT
        if msg.payload:
            try:
                result = unpack(_raw(msg.payload[0]))
            except Exception:
                err = {"code": "protocol", "message": "stream result is not valid msgpack"}
        return cls(
            h.get("sid"),
            str(h.get("reason", "")),
            bool(h.get("unknown", False)),
            None if err is None else error_from_map(err),
            result,
        )


@dataclass(slots=True)
class Event:
    """EVENT: a service publishes ``body`` (packed, forwarded as it came) on ``topic``."""

    topic: Any
    body: Any  # the packed body frame

    @classmethod
    def of(cls, topic: str, body: Any) -> Event:
        return cls(topic, pack(body))

    def to_frames(self) -> list[Any]:
        return [TAG, EVENT, pack({"topic": self.topic}), self.body]

    def value(self) -> Any:
        """The decoded body; ProtocolError if it is not msgpack."""
        try:
            return unpack(_raw(self.body))
        except Exception:
            raise ProtocolError(f"event body on {self.topic!r} is not msgpack") from None

    @classmethod
    def parse(cls, msg: Message) -> Event:
        topic = fields.text(msg.header.get("topic"), "topic", 1024, empty_ok=False)
        return cls(topic, msg.payload[0] if msg.payload else None)


# -- 10. The events socket (XPUB; no LAB1 tag) ---------------------------------------------


@dataclass(slots=True)
class Published:
    """One event as the events socket carries it: ``[topic, {seq, ts, topic}, body]``."""

    seq: int
    ts: float
    topic: str
    body: Any  # packed (bytes or a zmq.Frame) when sent; decoded after ``parse``

    def to_frames(self) -> list[Any]:
        meta = pack({"seq": self.seq, "ts": self.ts, "topic": self.topic})
        return [self.topic.encode(), meta, self.body]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "topic": self.topic, "body": self.body}

    @classmethod
    def parse(cls, frames: list[Any]) -> Published:
        """ProtocolError for anything that is not a readable event."""
        try:
            _topic, meta, body = frames
            m = unpack(_raw(meta))
            return cls(int(m["seq"]), float(m["ts"]), str(m["topic"]), unpack(_raw(body)))
        except Exception:
            raise ProtocolError("not a readable event") from None

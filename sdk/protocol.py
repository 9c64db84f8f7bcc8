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

from .errors import LabError, ProtocolError, VersionMismatch

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

# -- 4. Timing defaults ---------------------------------------------------------------------
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_LIVENESS = 3  # intervals of silence before a peer counts as gone
DEFAULT_TIMEOUT = 10.0


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(mtype: bytes, header: dict[str, Any], *payload: Any) -> list[Any]:
    """Frames for one message; payload items go out as they are (bytes or zmq.Frame)."""
    return [TAG, mtype, pack(header), *payload]


@dataclass(slots=True)
class Message:
    mtype: bytes
    header: dict[str, Any]
    payload: list[Any]
    raw_header: Any = b""  # the header frame as received, for forwarding untouched

    @property
    def name(self) -> str:
        return NAMES.get(self.mtype, self.mtype.hex())


def _raw(frame: Any) -> bytes | memoryview:
    return frame.buffer if hasattr(frame, "buffer") else frame


def decode(frames: list[Any], max_payload: int = MAX_PAYLOAD) -> Message:
    """Parse frames (bytes or zmq.Frame) into a Message; ProtocolError if malformed.

    Sizes and counts are checked before msgpack sees a byte, so a hostile peer cannot
    make the receiver allocate or decode more than the limits allow.
    """
    if len(frames) < 3:
        raise ProtocolError(f"message has {len(frames)} frames; at least 3 are required")
    if len(frames) > MAX_FRAMES:
        raise ProtocolError(f"message has {len(frames)} frames; at most {MAX_FRAMES} allowed")
    tag = bytes(_raw(frames[0]))
    if tag != TAG:
        if tag.startswith(TAG_PREFIX) and len(tag) <= 8:
            raise VersionMismatch(
                f"peer speaks protocol {tag.decode(errors='replace')}, this end speaks "
                f"{TAG.decode()}; upgrade the older side",
                {"peer": tag.decode(errors="replace"), "ours": TAG.decode()},
            )
        raise ProtocolError("not a labctl message (first frame is not the LAB1 tag)")
    mtype = bytes(_raw(frames[1]))
    if mtype not in NAMES:
        raise ProtocolError(f"unknown message type 0x{mtype.hex() or '??'}")
    raw_header = _raw(frames[2])
    if len(raw_header) > MAX_HEADER:
        raise ProtocolError(f"header of {len(raw_header)} bytes exceeds {MAX_HEADER}")
    try:
        header = unpack(raw_header)  # at most MAX_HEADER bytes: safe to decode
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a msgpack map")
    payload = frames[3:]
    for frame in payload:
        if len(_raw(frame)) > max_payload:
            # the header is fine, so the error can name the request it answers
            raise ProtocolError(
                f"payload frame of {len(_raw(frame))} bytes exceeds the limit of {max_payload}",
                {"id": header.get("id")},
            )
    return Message(mtype, header, payload, frames[2])


def error_frames(err: LabError, rid: Any = None) -> list[Any]:
    header: dict[str, Any] = {"id": rid, "code": err.code, "message": err.message}
    if err.details:
        header["details"] = err.details
    return encode(ERROR, header)


def pack_args(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> bytes:
    return pack([list(args), kwargs])


def unpack_args(frame: Any) -> tuple[list[Any], dict[str, Any]]:
    try:
        args, kwargs = unpack(_raw(frame))
    except Exception:
        raise ProtocolError("request payload must be msgpack [args, kwargs]") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ProtocolError("request payload must be msgpack [args, kwargs]")
    return args, kwargs

"""The codec: every message type survives to_frames -> decode -> parse, and forwarding
keeps what the broker does not know."""

from __future__ import annotations

from typing import Any

import pytest

from labctl import protocol as p
from labctl.errors import BadArguments, DeviceBusy, LabError, ProtocolError, StreamClosed

MESSAGES: list[Any] = [
    p.Register("pdu1", [{"name": "pdu1.1", "kind": "power"}], "host", 42, "me", "0.1.0"),
    p.Welcome("tcp://h:5551", 2.0, 3, "h", 1.5, "dut"),
    p.Heartbeat(),
    p.Heartbeat("service"),
    p.Disconnect("service stopping"),
    p.Request(7, "pdu1.1", "on", "lease-id", 10.0, p.pack_args([1], {"a": b"\x00"})),
    p.Reply(7, {"state": "on", "raw": b"\xff"}),
    p.Reply(7, {"position": 2}, progress=True),
    p.Error(7, "device-busy", "held", {"holder": "x"}),
    p.Call(3, "devices", 5.0, p.pack_args([], {"selector": "kind=power"})),
    p.StreamOpen(4, "con1", "console", True, "lease-id", {"since": 10}, 1 << 20, 10.0),
    p.StreamOffer(99, "con1", "console", {"since": 10}, True, 1 << 20),
    p.StreamAccept(99, 1 << 20),
    p.StreamData(99, [b"abc", b"def"], {"offset": 12}),
    p.StreamData(99, [], end=True),
    p.StreamCredit(99, 4096),
    p.StreamClose(99, "stream ended", result={"sha256": "ab"}),
    p.StreamClose(99, "bad image", error=BadArguments("bad image", {"size": 3})),
    p.StreamClose(99, "unknown stream", unknown=True, error=StreamClosed("unknown stream")),
    p.Event("device.pdu1.1.status", p.pack({"state": "on"})),
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, LabError):
        return type(a) is type(b) and (a.message, a.details) == (b.message, b.details)
    return bool(a == b)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message: Any) -> None:
    msg = p.decode(message.to_frames())
    back = type(message).parse(msg)
    for field in message.__dataclass_fields__:
        want, got = getattr(message, field), getattr(back, field)
        if field in ("body", "data"):  # payload frames come back as they went
            want = [bytes(f) for f in want] if isinstance(want, list) else want
            got = [bytes(f) for f in got] if isinstance(got, list) else got
        if field == "meta":  # parsed, it is the whole header (sid and end too)
            assert (want or {}).items() <= got.items()
            continue
        assert _same(want, got), (field, want, got)


def test_an_error_becomes_its_typed_exception() -> None:
    err = p.Error.parse(p.decode(p.Error.of(DeviceBusy("held", {"holder": "x"}), 3).to_frames()))
    exc = err.exception()
    assert isinstance(exc, DeviceBusy) and exc.details == {"holder": "x"} and err.id == 3


def test_forwarding_replaces_the_id_and_keeps_unknown_keys_and_payload() -> None:
    frames = p.encode(p.REPLY, {"id": 5, "extra": 1}, p.pack("on"))
    out = p.decode(p.forward(p.decode(frames), id=77))
    assert out.header == {"id": 77, "extra": 1} and p.Reply.parse(out).result == "on"
    same = p.forward(p.decode(frames))  # nothing changed: the header frame goes as it came
    assert same[2] == frames[2]


def test_a_stream_result_that_is_not_msgpack_is_a_protocol_error() -> None:
    frames = p.StreamClose(9, "done").to_frames() + [b"\xc1"]
    close = p.StreamClose.parse(p.decode(frames))
    assert isinstance(close.error, ProtocolError) and close.result is p.NO_RESULT


def test_events_socket_framing_round_trips() -> None:
    ev = p.Published(12, 1.5, "device.x.status", p.pack({"a": 1}))
    got = p.Published.parse(ev.to_frames())
    assert (got.seq, got.ts, got.topic, got.body) == (12, 1.5, "device.x.status", {"a": 1})
    with pytest.raises(ProtocolError):
        p.Published.parse([b"t", b"\xc1", b"x"])


# -- typed parse(): every field checked before use (issue 10) --------------------------------
@pytest.mark.parametrize(
    ("mtype", "header", "field"),
    [
        (p.REQUEST, {"id": 1, "device": "d", "method": "m", "lease": [1]}, "lease"),
        (p.REQUEST, {"id": 1, "device": "d", "method": "m", "lease": {"a": 1}}, "lease"),
        (p.STREAM_OPEN, {"id": 1, "device": "d", "stream": "s", "credit": 2**63}, "credit"),
        (p.STREAM_OPEN, {"id": 1, "device": "d", "stream": "s", "credit": "1"}, "credit"),
        (p.STREAM_OPEN, {"id": 1, "device": "d", "stream": "s", "args": [1]}, "args"),
        (p.STREAM_OPEN, {"id": 1, "device": "d", "stream": "s", "write": "yes"}, "write"),
        (p.EVENT, {"topic": 5}, "topic"),
    ],
)
def test_a_bad_header_field_is_a_bad_request_naming_it(
    mtype: bytes, header: dict[str, Any], field: str
) -> None:
    from labctl.errors import BadRequest

    msg = p.decode(p.encode(mtype, header, p.pack(None)))
    cls = {p.REQUEST: p.Request, p.STREAM_OPEN: p.StreamOpen, p.EVENT: p.Event}[mtype]
    with pytest.raises(BadRequest, match=field) as info:
        cls.parse(msg)  # type: ignore[attr-defined]
    assert info.value.details == {"field": field}


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), -1, 0, "5", [5], 1e300])
def test_a_timeout_that_is_not_a_finite_positive_number_reads_as_the_default(
    timeout: Any,
) -> None:
    msg = p.decode(p.encode(p.REQUEST, {"id": 1, "device": "d", "method": "m", "timeout": timeout}))
    assert p.Request.parse(msg).timeout is None


def test_a_registration_with_bad_fields_is_a_protocol_error() -> None:
    for header, body in [
        ({"service": ["x"]}, []),
        ({"service": "s", "pid": 2**64 - 1}, []),
        ({"service": "s", "host": {"a": 1}}, []),
        ({"service": "s"}, {"name": "x"}),
    ]:
        with pytest.raises(ProtocolError):
            p.Register.parse(p.decode(p.encode(p.REGISTER, header, p.pack(body))))


def test_call_keywords_must_be_strings() -> None:
    from labctl.errors import BadRequest

    msg = p.decode(p.encode(p.CALL, {"id": 1, "method": "x"}, p.pack([[], {1: 2}])))
    with pytest.raises(BadRequest, match="keyword name"):
        p.Call.parse(msg).kwargs()

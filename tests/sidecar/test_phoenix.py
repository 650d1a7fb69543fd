"""The Phoenix wire codec: vsn 1.0.0 JSON objects, vsn 2.0.0 JSON arrays and binary kinds 0, 3 and 4.

Fixtures come from three places: the byte layouts of the reference server's V2 serializer, frames captured
from realtime-js 2.109.0 and realtime-py 2.34.1, and hypothesis-generated frames.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pg_realtime.phoenix import (
    SUBTOPIC_PREFIX,
    Message,
    PayloadEncoding,
    ProtocolError,
    UserBroadcast,
    Vsn,
    decode,
    encode_broadcast,
    encode_push,
    encode_reply,
    encode_user_broadcast,
    parse_vsn,
    subtopic,
)

from tests import harness

JSON = PayloadEncoding.JSON
BINARY = PayloadEncoding.BINARY


# --- frame builders, written from the layouts (the codec only decodes kinds 0/3 and only encodes kind 4) ---


def kind0(join_ref: bytes, ref: bytes, topic: bytes, event: bytes, payload: bytes) -> bytes:
    """Client push: ``0 jr_len ref_len topic_len event_len | join_ref ref topic event payload``."""
    header = bytes([0, len(join_ref), len(ref), len(topic), len(event)])
    return header + join_ref + ref + topic + event + payload


def kind3(
    join_ref: bytes, ref: bytes, topic: bytes, event: bytes, meta: bytes, enc: int, payload: bytes
) -> bytes:
    """User broadcast push: ``3 jr ref topic uevent meta enc | join_ref ref topic uevent meta payload``."""
    header = bytes([3, len(join_ref), len(ref), len(topic), len(event), len(meta), enc])
    return header + join_ref + ref + topic + event + meta + payload


def parse_kind4(frame: bytes) -> tuple[str, str, bytes, int, bytes]:
    """User broadcast: ``4 topic_len uevent_len meta_len enc | topic uevent meta payload``."""
    kind4 = harness.parse_kind4(frame)
    return kind4.topic, kind4.event, kind4.meta, kind4.encoding, kind4.payload


# --- vsn and topics -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, Vsn.V1),
        ("", Vsn.V1),
        ("1.0.0", Vsn.V1),
        ("2.0.0", Vsn.V2),
        ("3.0.0", None),
        ("2.0", None),
        ("v2", None),
    ],
)
def test_parse_vsn(value: str | None, expected: Vsn | None) -> None:
    assert parse_vsn(value) is expected


def test_vsn_values_are_the_query_strings() -> None:
    assert isinstance(Vsn.V1, str)
    assert (Vsn.V1.value, Vsn.V2.value) == ("1.0.0", "2.0.0")
    assert f"{Vsn.V2}" == "2.0.0"
    assert {"2.0.0": 1}[Vsn.V2] == 1


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("realtime:room1", "room1"),
        ("realtime:a:b:c", "a:b:c"),
        ("realtime:", ""),
        ("phoenix", None),
        ("room1", None),
        ("Realtime:room1", None),
    ],
)
def test_subtopic(topic: str, expected: str | None) -> None:
    assert SUBTOPIC_PREFIX == "realtime:"
    assert subtopic(topic) == expected


# --- reference V2 serializer fixtures -----------------------------------------------------------------------


def test_v2_text_message_decodes() -> None:
    assert decode('[null,null,"t","e",{"m":1}]', Vsn.V2) == Message(None, None, "t", "e", {"m": 1})


def test_v2_text_push_and_fanout_encode() -> None:
    assert encode_push(Vsn.V2, None, "t", "e", {"m": 1}) == '[null,null,"t","e",{"m":1}]'
    assert encode_broadcast(Vsn.V2, "t", {"m": 1}) == '[null,null,"t","broadcast",{"m":1}]'


def test_v2_text_reply_encodes() -> None:
    encoded = encode_reply(Vsn.V2, None, None, "t", "ok", {"m": 1})
    assert json.loads(encoded) == [None, None, "t", "phx_reply", {"response": {"m": 1}, "status": "ok"}]


def test_binary_push_decodes() -> None:
    frame = bytes([0, 2, 3, 5, 5]) + b"12" + b"123" + b"topic" + b"event" + bytes([101, 102, 103])
    assert decode(frame, Vsn.V2) == Message("12", "123", "topic", "event", b"efg")


def test_binary_user_broadcast_push_decodes() -> None:
    frame = bytes([3, 2, 3, 5, 10, 0, 0]) + b"12" + b"123" + b"topic" + b"user_event" + bytes([101, 102, 103])
    assert decode(frame, Vsn.V2) == Message(
        "12", "123", "topic", "broadcast", UserBroadcast("user_event", b"efg", BINARY, {})
    )


def test_json_user_broadcast_push_decodes() -> None:
    frame = bytes([3, 2, 3, 5, 10, 0, 1]) + b"12" + b"123" + b"topic" + b"user_event" + b'{"a":"b"}'
    assert decode(frame, Vsn.V2) == Message(
        "12", "123", "topic", "broadcast", UserBroadcast("user_event", b'{"a":"b"}', JSON, {})
    )


def test_binary_user_broadcast_push_with_metadata_decodes() -> None:
    frame = (
        bytes([3, 2, 3, 5, 10, 14, 0])
        + b"12"
        + b"123"
        + b"topic"
        + b"user_event"
        + b'{"store":true}'
        + b"efg"
    )
    assert decode(frame, Vsn.V2) == Message(
        "12", "123", "topic", "broadcast", UserBroadcast("user_event", b"efg", BINARY, {"store": True})
    )


REPLAYED = {"replayed": True}  # encodes to the 17 bytes {"replayed":true}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            UserBroadcast("user_event", b"efg", BINARY, REPLAYED),
            bytes([4, 5, 10, 17, 0]) + b"topic" + b"user_event" + b'{"replayed":true}' + b"efg",
        ),
        (
            UserBroadcast("user_event", b"efg", BINARY, {}),
            bytes([4, 5, 10, 0, 0]) + b"topic" + b"user_event" + b"efg",
        ),
        (
            UserBroadcast("user_event", b'{"a":"b"}', JSON, REPLAYED),
            bytes([4, 5, 10, 17, 1]) + b"topic" + b"user_event" + b'{"replayed":true}' + b'{"a":"b"}',
        ),
        (
            UserBroadcast("user_event", b'{"a":"b"}', JSON, {}),
            bytes([4, 5, 10, 0, 1]) + b"topic" + b"user_event" + b'{"a":"b"}',
        ),
    ],
    ids=["binary+meta", "binary", "json+meta", "json"],
)
def test_user_broadcast_encodes_kind4(message: UserBroadcast, expected: bytes) -> None:
    assert encode_user_broadcast(Vsn.V2, "topic", message) == expected


# The reference raises ArgumentError when a header string exceeds 255 bytes. Here a JSON payload falls back to
# a V2 text broadcast (realtime-js handles both alike) and a binary payload cannot be sent at all.
OVERSIZED = [
    ("t" * 256, "user_event", {}),
    ("topic", "e" * 256, {}),
    ("topic", "user_event", {"k": "e" * 256}),
]


@pytest.mark.parametrize(("topic", "event", "meta"), OVERSIZED, ids=["topic", "event", "meta"])
def test_oversized_kind4_header_json_falls_back_to_text(topic: str, event: str, meta: dict[str, Any]) -> None:
    encoded = encode_user_broadcast(Vsn.V2, topic, UserBroadcast(event, b'{"a":"b"}', JSON, meta))
    assert isinstance(encoded, str)
    expected_payload: dict[str, Any] = {"event": event, "payload": {"a": "b"}, "type": "broadcast"}
    if meta:
        expected_payload["meta"] = meta
    assert json.loads(encoded) == [None, None, topic, "broadcast", expected_payload]


@pytest.mark.parametrize(("topic", "event", "meta"), OVERSIZED, ids=["topic", "event", "meta"])
def test_oversized_kind4_header_binary_is_dropped(topic: str, event: str, meta: dict[str, Any]) -> None:
    assert encode_user_broadcast(Vsn.V2, topic, UserBroadcast(event, b"efg", BINARY, meta)) is None


def test_kind4_header_fields_of_exactly_255_bytes_fit() -> None:
    topic, event = "t" * 255, "é" * 127 + "e"  # lengths are bytes, not characters
    encoded = encode_user_broadcast(Vsn.V2, topic, UserBroadcast(event, b"1", JSON, {}))
    assert isinstance(encoded, bytes)
    assert encoded[:5] == bytes([4, 255, 255, 0, 1])
    assert parse_kind4(encoded) == (topic, event, b"", 1, b"1")


# --- frames captured from realtime-js 2.109.0 (vsn 2.0.0) -------------------------------------------------


@pytest.mark.parametrize(
    ("hex_frame", "expected"),
    [
        (
            "0301020e040001 39 3130 7265616c74696d653a726f6f6d31 70696e67 7b2268656c6c6f223a22776f726c64227d",
            Message(
                "9",
                "10",
                "realtime:room1",
                "broadcast",
                UserBroadcast("ping", b'{"hello":"world"}', JSON, {}),
            ),
        ),
        (
            "0301020e050001 39 3131 7265616c74696d653a726f6f6d31 6e6f61636b 7b2261223a317d",
            Message("9", "11", "realtime:room1", "broadcast", UserBroadcast("noack", b'{"a":1}', JSON, {})),
        ),
        (
            "0302020e040001 3230 3231 7265616c74696d653a726f6f6d32 70696e67 5b312c322c335d",
            Message("20", "21", "realtime:room2", "broadcast", UserBroadcast("ping", b"[1,2,3]", JSON, {})),
        ),
    ],
)
def test_captured_realtime_js_kind3(hex_frame: str, expected: Message) -> None:
    assert decode(bytes.fromhex(hex_frame), Vsn.V2) == expected


def test_captured_kind4_echo_is_reproduced() -> None:
    # The echo realtime-js accepted; the payload bytes (with their space) travel untouched.
    expected = bytes.fromhex(
        "040e040001 7265616c74696d653a726f6f6d31 70696e67 7b2268656c6c6f223a2022776f726c64227d"
    )
    message = UserBroadcast("ping", b'{"hello": "world"}', JSON, {})
    assert encode_user_broadcast(Vsn.V2, "realtime:room1", message) == expected


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('[null,"3","realtime:room1","phx_leave",{}]', Message(None, "3", "realtime:room1", "phx_leave", {})),
        (
            '["9","9","realtime:room1","phx_join",{"config":{"broadcast":{"ack":true,"self":true},'
            '"presence":{"key":"user-1","enabled":true},"postgres_changes":[],"private":false}}]',
            Message(
                "9",
                "9",
                "realtime:room1",
                "phx_join",
                {
                    "config": {
                        "broadcast": {"ack": True, "self": True},
                        "presence": {"key": "user-1", "enabled": True},
                        "postgres_changes": [],
                        "private": False,
                    }
                },
            ),
        ),
        (
            '["9","12","realtime:room1","presence",{"type":"presence","event":"track","payload":{"online_at":"now"}}]',
            Message(
                "9",
                "12",
                "realtime:room1",
                "presence",
                {"type": "presence", "event": "track", "payload": {"online_at": "now"}},
            ),
        ),
        ('[null,"14","phoenix","heartbeat",{}]', Message(None, "14", "phoenix", "heartbeat", {})),
        (
            '["9","15","realtime:room1","access_token",{"access_token":"new-jwt-token"}]',
            Message("9", "15", "realtime:room1", "access_token", {"access_token": "new-jwt-token"}),
        ),
    ],
)
def test_captured_realtime_js_v2_text(frame: str, expected: Message) -> None:
    assert decode(frame, Vsn.V2) == expected


def test_captured_v2_server_frames_are_reproduced() -> None:
    assert (
        encode_reply(Vsn.V2, None, "3", "realtime:room1", "ok", {})
        == '[null,"3","realtime:room1","phx_reply",{"status":"ok","response":{}}]'
    )
    assert (
        encode_reply(Vsn.V2, "9", "9", "realtime:room1", "ok", {"postgres_changes": []})
        == '["9","9","realtime:room1","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]'
    )
    assert (
        encode_reply(Vsn.V2, None, "14", "phoenix", "ok", {})
        == '[null,"14","phoenix","phx_reply",{"status":"ok","response":{}}]'
    )
    assert (
        encode_reply(Vsn.V2, "24", "24", "realtime:reject-me", "error", {"reason": "nope"})
        == '["24","24","realtime:reject-me","phx_reply",{"status":"error","response":{"reason":"nope"}}]'
    )
    assert (
        encode_push(Vsn.V2, None, "realtime:room1", "presence_state", {})
        == '[null,null,"realtime:room1","presence_state",{}]'
    )
    assert (
        encode_push(Vsn.V2, "9", "realtime:room1", "phx_close", {}, ref="9")
        == '["9","9","realtime:room1","phx_close",{}]'
    )
    assert (
        encode_broadcast(
            Vsn.V2, "realtime:room1", {"type": "broadcast", "event": "server-hello", "payload": {"hi": 1}}
        )
        == '[null,null,"realtime:room1","broadcast",'
        '{"type":"broadcast","event":"server-hello","payload":{"hi":1}}]'
    )


def test_payload_size_exceeded_reply_has_a_bare_string_response() -> None:
    assert (
        encode_reply(Vsn.V2, "9", "10", "realtime:room1", "error", "payload_size_exceeded")
        == '["9","10","realtime:room1","phx_reply",{"status":"error","response":"payload_size_exceeded"}]'
    )


# --- frames captured from realtime-py 2.34.1 and realtime-js with vsn 1.0.0 --------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            '{"event":"phx_join","payload":{"config":{"broadcast":{"ack":true,"self":true},'
            '"presence":{"key":"user-1","enabled":true},"private":false,"postgres_changes":[]},'
            '"access_token":"anon-key-123"},"topic":"realtime:room1","ref":"1","join_ref":"1"}',
            Message(
                "1",
                "1",
                "realtime:room1",
                "phx_join",
                {
                    "config": {
                        "broadcast": {"ack": True, "self": True},
                        "presence": {"key": "user-1", "enabled": True},
                        "private": False,
                        "postgres_changes": [],
                    },
                    "access_token": "anon-key-123",
                },
            ),
        ),
        (
            '{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}',
            Message(None, None, "phoenix", "heartbeat", {}),
        ),
        (
            '{"event":"broadcast","payload":{"type":"broadcast","event":"ping","payload":{"hello":"world"}},'
            '"topic":"realtime:room1","ref":"2","join_ref":"1"}',
            Message(
                "1",
                "2",
                "realtime:room1",
                "broadcast",
                {"type": "broadcast", "event": "ping", "payload": {"hello": "world"}},
            ),
        ),
        (
            '{"event":"presence","payload":{"event":"untrack","payload":{}},'
            '"topic":"realtime:room1","ref":"7","join_ref":"1"}',
            Message("1", "7", "realtime:room1", "presence", {"event": "untrack", "payload": {}}),
        ),
        (
            '{"event":"access_token","payload":{"access_token":"new-jwt-token"},'
            '"topic":"realtime:room1","ref":"8","join_ref":"1"}',
            Message("1", "8", "realtime:room1", "access_token", {"access_token": "new-jwt-token"}),
        ),
        (
            '{"event":"phx_leave","payload":{},"topic":"realtime:room1","ref":"12","join_ref":"1"}',
            Message("1", "12", "realtime:room1", "phx_leave", {}),
        ),
        # realtime-js with vsn 1.0.0: the heartbeat carries no join_ref key at all.
        (
            '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"14"}',
            Message(None, "14", "phoenix", "heartbeat", {}),
        ),
    ],
)
def test_captured_v1_client_frames(frame: str, expected: Message) -> None:
    assert decode(frame, Vsn.V1) == expected


def test_captured_v1_server_frames_are_reproduced() -> None:
    assert (
        encode_reply(Vsn.V1, "1", "1", "realtime:room1", "ok", {"postgres_changes": []})
        == '{"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok",'
        '"response":{"postgres_changes":[]}},"ref":"1"}'
    )
    assert (
        encode_reply(Vsn.V1, None, None, "phoenix", "ok", {})
        == '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null}'
    )
    assert (
        encode_push(Vsn.V1, "1", "realtime:room1", "presence_state", {})
        == '{"topic":"realtime:room1","event":"presence_state","payload":{},"ref":null}'
    )
    assert (
        encode_broadcast(
            Vsn.V1, "realtime:room1", {"type": "broadcast", "event": "server-hello", "payload": {"hi": 1}}
        )
        == '{"topic":"realtime:room1","event":"broadcast","payload":{"type":"broadcast",'
        '"event":"server-hello","payload":{"hi":1}},"ref":null}'
    )
    assert (
        encode_push(Vsn.V1, "1", "realtime:room1", "phx_close", {}, ref="1")
        == '{"topic":"realtime:room1","event":"phx_close","payload":{},"ref":"1"}'
    )
    assert (
        encode_reply(Vsn.V1, "9", "9", "realtime:reject-me", "error", {"reason": "nope"})
        == '{"topic":"realtime:reject-me","event":"phx_reply","payload":{"status":"error",'
        '"response":{"reason":"nope"}},"ref":"9"}'
    )


def test_v1_output_never_carries_join_ref_and_always_a_ref_key() -> None:
    frames = [
        encode_reply(Vsn.V1, "1", None, "t", "ok", {}),
        encode_push(Vsn.V1, "1", "t", "system", {"status": "ok"}),
        encode_broadcast(Vsn.V1, "t", {"event": "e"}),
        encode_user_broadcast(Vsn.V1, "t", UserBroadcast("e", b"{}", JSON, {})),
    ]
    for frame in frames:
        assert isinstance(frame, str)
        obj = json.loads(frame)
        assert list(obj) == ["topic", "event", "payload", "ref"]


# --- user broadcasts to vsn 1.0.0 receivers ----------------------------------------------------------------


def test_v1_user_broadcast_splices_raw_json() -> None:
    message = UserBroadcast("ping", b'{"hello": "world"}', JSON, {})
    assert (
        encode_user_broadcast(Vsn.V1, "realtime:room1", message)
        == '{"topic":"realtime:room1","event":"broadcast","payload":{"event":"ping",'
        '"payload":{"hello": "world"},"type":"broadcast"},"ref":null}'
    )


def test_v1_user_broadcast_from_a_db_row_carries_meta() -> None:
    row = UserBroadcast("insert", b'{"id": 1}', JSON, {"id": "8e5b7c3e-7a53-4a47-9fd0-3c1b7e7a0c11"})
    assert (
        encode_user_broadcast(Vsn.V1, "realtime:room1", row)
        == '{"topic":"realtime:room1","event":"broadcast","payload":{"event":"insert","payload":{"id": 1},'
        '"type":"broadcast","meta":{"id":"8e5b7c3e-7a53-4a47-9fd0-3c1b7e7a0c11"}},"ref":null}'
    )


def test_v1_user_broadcast_non_object_payload_is_relayed_as_is() -> None:
    encoded = encode_user_broadcast(Vsn.V1, "t", UserBroadcast("e", b'"not a map"', JSON, {}))
    assert isinstance(encoded, str)
    assert json.loads(encoded)["payload"] == {"event": "e", "payload": "not a map", "type": "broadcast"}


def test_v1_binary_user_broadcast_is_dropped() -> None:
    assert encode_user_broadcast(Vsn.V1, "t", UserBroadcast("e", b"\x00\xff", BINARY, {})) is None


def test_v2_db_row_kind4_carries_meta() -> None:
    row = UserBroadcast("insert", b'{"id": 1}', JSON, {"id": "abc"})
    encoded = encode_user_broadcast(Vsn.V2, "realtime:room1", row)
    assert isinstance(encoded, bytes)
    assert parse_kind4(encoded) == ("realtime:room1", "insert", b'{"id":"abc"}', 1, b'{"id": 1}')


def test_non_ascii_strings_are_utf8_with_byte_lengths() -> None:
    encoded = encode_user_broadcast(Vsn.V2, "realtime:salón", UserBroadcast("ñ", '"ü"'.encode(), JSON, {}))
    assert isinstance(encoded, bytes)
    assert encoded[:5] == bytes([4, 15, 2, 0, 1])
    assert parse_kind4(encoded) == ("realtime:salón", "ñ", b"", 1, '"ü"'.encode())
    frame = kind3(b"1", b"2", "realtime:salón".encode(), "ñ".encode(), b"", 1, '"ü"'.encode())
    assert decode(frame, Vsn.V2) == Message(
        "1", "2", "realtime:salón", "broadcast", UserBroadcast("ñ", '"ü"'.encode(), JSON, {})
    )


# --- decode edge cases --------------------------------------------------------------------------------------


def test_v1_lenient_fields() -> None:
    # A missing payload is {}, missing refs are null, numeric refs become strings.
    assert decode('{"topic":"t","event":"e"}', Vsn.V1) == Message(None, None, "t", "e", {})
    assert decode('{"topic":"t","event":"e","payload":null,"ref":5,"join_ref":4}', Vsn.V1) == Message(
        "4", "5", "t", "e", None
    )
    assert decode('{"topic":"t","event":"e","payload":[1],"extra":true}', Vsn.V1).payload == [1]


def test_v2_numeric_refs_become_strings_and_extra_elements_are_ignored() -> None:
    assert decode('[1,2,"t","e",{}]', Vsn.V2) == Message("1", "2", "t", "e", {})
    # The reference matches [join_ref, ref, topic, event, payload | _].
    assert decode('[null,"1","t","e",{},"extra"]', Vsn.V2) == Message(None, "1", "t", "e", {})
    assert decode('[null,"1","t","e","not a map"]', Vsn.V2).payload == "not a map"


def test_zero_length_binary_refs_stay_empty_strings() -> None:
    # As in the reference server: whatever was sent is echoed in the reply.
    assert decode(kind0(b"", b"", b"t", b"e", b""), Vsn.V2) == Message("", "", "t", "e", b"")
    assert decode(kind3(b"", b"", b"t", b"e", b"", 0, b""), Vsn.V2) == Message(
        "", "", "t", "broadcast", UserBroadcast("e", b"", BINARY, {})
    )


def test_binary_payload_may_be_empty_and_arbitrary() -> None:
    assert decode(kind3(b"1", b"2", b"t", b"e", b"", 0, b""), Vsn.V2).payload.payload == b""
    raw = bytes(range(256))
    assert decode(kind3(b"1", b"2", b"t", b"e", b"", 0, raw), Vsn.V2).payload.payload == raw
    assert decode(kind0(b"1", b"2", b"t", b"e", raw), Vsn.V2).payload == raw


def test_json_payload_bytes_are_kept_verbatim() -> None:
    raw = b' { "b" : 2 , "a" : [1, 2.50, "\\u00e9"] } '
    message = decode(kind3(b"1", b"2", b"t", b"e", b"", 1, raw), Vsn.V2)
    assert message.payload.payload == raw


MALFORMED_V1 = [
    "",
    "not json",
    "[]",
    '[null,"1","t","e",{}]',  # a V2 array on a V1 socket
    '"string"',
    "null",
    "{}",
    '{"topic":"t"}',
    '{"event":"e"}',
    '{"topic":1,"event":"e"}',
    '{"topic":"t","event":null}',
    '{"topic":"t","event":"e","ref":true}',
    '{"topic":"t","event":"e","ref":1.5}',
    '{"topic":"t","event":"e","join_ref":{}}',
    '{"topic":"t","event":"e"} trailing',
    '{"topic":"t","event":"e","payload":NaN}',
    "\ufeff{}",
]


@pytest.mark.parametrize("frame", MALFORMED_V1)
def test_malformed_v1_text(frame: str) -> None:
    with pytest.raises(ProtocolError):
        decode(frame, Vsn.V1)


MALFORMED_V2 = [
    "",
    "nope",
    "{}",
    '{"topic":"t","event":"e","payload":{},"ref":null}',  # a V1 object on a V2 socket
    "[]",
    '[null,null,"t","e"]',
    '[null,null,null,"e",{}]',
    '[null,null,"t",1,{}]',
    '[true,null,"t","e",{}]',
    '[null,[],"t","e",{}]',
    '[null,null,"t","e",{}',
    '"[null,null,\\"t\\",\\"e\\",{}]"',
    '[null,null,"t","e",{}]\x00',
    '[null,null,"t","e","\\ud800"]',  # lone surrogate escape
]


@pytest.mark.parametrize("frame", MALFORMED_V2)
def test_malformed_v2_text(frame: str) -> None:
    with pytest.raises(ProtocolError):
        decode(frame, Vsn.V2)


MALFORMED_BINARY = [
    b"",
    b"\x00",
    b"\x00\x01\x01\x01",  # truncated kind 0 header
    kind0(b"1", b"2", b"t", b"e", b"")[:-1],  # event runs past the end
    b"\x03\x00\x00\x00\x00\x00",  # truncated kind 3 header
    kind3(b"1", b"2", b"t", b"e", b"", 1, b"{}")[:9],
    kind3(b"1", b"2", b"t", b"e", b"", 2, b"{}"),  # unknown encoding
    kind3(b"1", b"2", b"t", b"e", b"", 255, b""),
    kind3(b"1", b"2", b"t", b"e", b"[1]", 0, b""),  # metadata must be an object
    kind3(b"1", b"2", b"t", b"e", b"{", 0, b""),
    kind3(b"1", b"2", b"t", b"e", b"", 1, b""),  # JSON encoding, empty payload
    kind3(b"1", b"2", b"t", b"e", b"", 1, b"{"),
    kind3(b"1", b"2", b"t", b"e", b"", 1, b'{"a":1} {}'),
    kind3(b"1", b"2", b"t", b"e", b"", 1, b"\xff"),
    kind3(b"1", b"2", b"\xff", b"e", b"", 0, b""),  # topic not UTF-8
    kind3(b"1", b"2", b"t", b"\xc3", b"", 0, b""),  # user event not UTF-8
    kind3(b"\x80", b"2", b"t", b"e", b"", 0, b""),
    kind0(b"1", b"\xff", b"t", b"e", b""),
    kind0(b"1", b"2", b"t", b"\xed\xa0\x80", b""),  # encoded surrogate
    b"\x01\x00\x00\x00\x00",  # kind 1 (reply) is server to client only
    b"\x02\x00\x00",
    b"\x04\x00\x00\x00\x00",
    b"\x05",
    b'[null,null,"t","e",{}]',  # a text frame's content sent as binary
]


@pytest.mark.parametrize("frame", MALFORMED_BINARY)
def test_malformed_binary(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame, Vsn.V2)


def test_binary_frames_are_refused_on_v1() -> None:
    valid_v2 = bytes.fromhex(
        "0301020e0400013931307265616c74696d653a726f6f6d3170696e677b2268656c6c6f223a22776f726c64227d"
    )
    with pytest.raises(ProtocolError):
        decode(valid_v2, Vsn.V1)


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


def test_bytearray_and_memoryview_binary_frames() -> None:
    frame = kind0(b"1", b"2", b"t", b"e", b"x")
    expected = Message("1", "2", "t", "e", b"x")
    assert decode(bytearray(frame), Vsn.V2) == expected  # type: ignore[arg-type]
    assert decode(memoryview(frame), Vsn.V2) == expected  # type: ignore[arg-type]


# --- property tests --------------------------------------------------------------------------------

header_str = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
short_bytes = st.binary(max_size=300)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
refs = st.none() | st.text(max_size=10)


def _only_protocol_errors(frame: str | bytes, vsn: Vsn) -> None:
    try:
        result = decode(frame, vsn)
    except ProtocolError:
        return
    assert isinstance(result, Message)
    assert isinstance(result.topic, str)
    assert isinstance(result.event, str)
    assert result.join_ref is None or isinstance(result.join_ref, str)
    assert result.ref is None or isinstance(result.ref, str)


@settings(max_examples=500)
@given(st.binary(max_size=200), st.sampled_from(Vsn))
@example(b"\x00\x00\x00\x00\x00", Vsn.V2)
@example(b"\x03\x00\x00\x00\x00\x00\x01", Vsn.V2)
def test_random_bytes_raise_only_protocol_errors(frame: bytes, vsn: Vsn) -> None:
    _only_protocol_errors(frame, vsn)


@settings(max_examples=300)
@given(st.integers(0, 6), st.binary(min_size=6, max_size=6), st.binary(max_size=80))
def test_random_binary_headers_raise_only_protocol_errors(kind: int, header: bytes, tail: bytes) -> None:
    # Small kinds and small lengths make it likely to get deep into the parser.
    frame = bytes([kind]) + bytes(b % 12 for b in header[:5]) + bytes([header[5] % 3]) + tail
    _only_protocol_errors(frame, Vsn.V2)


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(codec=None), max_size=200), st.sampled_from(Vsn))
@example("\ud800", Vsn.V1)
@example('["\ud800",null,"t","e",{}]', Vsn.V2)
def test_random_text_raises_only_protocol_errors(frame: str, vsn: Vsn) -> None:
    _only_protocol_errors(frame, vsn)


@settings(max_examples=300)
@given(json_values | st.lists(json_values, min_size=4, max_size=6) | json_objects, st.sampled_from(Vsn))
def test_random_json_raises_only_protocol_errors(value: Any, vsn: Vsn) -> None:
    _only_protocol_errors(orjson.dumps(value).decode(), vsn)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["topic", "event", "payload", "ref", "join_ref"]), json_values | st.text(), max_size=5
    )
)
def test_random_v1_objects_raise_only_protocol_errors(obj: dict[str, Any]) -> None:
    _only_protocol_errors(orjson.dumps(obj).decode(), Vsn.V1)


def _mutate(frame: bytes, data: st.DataObject) -> bytes:
    op = data.draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "extend"]))
    if op == "extend":
        return frame + data.draw(st.binary(min_size=1, max_size=8))
    if not frame:
        return frame
    i = data.draw(st.integers(0, len(frame) - 1))
    if op == "truncate":
        return frame[:i]
    if op == "flip":
        return frame[:i] + bytes([frame[i] ^ (1 << data.draw(st.integers(0, 7)))]) + frame[i + 1 :]
    if op == "set":
        return frame[:i] + bytes([data.draw(st.integers(0, 255))]) + frame[i + 1 :]
    if op == "insert":
        return frame[:i] + data.draw(st.binary(min_size=1, max_size=4)) + frame[i:]
    return frame[:i] + frame[i + 1 :]


@settings(max_examples=500)
@given(
    shape=st.sampled_from(["kind0", "kind3json", "kind3binary", "v2text", "v1text"]),
    topic=header_str,
    event=header_str,
    payload=json_values,
    meta=json_objects,
    data=st.data(),
)
def test_mutated_valid_frames_raise_only_protocol_errors(
    *, shape: str, topic: str, event: str, payload: Any, meta: dict[str, Any], data: st.DataObject
) -> None:
    vsn = Vsn.V2
    if shape == "kind0":
        frame = kind0(b"1", b"22", topic.encode(), event.encode(), orjson.dumps(payload))
    elif shape == "kind3json":
        meta_b = orjson.dumps(meta) if meta else b""
        frame = kind3(b"1", b"22", topic.encode(), event.encode(), meta_b[:255], 1, orjson.dumps(payload))
    elif shape == "kind3binary":
        frame = kind3(b"1", b"22", topic.encode(), event.encode(), b"", 0, orjson.dumps(payload))
    elif shape == "v2text":
        frame = orjson.dumps(["1", "22", topic, event, payload])
    else:
        frame = orjson.dumps({"topic": topic, "event": event, "payload": payload, "ref": "22"})
        vsn = Vsn.V1
    for _ in range(data.draw(st.integers(1, 3))):
        frame = _mutate(frame, data)
    if shape.endswith("text"):
        try:
            text = frame.decode()
        except UnicodeDecodeError:
            return  # a WebSocket text frame is valid UTF-8 by definition
        _only_protocol_errors(text, vsn)
    else:
        _only_protocol_errors(frame, vsn)


@given(header_str, header_str, header_str, header_str, short_bytes)
def test_kind0_roundtrip(join_ref: str, ref: str, topic: str, event: str, payload: bytes) -> None:
    frame = kind0(join_ref.encode(), ref.encode(), topic.encode(), event.encode(), payload)
    assert decode(frame, Vsn.V2) == Message(join_ref, ref, topic, event, payload)


@given(
    join_ref=header_str,
    ref=header_str,
    topic=header_str,
    event=header_str,
    meta=json_objects,
    payload=json_values,
)
def test_kind3_json_roundtrip(
    *, join_ref: str, ref: str, topic: str, event: str, meta: dict[str, Any], payload: Any
) -> None:
    meta_b = orjson.dumps(meta) if meta else b""
    if len(meta_b) > 255:
        meta, meta_b = {}, b""
    raw = json.dumps(payload, indent=1).encode()  # any valid spelling is kept byte for byte
    frame = kind3(join_ref.encode(), ref.encode(), topic.encode(), event.encode(), meta_b, 1, raw)
    message = decode(frame, Vsn.V2)
    assert message == Message(join_ref, ref, topic, "broadcast", UserBroadcast(event, raw, JSON, meta))


@given(header_str, header_str, short_bytes)
def test_kind3_binary_roundtrip(topic: str, event: str, payload: bytes) -> None:
    frame = kind3(b"7", b"8", topic.encode(), event.encode(), b"", 0, payload)
    assert decode(frame, Vsn.V2) == Message(
        "7", "8", topic, "broadcast", UserBroadcast(event, payload, BINARY, {})
    )


@given(header_str, header_str, json_values, st.booleans(), st.sampled_from([JSON, BINARY]))
def test_kind3_in_kind4_out(
    topic: str, event: str, payload: Any, with_meta: bool, enc: PayloadEncoding
) -> None:
    # What the server does with a kind 3 push for a V2 receiver: same topic, event and payload bytes.
    raw = orjson.dumps(payload)
    message = decode(kind3(b"1", b"2", topic.encode(), event.encode(), b"", enc, raw), Vsn.V2).payload
    meta = {"id": "00000000-0000-0000-0000-000000000001"} if with_meta else {}
    encoded = encode_user_broadcast(Vsn.V2, topic, UserBroadcast(message.event, message.payload, enc, meta))
    assert isinstance(encoded, bytes)
    meta_b = orjson.dumps(meta) if meta else b""
    assert parse_kind4(encoded) == (topic, event, meta_b, int(enc), raw)


@given(st.text(max_size=300), st.text(max_size=300), json_values, json_objects, st.integers(0, 2))
def test_json_user_broadcast_text_is_valid_json(
    topic: str, event: str, payload: Any, meta: dict[str, Any], spacing: int
) -> None:
    # V1 always, and V2 when a header field is too long: the raw bytes are spliced and must stay valid JSON.
    raw = json.dumps(payload, indent=spacing or None, ensure_ascii=spacing == 2).encode()
    message = UserBroadcast(event, raw, JSON, meta)
    inner: dict[str, Any] = {"event": event, "payload": payload, "type": "broadcast"}
    if meta:
        inner["meta"] = meta
    v1 = encode_user_broadcast(Vsn.V1, topic, message)
    assert isinstance(v1, str)
    assert orjson.loads(v1) == {"topic": topic, "event": "broadcast", "payload": inner, "ref": None}
    v2 = encode_user_broadcast(Vsn.V2, topic, message)
    if isinstance(v2, str):
        assert max(len(topic.encode()), len(event.encode()), len(orjson.dumps(meta) if meta else b"")) > 255
        assert orjson.loads(v2) == [None, None, topic, "broadcast", inner]
    else:
        assert isinstance(v2, bytes)
        assert parse_kind4(v2)[4] == raw


@given(
    vsn=st.sampled_from(Vsn),
    join_ref=refs,
    ref=refs,
    topic=st.text(max_size=30),
    event=st.text(max_size=20),
    payload=json_values,
)
def test_text_encoders_roundtrip_through_decode(
    *, vsn: Vsn, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
) -> None:
    # What the server writes parses back as the same frame (minus join_ref, which V1 output omits).
    expected_join_ref = join_ref if vsn is Vsn.V2 else None
    push = decode(encode_push(vsn, join_ref, topic, event, payload, ref=ref), vsn)
    assert push == Message(expected_join_ref, ref, topic, event, payload)
    reply = decode(encode_reply(vsn, join_ref, ref, topic, "ok", payload), vsn)
    assert reply == Message(expected_join_ref, ref, topic, "phx_reply", {"status": "ok", "response": payload})
    fanout = decode(encode_broadcast(vsn, topic, payload), vsn)
    assert fanout == Message(None, None, topic, "broadcast", payload)

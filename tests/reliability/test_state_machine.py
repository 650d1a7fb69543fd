"""The channel state machine of one socket under random sequences of anything a client can send.

A ``Session`` is driven alone, with plain values: frames in, the database's answers to its
requests drawn at random, virtual time; it only queues frames into its outbox, so each step can
be checked exactly. After every step: nothing raised, the
server's registry holds exactly the socket's channels, every frame out is a valid frame for the
socket's serializer, every reply answers the message of that step, and a topic is joined iff the
wire said so (an ok join reply opens it, a phx_close ends it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import hypothesis
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_realtime import phoenix
from pg_realtime.auth import Verifier
from pg_realtime.broadcast import Broadcaster
from pg_realtime.channels import Registry
from pg_realtime.config import Settings
from pg_realtime.limits import RateWindow, SessionLimits
from pg_realtime.metrics import Metrics
from pg_realtime.phoenix import Message, PayloadEncoding, UserBroadcast, Vsn
from pg_realtime.queries import Answer, PolicyFailed, ReplayQuery, Request, Unavailable
from pg_realtime.rows import Row
from pg_realtime.session import Session, SessionContext

from tests.harness import mint_token, parse_kind4

SECRET = "state-machine-secret-with-enough-entropy-123"

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
text = st.text(alphabet=st.characters(exclude_categories=SURROGATES), max_size=12)
refs = st.none() | st.sampled_from(["1", "2", "3", "10"]) | text
topics = st.sampled_from(
    ["phoenix", "realtime:a", "realtime:b", "realtime:a:b", "realtime:", "room", "realtime:ünï"]
) | text.map(lambda t: "realtime:" + t)
events = (
    st.sampled_from(
        [
            "phx_join",
            "phx_leave",
            "broadcast",
            "heartbeat",
            "access_token",
            "presence",
            "phx_reply",
            "whatever",
        ]
    )
    | text
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=8,
)
flexible = st.booleans() | st.sampled_from(["true", "FALSE", "maybe"]) | json_values


MINTED: dict[str, Callable[[], str]] = {
    "valid": lambda: mint_token(SECRET),
    "other": lambda: mint_token(SECRET, "authenticated", sub="u1"),
    "short": lambda: mint_token(SECRET, expires_in=0.02),  # expires within the session
    "expired": lambda: mint_token(SECRET, expires_in=-10),
    "no-role": lambda: mint_token(SECRET, role=None),
}


def _token(kind: str) -> Any:
    if kind in MINTED:
        return MINTED[kind]()
    return {"garbage": "not.a.jwt", "sb": "sb_publishable_x", "empty": "", "none": None, "number": 5}[kind]


tokens = st.sampled_from(
    ["valid", "other", "short", "expired", "no-role", "garbage", "sb", "empty", "none", "number"]
)

join_payloads = st.fixed_dictionaries(
    {},
    optional={
        "config": st.fixed_dictionaries(
            {},
            optional={
                "broadcast": st.fixed_dictionaries(
                    {},
                    optional={
                        "self": flexible,
                        "ack": flexible,
                        "replay": st.none()
                        | st.fixed_dictionaries({"since": json_values, "limit": json_values}),
                    },
                )
                | json_values,
                "private": flexible,
                "presence": st.fixed_dictionaries({"enabled": flexible, "key": json_values}) | json_values,
                "postgres_changes": st.just([]) | st.lists(json_values, max_size=2) | json_values,
            },
        )
        | json_values,
        "access_token": tokens.map(_token),
        "user_token": tokens.map(_token),
    },
)
broadcast_payloads = (
    st.fixed_dictionaries({"type": st.just("broadcast"), "event": text | json_values, "payload": json_values})
    | st.builds(
        UserBroadcast,
        event=text,
        payload=json_values.map(orjson.dumps) | st.binary(max_size=64),
        encoding=st.just(PayloadEncoding.JSON),
    )
    | st.builds(
        UserBroadcast, event=text, payload=st.binary(max_size=64), encoding=st.just(PayloadEncoding.BINARY)
    )
)
token_payloads = st.fixed_dictionaries({"access_token": tokens.map(_token)}) | json_values
payloads = join_payloads | broadcast_payloads | token_payloads | json_values | st.binary(max_size=16)


def _as_decoded(payload: Any) -> Any:
    """What decode() would hand over: JSON round-tripped, kind 3 JSON payloads valid JSON."""
    if isinstance(payload, UserBroadcast):
        if payload.encoding is PayloadEncoding.JSON:
            try:
                orjson.loads(payload.payload)
            except orjson.JSONDecodeError:
                return UserBroadcast(payload.event, payload.payload, PayloadEncoding.BINARY)
        return payload
    if isinstance(payload, bytes):
        return payload
    return orjson.loads(orjson.dumps(payload))


@dataclass
class Sleep:
    seconds: float


good_joins = st.fixed_dictionaries(
    {
        "config": st.fixed_dictionaries(
            {"broadcast": st.fixed_dictionaries({"self": st.booleans(), "ack": st.booleans()})}
        )
    },
    optional={"access_token": st.sampled_from(["valid", "other", "short", "sb"]).map(_token)},
)
few_topics = st.sampled_from(["realtime:a", "realtime:b", "realtime:a:b"])


def _messages(event: st.SearchStrategy[str], payload: st.SearchStrategy[Any], topic: Any = None) -> Any:
    return st.builds(
        Message,
        join_ref=refs,
        ref=refs,
        topic=(few_topics | topics) if topic is None else topic,
        event=event,
        payload=payload,
    )


# Protocol-shaped messages on a few topics (so that channels get joined, used and left), mixed with
# messages where anything goes.
messages = st.one_of(
    _messages(st.just("phx_join"), good_joins),
    _messages(st.just("phx_join"), join_payloads.map(_as_decoded)),
    _messages(st.just("broadcast"), broadcast_payloads.map(_as_decoded)),
    _messages(st.just("phx_leave"), json_values.map(_as_decoded)),
    _messages(st.just("access_token"), token_payloads.map(_as_decoded)),
    _messages(st.just("heartbeat"), json_values.map(_as_decoded), topic=st.just("phoenix")),
    _messages(events, payloads.map(_as_decoded)),
)
steps = st.lists(messages | st.builds(Sleep, st.sampled_from([0.0, 0.0, 0.0, 0.03])), min_size=4, max_size=40)


class Limits(TypedDict, total=False):
    """The settings the sessions are run under."""

    max_channels_per_client: int
    max_joins_per_second: int
    max_events_per_second: int
    max_client_events_per_second: int
    max_payload_kb: int


limits = st.fixed_dictionaries(
    {
        "max_channels_per_client": st.sampled_from([0, 2, 100]),
        "max_joins_per_second": st.sampled_from([0, 5]),
        "max_events_per_second": st.sampled_from([0, 6]),
        "max_client_events_per_second": st.sampled_from([0, 3]),
        "max_payload_kb": st.sampled_from([1, 3000]),
    }
)


def check_frame(frame: str | bytes, vsn: Vsn) -> tuple[str | None, str | None, str, str, Any]:
    """(join_ref, ref, topic, event, payload) of a frame the server sent, asserting it is well formed."""
    if isinstance(frame, bytes):
        assert vsn is Vsn.V2, "binary frame to a 1.0.0 socket"
        kind4 = parse_kind4(frame)
        kind4.meta_json()
        if kind4.encoding == PayloadEncoding.JSON:
            kind4.payload_value()
        return None, None, kind4.topic, "broadcast", None
    decoded = orjson.loads(frame)
    if vsn is Vsn.V2:
        assert isinstance(decoded, list) and len(decoded) == 5
    else:
        assert isinstance(decoded, dict) and set(decoded) == {"topic", "event", "payload", "ref"}
    message = phoenix.decode(frame, vsn)  # the server's output is valid input for its own serializer
    return message.join_ref, message.ref, message.topic, message.event, message.payload


def registry_channels(registry: Registry) -> set[Any]:
    return {
        channel
        for subtopic, private, _count in registry.topics()
        for channel in registry.subscribers(subtopic, private)
    }


REPLAYED_ROW = Row("00000000-0000-0000-0000-000000000001", "a", "e", True, '{"n": 1}', None, 0.0)


def answer_for(request: Request, choice: str) -> Answer:
    """What the database would say: yes, no, unreachable, or broken policies."""
    if choice == "down":
        return Unavailable("connection refused")
    if choice == "broken":
        return PolicyFailed("division by zero")
    if isinstance(request, ReplayQuery):
        return [REPLAYED_ROW] if choice == "yes" else []
    return choice == "yes"


def drive(
    vsn: Vsn, limit_settings: Limits, script: list[Message | Sleep], answers: list[str]
) -> list[tuple[str, Any]]:
    """Run the script on a session alone, checking after every step; returns every (event, payload) sent.

    Time is virtual: a Sleep step moves the session's clock and ticks it.
    """
    # Refusals are answered at once here, so that every reply answers the message of its step.
    settings = Settings(jwt_secret=SECRET, refused_join_delay_ms=0, **limit_settings)
    registry = Registry()
    context = SessionContext(
        registry=registry,
        verifier=Verifier.from_config(SECRET, None),
        relay=Broadcaster(registry, Metrics()),
        limits=SessionLimits.from_settings(settings),
        joins=RateWindow(settings.max_joins_per_second),
        events=RateWindow(settings.max_events_per_second),
    )
    token = _token("valid")
    now = time.time()
    sock = Session(context, vsn, token, context.verifier.verify(token), now=now)
    choices = iter(answers)
    joined: set[str] = set()
    seen: list[tuple[str, Any]] = []
    for step in script:
        if isinstance(step, Sleep):
            now += step.seconds
            sock.tick(now)
            msg = None
        else:
            msg = step
            size = (
                len(orjson.dumps(msg.payload)) if not isinstance(msg.payload, bytes | UserBroadcast) else 64
            )
            sock.receive(msg, size, now)
            while sock.pending is not None:
                sock.answer(answer_for(sock.pending, next(choices, "down")), now)
        replies = 0
        for frame in sock.outbox.take_all():
            join_ref, ref, topic, event, payload = check_frame(frame, vsn)
            seen.append((event, payload))
            if event == "phx_reply":
                replies += 1
                assert msg is not None, "a reply without a message"
                assert topic == msg.topic and ref == msg.ref
                if vsn is Vsn.V2:
                    # Phoenix answers a topic no channel serves without a join_ref.
                    unmatched = payload["response"] == {"reason": "unmatched topic"}
                    assert join_ref == (None if unmatched else msg.join_ref)
                assert payload["status"] in ("ok", "error")
                response = payload["response"]
                if (
                    payload["status"] == "ok"
                    and isinstance(response, dict)
                    and "postgres_changes" in response
                ):
                    assert msg.event == "phx_join"
                    joined.add(topic)
            elif event == "phx_close":
                joined.discard(topic)
                if vsn is Vsn.V2:
                    assert join_ref == ref
        assert replies <= 1
        if sock.closing:
            assert not sock.channels
            joined.clear()
        assert registry_channels(registry) == set(sock.channels.values())
        assert registry.channel_count == len(sock.channels)
        assert all(channel.topic == topic for topic, channel in sock.channels.items())
        assert set(sock.channels) == joined
        limit = limit_settings["max_channels_per_client"]
        assert not limit or len(sock.channels) <= limit
    sock.leave_all()
    assert registry.channel_count == 0 and not registry_channels(registry)
    return seen


answer_choices = st.lists(st.sampled_from(["yes", "no", "down", "broken"]), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vsn=st.sampled_from([Vsn.V1, Vsn.V2]), limit_settings=limits, script=steps, answers=answer_choices)
def test_random_sessions_keep_the_registry_and_the_wire_consistent(
    vsn: Vsn, limit_settings: Limits, script: list[Message | Sleep], answers: list[str]
) -> None:
    seen = drive(vsn, limit_settings, script, answers)
    joins = sum(1 for event, payload in seen if event == "phx_reply" and "postgres_changes" in str(payload))
    hypothesis.event("joins that succeeded", joins)


def test_the_same_checks_hold_for_a_scripted_session() -> None:
    """A readable session through the main transitions, as a baseline for the random ones."""
    for vsn in (Vsn.V1, Vsn.V2):
        short = mint_token(SECRET, expires_in=0.5)
        j = "realtime:a"
        script: list[Message | Sleep] = [
            Message("1", "1", j, "phx_join", {"config": {"broadcast": {"self": True, "ack": True}}}),
            Message("1", "2", j, "broadcast", {"type": "broadcast", "event": "e", "payload": {}}),
            Message("1", "3", j, "access_token", {"access_token": _token("other")}),
            Message("4", "4", j, "phx_join", {"config": {}}),  # replaces the first channel
            Message("4", "5", j, "access_token", {"access_token": "garbage"}),  # shuts the channel down
            Message("6", "6", j, "phx_join", {"config": {}, "access_token": short}),
            Sleep(0.6),  # its token expires
            Message("7", "7", "realtime:b", "phx_join", {"config": {}}),
            Message("7", "8", "realtime:b", "phx_leave", {}),
            Message(None, "9", "phoenix", "heartbeat", {}),
        ]
        seen = drive(vsn, {"max_channels_per_client": 2}, script, [])
        system = [payload["message"] for event, payload in seen if event == "system"]
        assert system == ["The token provided is not a valid JWT", "Token has expired 0 seconds ago"]
        assert [event for event, _ in seen].count("phx_close") == 4
        assert [event for event, _ in seen if event == "broadcast"] == ["broadcast"]  # self: true

"""What a Python developer would write instead: encode's ``broadcaster`` on Postgres, behind Starlette.

The database side is the classic one: the application inserts its message row and an AFTER
INSERT trigger calls ``pg_notify(topic, payload)``; ``broadcaster``'s Postgres backend LISTENs
on each topic that has a subscriber (one asyncpg connection) and the endpoint forwards every
notification to the sockets of that topic, following broadcaster's own example. Served by
``uvicorn bench._broadcaster_app:app`` with uvloop and httptools, configured by environment:
``BENCH_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

#: The table and trigger the application would own (created by bench.alternative).
SCHEMA = """
create table app_messages (
    id bigint generated always as identity primary key,
    topic text not null,
    payload jsonb not null,
    inserted_at timestamptz not null default now()
);
create function app_messages_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify(new.topic, new.payload::text);
    return null;
end $$;
create trigger app_messages_notify after insert on app_messages
    for each row execute function app_messages_notify();
"""

broadcast = Broadcast(os.environ.get("BENCH_DATABASE_URL", "postgresql://127.0.0.1/postgres"))
subscribed = 0
subscribe_lock = asyncio.Lock()


async def ready(request: Request) -> PlainTextResponse:
    """How many sockets have subscribed (their LISTEN has run)."""
    return PlainTextResponse(str(subscribed))


async def topic_socket(websocket: WebSocket) -> None:
    global subscribed
    await websocket.accept()
    async with contextlib.AsyncExitStack() as stack:
        # broadcaster 0.3.1 runs the LISTEN of concurrent subscribes on its one asyncpg
        # connection at once, which fails ("another operation is in progress") and can leave
        # a socket subscribed to nothing: subscribing one socket at a time avoids both.
        async with subscribe_lock:
            subscriber = await stack.enter_async_context(
                broadcast.subscribe(channel=websocket.path_params["topic"])
            )
        subscribed += 1
        try:
            # broadcaster 0.3 annotates Subscriber.__aiter__ as possibly None; it never is.
            async for event in subscriber:  # type: ignore[union-attr]
                assert event is not None  # it yields Subscriber.get(), an Event
                await websocket.send_text(event.message)
        finally:
            subscribed -= 1


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


app = Starlette(
    routes=[Route("/ready", ready), WebSocketRoute("/ws/{topic}", topic_socket)],
    lifespan=lifespan,
)

"""The ceiling: a bare aiohttp WebSocket relay on uvloop, with no protocol and no bookkeeping.

Every frame a socket sends is written to every other socket with an ``await ws.send_*``
loop, which is the fastest way aiohttp offers to send one frame to many sockets. It serves
the same WebSocket library and event loop as ``pg-realtime serve``, so the ratio of the two
is the cost of everything pg-realtime adds.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import WSMsgType, web


def build_app() -> web.Application:
    sockets: set[web.WebSocketResponse] = set()

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text=str(len(sockets)))

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, autoping=True, heartbeat=None)
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    for other in tuple(sockets):
                        if other is not ws:
                            await other.send_bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    for other in tuple(sockets):
                        if other is not ws:
                            await other.send_str(msg.data)
        finally:
            sockets.discard(ws)
        return ws

    app = web.Application()
    app.add_routes([web.get("/ready", ready), web.get("/ws", websocket)])
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until the benchmark terminates this process
    finally:
        await runner.cleanup()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()

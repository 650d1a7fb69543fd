"""The inspector showing a near-miss, in headless Chromium: the screenshot of docs/troubleshooting.md.

    .venv/bin/python -m tests.e2e.near_miss [PATH]     (default: docs/img/inspector-near-miss.png)

starts a throwaway PostgreSQL and a server in demo mode, joins the public channel ``room:1`` from
the page, sends a default-private message from SQL, and takes the screenshot once the page lists
the near-miss. ``tests/e2e/test_near_miss.py`` runs the same steps.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import psycopg
from pg_realtime.embedded import EmbeddedPostgres

from tests.harness import prepare_database, serve_in_process, server_settings

from .browser import ROOT, Browser

DEFAULT_PATH = ROOT / "docs" / "img" / "inspector-near-miss.png"
ROW = '#near-misses tr[data-topic="room:1"][data-cause="visibility"]'


async def show_near_miss(browser: Browser, url: str, dsn: str, path: Path) -> str:
    """The text of the near-miss row the page shows; the screenshot in ``path``."""
    await browser.call("goto", url=url + "/")
    await browser.call("waitForText", selector="#status", text="connected (vsn 2.0.0)")
    await browser.call("fill", selector="#join-topic", value="room:1")
    await browser.call("click", selector="#join")
    await browser.call("waitFor", selector='#channels li[data-topic="room:1"][data-state="joined"]')
    with psycopg.connect(dsn, autocommit=True) as conn:
        # realtime.send() is private by default; the page joined the public channel.
        conn.execute("""select realtime.send('{"score": 3}'::jsonb, 'update', 'room:1')""")
    await browser.call("waitFor", selector=ROW)
    text: str = await browser.call("text", selector=ROW)
    await browser.call("fill", selector="#key", value="")  # no key in a picture, even a demo one
    await browser.call("screenshot", path=str(path))
    return text


async def main(path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="pg-realtime-shot-") as data:
        cluster = EmbeddedPostgres(Path(data), fast=True)
        dsn = cluster.start()
        try:
            prepare_database(dsn)
            server = await serve_in_process(server_settings(dsn))
            browser = Browser()
            try:
                await browser.start()
                print(await show_near_miss(browser, server.url, dsn, path))
            finally:
                await browser.close()
                await server.stop()
        finally:
            cluster.remove()
    print(f"wrote {path}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH))

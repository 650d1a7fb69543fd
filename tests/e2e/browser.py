"""Headless Chromium for the end-to-end tests, driven through ``tests/clients/js/inspector_e2e.js``.

The browser is the system's (Debian's ``chromium`` package); playwright-core only drives it, so
nothing is downloaded. :class:`Browser` starts the Node driver (a :class:`tests.harness.node.NodeDriver`)
and exposes its commands:
``await browser.call("click", selector="#join")``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.harness.node import JS_DIR, NodeDriver, NodeDriverError

ROOT = Path(__file__).resolve().parents[2]
DRIVER = JS_DIR / "inspector_e2e.js"
ARTIFACTS = ROOT / "test-artifacts"


def chromium_path() -> str:
    """The system Chromium, or an AssertionError that says how to install it."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed: apt-get install -y chromium"
    return found


class BrowserError(NodeDriverError):
    """A driver command failed, or the driver died."""


class Browser(NodeDriver):
    """A Node process running the Playwright driver, with one page."""

    def __init__(self, call_timeout: float = 30.0) -> None:
        super().__init__(DRIVER, call_timeout=call_timeout, stderr_lines=200, line_limit=16 * 1024 * 1024)
        self.events: list[dict[str, Any]] = []

    @property
    def page_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") in ("pageerror", "error")]

    def error(self, message: str, cmd: dict[str, Any] | None = None) -> Exception:
        if cmd is None:
            return BrowserError(f"the browser driver failed: {message}\n--- stderr ---\n{self.stderr}")
        return BrowserError(message)

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def start(self, timeout: float = 20.0) -> dict[str, Any]:
        assert (JS_DIR / "node_modules" / "playwright-core").is_dir(), (
            "playwright-core is missing: run 'make node-clients'"
        )
        executable = chromium_path()
        await super().start(timeout)
        result: dict[str, Any] = await self.call("launch", executablePath=executable)
        return result

    async def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        try:
            return await self.request({"cmd": cmd, **args}, timeout)
        except BrowserError as exc:
            raise BrowserError(f"{cmd} {args}: {exc}\n--- page events ---\n{self.events[-20:]}") from None

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.call("screenshot", path=str(path))
        return path

    async def close(self, timeout: float = 10.0) -> None:
        await super().close(timeout)

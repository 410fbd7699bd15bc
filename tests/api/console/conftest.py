"""A real headless browser for the console's tests: Debian's Chromium, driven by
Playwright's synchronous API on a thread of its own, so that the trio test (and the server
it started) keep running while the browser works.

Browser tests are marked ``browser`` and skipped, saying why, only when Chromium is not
installed (``apt-get install chromium``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from roost import Manifest, load_manifest
from roost.build import build_agent

from ..conftest import ADMIN_TOKEN

T = TypeVar("T")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HAVE_CHROMIUM = Path(CHROMIUM).is_file()
VIEWPORT = {"width": 1366, "height": 768}
"""A laptop screen."""
TIMEOUT_MS = 20_000

browser_test = pytest.mark.skipif(
    not HAVE_CHROMIUM,
    reason=f"Chromium is not installed ({CHROMIUM}); `apt-get install -y chromium` to run the "
    "console's browser tests",
)

ROOT = Path(__file__).resolve().parents[3]


class Browser:
    """One Chromium for the session; each page gets a fresh context (no cookies)."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self._thread.submit(self._launch).result()

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._chromium = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS
        )

    async def call(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the browser's thread; the trio loop runs on meanwhile."""
        future = self._thread.submit(work)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    @asynccontextmanager
    async def page(self, base_url: str) -> AsyncIterator[BrowserPage]:
        def open_page() -> Any:
            context = self._chromium.new_context(viewport=VIEWPORT, base_url=base_url)
            context.set_default_timeout(TIMEOUT_MS)
            return context.new_page()

        page = await self.call(open_page)
        try:
            yield BrowserPage(self, page)
        finally:
            await self.call(page.context.close)

    def close(self) -> None:
        def stop() -> None:
            self._chromium.close()
            self._playwright.stop()

        self._thread.submit(stop).result()
        self._thread.shutdown()


class BrowserPage:
    """A page in its own browser context. ``await page.do(lambda p: p.goto(...))`` runs
    Playwright calls on the browser's thread."""

    def __init__(self, browser: Browser, page: Any) -> None:
        self._browser = browser
        self.page = page

    async def do(self, work: Callable[[Any], T]) -> T:
        return await self._browser.call(lambda: work(self.page))

    async def sign_in(self, token: str = ADMIN_TOKEN, *, at: str = "/console") -> None:
        def sign_in(page: Any) -> None:
            page.goto(at)
            page.get_by_label("Admin token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_load_state()

        await self.do(sign_in)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.skip(f"Chromium is not installed ({CHROMIUM})")
    browser = Browser()
    yield browser
    browser.close()


def _built(directory: Path, cache_dir: Path, out_dir: Path) -> Manifest:
    manifest = load_manifest(directory / "agent.toml")
    out = out_dir / f"{manifest.name}.wasm"
    build_agent(directory / "agent.py", out, cache_dir=cache_dir)
    return manifest.with_component(out)


@pytest.fixture(scope="session")
def assistant_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """``examples/assistant``: chat with memory, replies streamed token by token."""
    return _built(ROOT / "examples" / "assistant", cache_dir, tmp_path_factory.mktemp("assistant"))

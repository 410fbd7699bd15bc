"""How fast the operator console's pages load with many agents in the store.

Fills a fresh store with ``--agents`` agents (default 10,000) of the ``assistant`` example
kind (each with a conversation in its state, some with kv entries), serves it with
``roost serve``'s server on a loopback port (LLM answers from the SIMULATED server in
``loadtests/sim_llm.py``), talks to a few agents so that some are resident and have recent
turns, then loads each console page ``--repeat`` times and prints the median times as JSON::

    python -m loadtests.console_pages --agents 10000 --repeat 15

``server_ms`` is a request over HTTP with the admin token until the whole page arrived.
``browser_ms`` is a navigation in headless Chromium until its ``load`` event (assets
cached, as for an operator moving between pages); it is measured when Debian's Chromium is
installed (``/usr/bin/chromium``). ``--screenshots DIR`` also saves a PNG of each page
(the pictures in docs/console.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from loadtests.sim_llm import SimLLMConfig, serve_sim_llm
from roost import load_config, load_manifest
from roost.address import AgentAddress
from roost.api.server import Serving, serve
from roost.build import build_agent
from roost.config import load_server_config
from roost.payload import pack
from roost.store.protocol import Commit, Usage
from roost.store.sqlite import open_sqlite_store
from roost.wall_clock import utc_day

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
ASSISTANT = ROOT / "examples" / "assistant"
KIND = "assistant"
LIMIT_MS = 300.0
"""What every page must load within."""
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).is_file()
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
TOPICS = ["otters", "tax forms", "the weather in Lisbon", "a birthday gift", "sourdough"]


def agent_id(n: int) -> str:
    return f"user-{n:05d}"


def fill_store(path: Path, agents: int, *, seed: int = 7) -> None:
    """``agents`` assistants with a short conversation each, and kv for every tenth."""
    rng = random.Random(seed)
    now = time.time()

    async def fill() -> None:
        async with open_sqlite_store(path) as store:

            def write() -> None:
                for n in range(agents):
                    topic = rng.choice(TOPICS)
                    history = [
                        {"role": "user", "content": f"Tell me about {topic}."},
                        {"role": "assistant", "content": f"Here is what I know about {topic}."},
                    ]
                    kv = {"profile": f'{{"name": "User {n}"}}'.encode()} if n % 10 == 0 else {}
                    at = now - rng.uniform(60, 30 * 86400)
                    store.commit(
                        Commit(
                            AgentAddress(KIND, agent_id(n)),
                            at=at,
                            state=pack({"history": history}),
                            kv_writes=kv,
                            kv_bytes=sum(len(k) + len(v) for k, v in kv.items()),
                            usage=Usage(turns=2, llm_input_tokens=40, llm_output_tokens=24),
                            usage_day=utc_day(at),
                        )
                    )

            await trio.to_thread.run_sync(write)

    trio.run(fill)


class Browser:
    """Debian's Chromium driven by Playwright on a thread of its own."""

    def __init__(self, base_url: str) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self._base_url = base_url
        self._thread.submit(self._launch).result()

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._chromium = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS
        )
        context = self._chromium.new_context(
            viewport={"width": 1366, "height": 768}, base_url=self._base_url
        )
        context.set_default_timeout(30_000)
        self.page = context.new_page()

    async def call(self, work: Callable[[Any], T]) -> T:
        future = self._thread.submit(lambda: work(self.page))
        return await trio.to_thread.run_sync(future.result)

    def close(self) -> None:
        def stop() -> None:
            self._chromium.close()
            self._playwright.stop()

        self._thread.submit(stop).result()
        self._thread.shutdown()


@contextmanager
def browser_at(url: str) -> Iterator[Browser | None]:
    if not Path(CHROMIUM).is_file():
        yield None
        return
    browser = Browser(url)
    try:
        yield browser
    finally:
        browser.close()


def pages(sample: str) -> dict[str, str]:
    """The console's pages (and the fragments they poll), by name."""
    agent = f"/console/agents/{KIND}/{sample}"
    return {
        "host": "/console",
        "kinds": "/console/kinds",
        "agents": f"/console/agents?kind={KIND}",
        "agents_page_50": f"/console/agents?kind={KIND}&after={agent_id(2500)}",
        "agents_search": f"/console/agents?kind={KIND}&q=user-0042",
        "agent": agent,
        "agent_erase_confirm": f"{agent}/erase",
        "fragment_host_panel": "/console/host/panel",
        "fragment_agent_status": f"{agent}/status",
        "fragment_agent_results": f"/console/agents/results?kind={KIND}&q=user-01",
    }


async def measure(
    agents: int, repeat: int, screenshots: Path | None, warmup_s: float
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="roost-console-bench-"))
    started = time.perf_counter()
    await trio.to_thread.run_sync(fill_store, data_dir / "roost.db", agents)
    fill_s = time.perf_counter() - started
    host_config = load_config(data_dir=data_dir)
    wasm = data_dir / "assistant.wasm"
    await trio.to_thread.run_sync(
        partial(build_agent, ASSISTANT / "agent.py", wasm, cache_dir=host_config.cache_dir)
    )
    manifest = load_manifest(ASSISTANT / "agent.toml").with_component(wasm)
    token = secrets.token_urlsafe(24)
    async with trio.open_nursery() as nursery:
        llm = await nursery.start(
            serve_sim_llm,
            SimLLMConfig.model_validate(
                {"latency_ms": 150, "tokens_per_s": 25, "completion_tokens": 12}
            ),
        )
        host_config = host_config.model_copy(update={"llm_base_url": llm.url})
        serving: Serving = await nursery.start(
            partial(
                serve,
                host_config,
                load_server_config(bind_host="127.0.0.1", port=0, admin_token=token),
                deploy=[manifest],
                handle_signals=False,
            )
        )
        url = serving.urls[0]
        headers = {"Authorization": f"Bearer {token}"}
        sample = agent_id(42)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            for n in (42, 7, 1234, 9001):  # resident, with recent turns
                for text in ("Hello there", "What can you do?"):
                    await client.post(
                        f"/v1/agents/{KIND}/{agent_id(n)}/messages", json={"message": text}
                    )
            if screenshots is not None and HAVE_CHROMIUM:
                # Pictures of a host at work: agents chat while they are taken.
                async with trio.open_nursery() as chatting:
                    chatting.start_soon(_background_chat, client, warmup_s + 20)
                    await trio.sleep(warmup_s)
                    with browser_at(url) as browser:
                        assert browser is not None
                        await browser.call(partial(_sign_in, token=token))
                        await _screenshots(browser, screenshots, sample, token)
            elif warmup_s:
                await _background_chat(client, warmup_s)
            server_ms = {
                name: await _server_times(client, path, repeat)
                for name, path in pages(sample).items()
            }
            sizes = {
                name: len((await client.get(path)).content) for name, path in pages(sample).items()
            }
            with browser_at(url) as browser:
                browser_ms: dict[str, list[float]] = {}
                if browser is not None:
                    await browser.call(partial(_sign_in, token=token))
                    for name, path in pages(sample).items():
                        if not name.startswith("fragment_"):
                            browser_ms[name] = await browser.call(
                                partial(_browser_times, path=path, repeat=repeat)
                            )
        serving.shut_down()
        nursery.cancel_scope.cancel()
    results: dict[str, Any] = {}
    for name, path in pages(sample).items():
        entry: dict[str, Any] = {
            "path": path,
            "bytes": sizes[name],
            "server_ms": round(statistics.median(server_ms[name]), 1),
        }
        if name in browser_ms:
            entry["browser_ms"] = round(statistics.median(browser_ms[name]), 1)
        results[name] = entry
    worst = max(max(v.get("server_ms", 0), v.get("browser_ms", 0)) for v in results.values())
    return {
        "agents_in_store": agents,
        "repeat": repeat,
        "fill_s": round(fill_s, 1),
        "browser": bool(browser_ms),
        "limit_ms": LIMIT_MS,
        "worst_ms": worst,
        "all_under_limit": worst < LIMIT_MS,
        "pages": results,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "data_dir": str(data_dir),
    }


async def _background_chat(client: httpx.AsyncClient, seconds: float) -> None:
    """A few agents chatting for ``seconds``, so the charts have something to show."""
    deadline = trio.current_time() + seconds
    rng = random.Random(3)

    async def user(n: int) -> None:
        while trio.current_time() < deadline:
            await client.post(
                f"/v1/agents/{KIND}/{agent_id(n)}/messages",
                json={"message": f"Tell me about {rng.choice(TOPICS)}"},
            )
            await trio.sleep(rng.uniform(0.2, 1.0))

    async with trio.open_nursery() as nursery:
        for n in range(100, 124):
            nursery.start_soon(user, n)


async def _server_times(client: httpx.AsyncClient, path: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        response = await client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        times.append(elapsed)
    return times[1:]  # the first warms caches


def _sign_in(page: Any, *, token: str) -> None:
    page.goto("/console/sign-in")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console")


def _browser_times(page: Any, *, path: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        page.goto(path, wait_until="load")
        times.append((time.perf_counter() - started) * 1000)
    return times[1:]


async def _screenshots(browser: Browser, directory: Path, sample: str, token: str) -> None:
    await trio.to_thread.run_sync(partial(directory.mkdir, parents=True, exist_ok=True))

    def shoot(page: Any, *, path: str, name: str, full: bool = True) -> None:
        page.goto(path, wait_until="load")
        page.wait_for_timeout(300)
        page.screenshot(path=str(directory / f"{name}.png"), full_page=full)

    def chat(page: Any) -> None:
        page.goto(f"/console/agents/{KIND}/{sample}")
        page.get_by_text("Listening.").wait_for()
        page.get_by_label("Message", exact=True).fill("Any tips for a weekend in Lisbon?")
        page.get_by_role("button", name="Send").click()
        page.locator(".chat-log li.reply").wait_for()
        page.wait_for_timeout(500)
        page.screenshot(path=str(directory / "agent.png"), full_page=True)

    await browser.call(partial(shoot, path="/console", name="host"))
    await browser.call(partial(shoot, path="/console/kinds", name="kinds"))
    agents = f"/console/agents?kind={KIND}&q=user-01"
    await browser.call(partial(shoot, path=agents, name="agents", full=False))
    await browser.call(chat)

    def sign_in_page(page: Any) -> None:
        page.context.clear_cookies()
        shoot(page, path="/console/sign-in", name="sign-in", full=False)
        _sign_in(page, token=token)

    await browser.call(sign_in_page)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--screenshots", type=Path, default=None, help="save PNGs here")
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="seconds of background chat before measuring (default: 30 with --screenshots)",
    )
    args = parser.parse_args(argv)
    warmup_s = args.warmup_s if args.warmup_s is not None else (30.0 if args.screenshots else 0)
    report = trio.run(measure, args.agents, args.repeat, args.screenshots, warmup_s)
    shutil.rmtree(report.pop("data_dir"), ignore_errors=True)
    print(json.dumps(report, indent=2))
    if not report["all_under_limit"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

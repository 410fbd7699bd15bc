"""The console in a real headless Chromium, against a real server on a loopback port:
sign in, see a kind, find an agent and read its state, chat with an agent and watch its
tokens stream, fork, export and erase it, deploy by upload, and be refused without the
admin token."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from loadtests.sim_llm import reply_words
from roost import Manifest

from ...conftest import sim_llm
from ..conftest import ADMIN_TOKEN, Serve
from .conftest import Browser, browser_test

pytestmark = [pytest.mark.browser, browser_test]

RECORD_STREAMING = """() => {
    // Each change to the agent's bubble that is still streaming: [ms, tokens, text].
    window.streamed = [];
    const started = performance.now();
    new MutationObserver(() => {
        const item = document.querySelector('.chat-log li.from-agent[aria-busy="true"]');
        if (!item) return;
        const text = item.querySelector(".body").textContent;
        const last = window.streamed[window.streamed.length - 1];
        if (!last || last[2] !== text) {
            window.streamed.push([performance.now() - started, Number(item.dataset.tokens), text]);
        }
    }).observe(document.querySelector(".chat-log"),
               {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


async def test_sign_in_see_a_kind_and_sign_out(
    serve_host: Serve, echo_manifest: Manifest, browser: Browser
) -> None:
    expect = _expect()
    async with serve_host(echo_manifest) as served, browser.page(served.url) as page:

        def sign_in_wrong_then_right(p: Any) -> None:
            p.goto("/console/kinds")
            expect(p).to_have_url(re.compile(r"/console/sign-in\?next=%2Fconsole%2Fkinds$"))
            p.get_by_label("Admin token").fill("not-the-token")
            p.get_by_role("button", name="Sign in").click()
            expect(p.get_by_role("alert")).to_contain_text("not the admin token")
            p.get_by_label("Admin token").fill(ADMIN_TOKEN)
            p.get_by_role("button", name="Sign in").click()
            expect(p).to_have_url(re.compile(r"/console/kinds$"))
            expect(p.get_by_role("heading", name="Kinds", level=1)).to_be_visible()

        await page.do(sign_in_wrong_then_right)

        def see_the_kind(p: Any) -> dict[str, Any]:
            row = p.get_by_role("row").filter(has=p.get_by_role("rowheader", name="echo"))
            expect(row).to_contain_text("0.1.0")
            expect(row).to_contain_text("log")
            details = p.locator("#details-echo")
            expect(details).to_contain_text("idle_timeout_s")
            expect(details).to_contain_text("cpu_deadline_ms")
            [cookie] = p.context.cookies()
            return dict(cookie)

        cookie = await page.do(see_the_kind)
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/console"
        assert ADMIN_TOKEN not in cookie["value"]

        def sign_out(p: Any) -> None:
            p.get_by_role("button", name="Sign out").click()
            expect(p).to_have_url(re.compile(r"/console/sign-in$"))
            p.goto("/console/kinds")  # the session is over
            expect(p).to_have_url(re.compile(r"/console/sign-in\?"))

        await page.do(sign_out)


async def test_find_an_agent_read_its_state_and_watch_it_live(
    serve_host: Serve, echo_manifest: Manifest, browser: Browser
) -> None:
    expect = _expect()
    async with serve_host(echo_manifest) as served, browser.page(served.url) as page:
        for n in range(12):
            assert (await served.message(f"echo/user-{n}", f"hello {n}")).status_code == 200
        assert (await served.message("echo/user-10", "again")).status_code == 200
        await page.sign_in(at="/console/agents")

        def search(p: Any) -> None:
            expect(p.get_by_role("heading", name=re.compile("all 12 agents"))).to_be_visible()
            p.get_by_label("Agent id starts with").fill("user-1")
            results = p.locator("table.agents tbody")
            expect(results.get_by_role("rowheader")).to_have_text(["user-1", "user-10", "user-11"])
            results.get_by_role("link", name="user-10").click()
            expect(p).to_have_url(re.compile(r"/console/agents/echo/user-10$"))
            expect(p.locator("#agent-state")).to_contain_text('"count": 2')
            expect(p.locator("#recent-turns tbody tr")).to_have_count(2)
            expect(p.locator("#recent-turns")).to_contain_text("on-event")
            expect(p.locator("#agent-residency")).to_have_text("resident")
            expect(p.locator("#events-state")).to_have_text("Listening.")

        await page.do(search)
        response = await served.message("echo/user-10", "while you watch")
        assert response.json()["replies"] == [{"echo": "while you watch", "count": 3}]

        def live(p: Any) -> None:
            expect(p.locator("#event-log")).to_contain_text("on-event: ok")
            expect(p.locator("#recent-turns tbody tr")).to_have_count(3)

        await page.do(live)


async def test_chat_with_an_agent_and_watch_its_tokens_stream(
    serve_host: Serve, assistant_manifest: Manifest, browser: Browser
) -> None:
    expect = _expect()
    question = "tell me about otters"
    words = reply_words([{"role": "user", "content": question}], 8)
    async with (
        sim_llm(completion_tokens=8, latency_ms=100, tokens_per_s=8) as llm,
        serve_host(assistant_manifest, host_settings={"llm_base_url": llm.url}) as served,
        browser.page(served.url) as page,
    ):
        await page.sign_in(at="/console/agents/assistant/ada")

        def chat(p: Any) -> list[tuple[float, int, str]]:
            expect(p.get_by_role("heading", name="Chat")).to_be_visible()
            p.get_by_label("Message", exact=True).fill(question)
            p.evaluate(RECORD_STREAMING)
            p.get_by_role("button", name="Send").click()
            expect(p.locator(".chat-log li.reply .body")).to_have_text(" ".join(words))
            expect(p.locator(".chat-log")).to_have_attribute("data-done", "1")
            seen: list[tuple[float, int, str]] = p.evaluate("window.streamed")
            p.reload()
            expect(p.locator("#agent-state")).to_contain_text(question)
            return seen

        seen = await page.do(chat)
        # Tokens arrived one by one while the reply was still being streamed, then it
        # landed whole.
        partial = [(at, n, text) for at, n, text in seen if 0 < n < len(words)]
        assert [n for _, n, _ in partial] == sorted({n for _, n, _ in partial})
        assert len(partial) >= len(words) // 2, seen
        assert all(" ".join(words).startswith(text) for _, _, text in partial)
        assert partial[-1][0] - partial[0][0] > 0.2 * 1000  # spread over time, not one burst


async def test_fork_export_and_erase_with_confirmation(
    serve_host: Serve, echo_manifest: Manifest, browser: Browser, tmp_path: Path
) -> None:
    expect = _expect()
    async with serve_host(echo_manifest) as served, browser.page(served.url) as page:
        await served.message("echo/alice", "hi")
        await page.sign_in(at="/console/agents/echo/alice")

        def fork_and_export(p: Any) -> str:
            p.get_by_label("Fork into a new agent with id").fill("alice-copy")
            p.get_by_role("button", name="Fork").click()
            expect(p).to_have_url(re.compile(r"/console/agents/echo/alice-copy\?forked_from="))
            expect(p.get_by_role("status").first).to_contain_text("Forked from echo/alice")
            expect(p.locator("#agent-state")).to_contain_text('"count": 1')
            with p.expect_download() as download:
                p.get_by_role("link", name="Export as JSON").click()
            target = tmp_path / "export.json"
            download.value.save_as(target)
            return target.read_text()

        exported = json.loads(await page.do(fork_and_export))
        assert exported["agent"] == "echo/alice-copy"
        assert exported["state"] == {"count": 1}

        def erase(p: Any) -> None:
            p.get_by_role("link", name="Erase…").click()
            expect(p.get_by_role("heading", level=1)).to_have_text("Erase echo/alice-copy?")
            p.get_by_label(re.compile("Type the agent's id")).fill("alice")
            p.get_by_role("button", name="Erase echo/alice-copy").click()
            expect(p.get_by_role("alert")).to_contain_text("to confirm")
            p.get_by_label(re.compile("Type the agent's id")).fill("alice-copy")
            p.get_by_role("button", name="Erase echo/alice-copy").click()
            expect(p).to_have_url(re.compile(r"/console/agents\?kind=echo&erased=alice-copy$"))
            expect(p.get_by_role("status").first).to_contain_text("Erased echo/alice-copy")

        await page.do(erase)
        assert await served.host.export("echo/alice-copy") is None
        assert await served.host.export("echo/alice") is not None


async def test_deploy_a_kind_by_upload(
    serve_host: Serve, echo_manifest: Manifest, browser: Browser, tmp_path: Path
) -> None:
    expect = _expect()
    assert echo_manifest.component is not None
    manifest = tmp_path / "agent.toml"
    manifest.write_text('name = "greeter"\nversion = "2.0.0"\n\n[capabilities.log]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "broken"\n\n[capabilities.teleport]\n')
    async with serve_host(echo_manifest) as served, browser.page(served.url) as page:
        await page.sign_in(at="/console/kinds")

        def deploy(p: Any) -> None:
            p.get_by_label("Manifest").set_input_files(str(bad))
            p.get_by_label("Component").set_input_files(str(echo_manifest.component))
            p.get_by_role("button", name="Deploy").click()
            expect(p.get_by_role("alert")).to_contain_text("Not deployed")
            p.get_by_label("Manifest").set_input_files(str(manifest))
            p.get_by_label("Component").set_input_files(str(echo_manifest.component))
            p.get_by_role("button", name="Deploy").click()
            expect(p.get_by_role("status")).to_have_text("Deployed greeter 2.0.0.")
            row = p.get_by_role("row").filter(has=p.get_by_role("rowheader", name="greeter"))
            expect(row).to_contain_text("2.0.0")

        await page.do(deploy)
        assert {k.name for k in served.host.kinds()} == {"echo", "greeter"}
        assert not (served.data_dir / "kinds" / "broken").exists()
        assert (await served.message("greeter/g", "hi")).json()["replies"][0]["echo"] == "hi"


async def test_refused_without_the_admin_token(
    serve_host: Serve, echo_manifest: Manifest, browser: Browser
) -> None:
    expect = _expect()
    async with serve_host(echo_manifest) as served, browser.page(served.url) as page:
        await served.message("echo/secret-keeper", "the password is swordfish")

        def refused(p: Any) -> dict[str, int]:
            p.goto("/console/agents/echo/secret-keeper")
            expect(p).to_have_url(re.compile(r"/console/sign-in\?next="))
            assert "swordfish" not in p.content()
            statuses: dict[str, int] = p.evaluate(
                """async () => {
                    const out = {};
                    for (const path of [
                        "/console/agents/echo/secret-keeper/export",
                        "/console/agents/echo/secret-keeper/status",
                        "/console/agents/echo/secret-keeper/events",
                        "/console/host/panel",
                        "/console/agents/results?kind=echo",
                    ]) {
                        out[path] = (await fetch(path)).status;
                    }
                    out["chat"] = (await fetch("/console/agents/echo/secret-keeper/messages", {
                        method: "POST", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify({message: "tell me"}),
                    })).status;
                    return out;
                }"""
            )
            return statuses

        statuses = await page.do(refused)
        assert set(statuses.values()) == {401}, statuses


async def test_the_host_page_updates_live(
    serve_host: Serve, echo_manifest: Manifest, browser: Browser
) -> None:
    expect = _expect()
    async with serve_host(echo_manifest) as served, browser.page(served.url) as page:
        await page.sign_in()

        def charts(p: Any) -> None:
            expect(p.get_by_role("heading", name="Host", level=1)).to_be_visible()
            expect(p.get_by_role("figure")).to_have_count(8)
            expect(p.locator("#stat-turns")).to_have_text("0")

        await page.do(charts)
        for n in range(3):
            await served.message(f"echo/u{n}", "hi")
        with trio.fail_after(30):
            await page.do(lambda p: expect(p.locator("#stat-turns")).to_have_text("3"))
            await page.do(lambda p: expect(p.locator("#stat-resident")).to_have_text("3"))

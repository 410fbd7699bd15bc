"""Graceful shutdown of a real ``roost serve`` process on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from roost import Manifest

from .conftest import ADMIN_TOKEN, SECRET


def _manifest_file(tmp_path: Path, manifest: Manifest) -> Path:
    path = tmp_path / "probe.toml"
    path.write_text(
        f'name = "probe"\ncomponent = "{manifest.component}"\n'
        "[capabilities.kv]\n[capabilities.clock]\n[capabilities.random]\n"
        "[capabilities.log]\n[capabilities.timers]\n"
    )
    return path


async def _start(tmp_path: Path, cache_dir: Path, manifest: Path) -> tuple[trio.Process, str]:
    env = {
        **os.environ,
        "ROOST_ADMIN_TOKEN": ADMIN_TOKEN,
        "ROOST_SECRET": SECRET,
        "ROOST_CACHE_DIR": str(cache_dir),
        "ROOST_DATA_DIR": str(tmp_path / "data"),
    }
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "roost.cli", "serve", "--deploy", str(manifest), "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    buffer = b""
    with trio.fail_after(60):
        while b"listening on " not in buffer:
            chunk = await process.stderr.receive_some()
            assert chunk, f"server exited early: {buffer.decode()}"
            buffer += chunk
    url = buffer.decode().split("listening on ", 1)[1].split()[0]
    return process, url


# When the server closes the socket (1001), the client library leaves its TCP stream for the
# garbage collector, which Python reports as an unraisable ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_sigterm_finishes_in_flight_requests_and_commits(
    tmp_path: Path, cache_dir: Path, probe_manifest: Manifest
) -> None:
    manifest = _manifest_file(tmp_path, probe_manifest)
    process, url = await _start(tmp_path, cache_dir, manifest)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    results: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=admin) as client:

        async def slow_request() -> None:
            response = await client.post(
                "/v1/agents/probe/a/messages", json={"message": {"op": "sleep", "seconds": 1.0}}
            )
            results["status"] = response.status_code
            results["replies"] = response.json()["replies"]

        socket_ready = trio.Event()

        async def socket() -> None:
            ws_url = url.replace("http://", "ws://") + f"/v1/agents/probe/w/ws?token={ADMIN_TOKEN}"
            async with open_websocket_url(ws_url) as ws:
                await ws.send_message(json.dumps({"message": "count"}))
                results["ws_first"] = json.loads(await ws.get_message())
                assert json.loads(await ws.get_message()) == {"type": "done"}
                socket_ready.set()
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as exc:
                    results["ws_close"] = exc.reason.code

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(socket)
                await socket_ready.wait()  # its event is done: only the slow one is in flight
                nursery.start_soon(slow_request)
                for _ in range(5_000):  # polls another process, so no trio.Event to wait on
                    if "roost_events_in_flight 1.0" in (await client.get("/metrics")).text:
                        break
                    await trio.sleep(0.01)
                process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert results["status"] == 200
    assert results["replies"] == ["before", {"after": 1}]
    assert results["ws_first"] == {"type": "reply", "message": 1}
    assert results["ws_close"] == 1001

    # The turn that finished during shutdown was committed.
    process, url = await _start(tmp_path, cache_dir, manifest)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=admin) as client:
            response = await client.post(
                "/v1/agents/probe/a/messages", json={"message": {"op": "sleep", "seconds": 0}}
            )
            assert response.json()["replies"] == ["before", {"after": 2}]
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            assert await process.wait() == 0

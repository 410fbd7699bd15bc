"""Deploys over HTTP are atomic: nothing rejected is ever saved, a saved kind is replaced
only once its successor deployed, and a start-up serves every saved kind it can load."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost import Manifest

from .conftest import Serve

ECHO_TOML = 'name = "echo2"\nversion = "{version}"\n[capabilities.log]\n'
# The upload is refused before the client finished sending it: httpx then drops its
# multipart body generator half-read, which Python reports as unraisable.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _saved_files(data_dir: Path) -> list[str]:
    kinds = data_dir / "kinds"
    if not kinds.exists():
        return []
    return sorted(str(p.relative_to(kinds)) for p in kinds.rglob("*") if p.is_file())


async def _deploy(served: object, manifest_text: str, wasm: bytes) -> tuple[int, dict[str, object]]:
    response = await served.client.post(  # type: ignore[attr-defined]
        "/v1/kinds",
        files={"component": ("c.wasm", wasm)},
        data={"manifest": manifest_text},
        headers=served.admin,  # type: ignore[attr-defined]
    )
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("manifest_text", "wasm", "complaint"),
    [
        (ECHO_TOML.format(version="1"), b"\0asm not really", "not a valid WebAssembly component"),
        ('name = "echo2"\n[capabilities.telepathy]\n', None, "unknown capability 'telepathy'"),
        ('name = "echo2"\n', None, "imports not granted by the manifest"),
        ("name = [broken", None, "not valid TOML"),
    ],
)
async def test_a_rejected_upload_leaves_nothing_behind_and_restarts_cleanly(
    serve_host: Serve,
    echo_manifest: Manifest,
    manifest_text: str,
    wasm: bytes | None,
    complaint: str,
) -> None:
    assert echo_manifest.component is not None
    wasm = wasm or echo_manifest.component.read_bytes()
    async with serve_host() as served:
        status, body = await _deploy(served, manifest_text, wasm)
        assert status == 400, body
        assert complaint in body["error"]["message"]  # type: ignore[index]
        assert _saved_files(served.data_dir) == []
        data_dir = served.data_dir
    async with serve_host(data_dir=data_dir) as served:
        ready = (await served.client.get("/readyz")).json()
        assert ready == {"status": "ready", "kinds": []}


async def test_a_chunked_upload_over_the_limit_is_refused_and_not_saved(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    limit = 64 * 1024  # max_body_bytes 1 KiB, deploy uploads up to 64 times that

    async def chunks() -> AsyncIterator[bytes]:
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="manifest"\r\n\r\n'
        yield ECHO_TOML.format(version="1").encode() + b"\r\n" + boundary
        yield b'Content-Disposition: form-data; name="component"; filename="c.wasm"\r\n'
        yield b"Content-Type: application/wasm\r\n\r\n"
        for _ in range(2 * limit // 4096):
            yield b"\0" * 4096
        yield b"\r\n--b0undary--\r\n"

    async with serve_host(max_body_bytes=1024) as served:
        response = await served.client.post(
            "/v1/kinds",
            content=chunks(),
            headers={**served.admin, "Content-Type": "multipart/form-data; boundary=b0undary"},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, response.text
        assert f"{limit}-byte limit" in response.json()["error"]["message"]
        assert _saved_files(served.data_dir) == []


async def test_a_redeploy_replaces_the_saved_kind_and_a_failed_one_keeps_it(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    assert echo_manifest.component is not None
    wasm = echo_manifest.component.read_bytes()
    async with serve_host() as served:
        assert (await _deploy(served, ECHO_TOML.format(version="1"), wasm))[0] == 201
        first = _saved_files(served.data_dir)
        assert (await _deploy(served, ECHO_TOML.format(version="2"), wasm))[0] == 201
        second = _saved_files(served.data_dir)
        # One version on disk at a time, under new names.
        assert len(first) == len(second) == 3
        assert set(first) & set(second) == {"echo2/current"}
        # A rejected version 3 leaves version 2 saved and serving.
        status, _ = await _deploy(served, ECHO_TOML.format(version="3"), b"junk")
        assert status == 400
        assert _saved_files(served.data_dir) == second
        kinds = (await served.client.get("/v1/kinds", headers=served.admin)).json()["kinds"]
        assert [k["version"] for k in kinds] == ["2"]
        data_dir = served.data_dir
    async with serve_host(data_dir=data_dir) as served:
        kinds = (await served.client.get("/v1/kinds", headers=served.admin)).json()["kinds"]
        assert [(k["name"], k["version"]) for k in kinds] == [("echo2", "2")]


async def test_a_saved_kind_that_cannot_load_is_logged_and_the_others_serve(
    serve_host: Serve, echo_manifest: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    assert echo_manifest.component is not None
    wasm = echo_manifest.component.read_bytes()
    async with serve_host() as served:
        assert (await _deploy(served, ECHO_TOML.format(version="1"), wasm))[0] == 201
        data_dir = served.data_dir
    # Another kind's saved component goes bad on disk while the server is down.
    broken = data_dir / "kinds" / "broken"
    broken.mkdir()
    (broken / "v1.toml").write_text('name = "broken"\n[capabilities.log]\n')
    (broken / "v1.wasm").write_bytes(b"\0asm damaged")
    (broken / "current").write_text("v1")
    with caplog.at_level(logging.ERROR, logger="roost.server"):
        async with serve_host(data_dir=data_dir) as served:
            ready = (await served.client.get("/readyz")).json()
            assert ready == {"status": "ready", "kinds": ["echo2"]}
            reply = await served.message("echo2/a", "hi")
            assert reply.json()["replies"] == [{"echo": "hi", "count": 1}]
    [record] = [r for r in caplog.records if "broken" in r.getMessage()]
    assert "saved kind 'broken' could not be deployed" in record.getMessage()
    assert str(broken / "v1.wasm") in record.getMessage()

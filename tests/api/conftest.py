"""A host served over real HTTP on a free loopback port, started by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from roost import Host, HostConfig, Manifest
from roost.address import AgentAddress
from roost.api import Credentials, mint_agent_token
from roost.api.server import Serving, serve
from roost.config import ServerConfig

ADMIN_TOKEN = "test-admin-token"
SECRET = "test-signing-secret-of-32-bytes!"


@dataclass
class Served:
    url: str
    client: httpx.AsyncClient
    data_dir: Path
    serving: Serving

    @property
    def host(self) -> Host:
        return self.serving.host

    def token(self, address: str, ttl_s: int = 600) -> str:
        return mint_agent_token(SECRET, AgentAddress.parse(address), ttl_s=ttl_s)

    def agent_headers(self, address: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(address)}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def message(self, address: str, message: Any, **headers: str) -> httpx.Response:
        kind, agent_id = address.split("/")
        return await self.client.post(
            f"/v1/agents/{kind}/{agent_id}/messages",
            json={"message": message},
            headers={**self.agent_headers(address), **headers},
        )


Serve = Callable[..., Any]


@pytest.fixture
def serve_host(tmp_path: Path, cache_dir: Path) -> Serve:
    @asynccontextmanager
    async def start(
        *manifests: Manifest,
        data_dir: Path | None = None,
        host_settings: dict[str, Any] | None = None,
        **settings: Any,
    ) -> AsyncIterator[Served]:
        host_config = HostConfig(
            data_dir=data_dir or tmp_path / "data", cache_dir=cache_dir, **(host_settings or {})
        )
        server_config = ServerConfig(
            bind_host="127.0.0.1",
            port=0,
            admin_token=ADMIN_TOKEN,
            secret=SECRET,
            **settings,
        )
        async with trio.open_nursery() as nursery:
            serving = await nursery.start(
                partial(
                    serve, host_config, server_config, deploy=list(manifests), handle_signals=False
                )
            )
            url = serving.urls[0]
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield Served(url, client, host_config.data_dir, serving)
            # Stop as SIGTERM would: the listening socket closes, agents commit and hibernate.
            serving.shut_down()

    return start


def credentials() -> Credentials:
    return Credentials(secret=SECRET, admin_token=ADMIN_TOKEN)

"""The http capability's egress checks.

Refusals are proved with an HTTP transport that fails the test if it is ever asked to
connect, and names that resolve without DNS traffic (numeric forms, localhost), so no
packet can leave even if the checks under test were broken.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from roost import CapabilityDenied, HostConfig, Manifest
from roost.capabilities.http import HttpGrant, fetch_checked, refused_address

from .test_timers import caller_host, sim_llm

TRICKS = {
    "http://127.0.0.1/": "loopback",
    "http://2130706433/": "loopback",  # decimal
    "http://0x7f.1/": "loopback",  # hex, short form
    "http://localhost./": "loopback",  # trailing dot
    "http://[::1]/": "loopback",
    "http://[::ffff:127.0.0.1]/": "loopback",  # IPv4-mapped IPv6
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://10.1.2.3/": "private",
    "http://192.168.0.1/": "private",
    "http://172.16.0.1/": "private",
    "http://0.0.0.0/": "unspecified",
    "http://100.64.0.1/": "not globally routable",
}


def _refusing_client() -> httpx.AsyncClient:
    def connect(request: httpx.Request) -> httpx.Response:
        pytest.fail(f"a connection was attempted to {request.url}")

    return httpx.AsyncClient(transport=httpx.MockTransport(connect))


def _grant(*hosts: str) -> HttpGrant:
    return HttpGrant(hosts=list(hosts))


@pytest.mark.parametrize(("url", "reason"), sorted(TRICKS.items()))
async def test_private_addresses_are_refused_before_connecting(url: str, reason: str) -> None:
    host = httpx.URL(url).host.rstrip(".")
    async with _refusing_client() as client:
        with pytest.raises(CapabilityDenied) as info:
            await fetch_checked(client, "GET", url, {}, None, _grant(host), allow_private=False)
    assert reason in str(info.value)
    assert "public addresses" in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://public.example@127.0.0.1/", "user information"),
        ("http://evil.example/", "not on the http grant's hosts"),
        ("ftp://public.example/", "only http and https"),
        ("http://public.example.evil.example/", "not on the http grant's hosts"),
        ("http://0177.0.0.1/", "invalid URL"),  # octal: refused by the URL parser itself
    ],
)
async def test_urls_outside_the_grant_are_refused(url: str, message: str) -> None:
    async with _refusing_client() as client:
        with pytest.raises(CapabilityDenied, match=message):
            await fetch_checked(
                client, "GET", url, {}, None, _grant("public.example"), allow_private=False
            )


async def test_redirects_are_checked_again_and_the_checked_address_is_used() -> None:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"Location": "http://127.0.0.1/admin"})

    async def resolver(host: str, port: int) -> list[str]:
        return {"public.example": ["93.184.216.34"], "127.0.0.1": ["127.0.0.1"]}[host]

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        with pytest.raises(CapabilityDenied, match="loopback"):
            await fetch_checked(
                client,
                "GET",
                "http://public.example/start",
                {},
                None,
                _grant("public.example", "127.0.0.1"),
                allow_private=False,
                resolver=resolver,
            )
    # One hop went out, to the address that was checked, with the name kept in Host.
    [request] = seen
    assert request.url.host == "93.184.216.34"
    assert request.headers["host"] == "public.example"


def test_address_classification() -> None:
    assert refused_address("93.184.216.34") is None
    assert refused_address("2606:2800:220:1:248:1893:25c8:1946") is None
    assert refused_address("::ffff:10.0.0.1") == "private"
    assert refused_address("fe80::1") == "link-local (cloud metadata)"
    assert refused_address("fd00:ec2::254") == "private"


async def test_guest_fetch_end_to_end_when_private_addresses_are_allowed(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with sim_llm() as server:
        models_url = server.url + "/models"
        async with caller_host(host_config, caller_manifest, http_allow_private=True) as host:
            [reply] = await host.send("caller/a", {"op": "fetch", "url": models_url})
            assert reply["status"] == 200
            assert b"roost-sim" in reply["body"]
        async with caller_host(host_config, caller_manifest) as host:
            [refused] = await host.send("caller/a", {"op": "fetch", "url": models_url})
            assert "loopback" in refused["error"]
            [not_granted] = await host.send(
                "caller/a", {"op": "fetch", "url": "http://example.com/"}
            )
            assert "not on the http grant's hosts" in not_granted["error"]

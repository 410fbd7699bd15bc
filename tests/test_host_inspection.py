"""The facade's read-only questions the console asks: finding agents by id prefix, counting
them, a kind's manifest, and an agent's residency without a store read."""

from __future__ import annotations

import pytest

from roost import Host, InvalidAddress, UnknownKind
from roost.address import AgentAddress
from roost.store.protocol import Commit, Usage

IDS = ["a", "ab", "ab.1", "ab.2", "abc", "b", "b.a"]


def _fill(host: Host, kind: str = "probe") -> None:
    for agent_id in IDS:
        host.store.commit(
            Commit(AgentAddress(kind, agent_id), at=1.0, state=b"\x80", usage=Usage(turns=1))
        )


async def test_find_agents_by_prefix_page_by_page(probe_host: Host) -> None:
    _fill(probe_host)
    found = await probe_host.find_agents("probe", "ab")
    assert [a.id for a in found] == ["ab", "ab.1", "ab.2", "abc"]
    first = await probe_host.find_agents("probe", "ab", limit=2)
    assert [a.id for a in first] == ["ab", "ab.1"]
    rest = await probe_host.find_agents("probe", "ab", after=first[-1].id, limit=2)
    assert [a.id for a in rest] == ["ab.2", "abc"]
    assert await probe_host.find_agents("probe", "ab", after="abc") == []
    assert [a.id for a in await probe_host.find_agents("probe", "b.")] == ["b.a"]
    assert await probe_host.find_agents("probe", "zz") == []
    assert [a.id for a in await probe_host.find_agents("probe", "", limit=3)] == IDS[:3]
    assert (await probe_host.find_agents("probe", "ab"))[0].state_bytes == 1
    with pytest.raises(InvalidAddress):
        await probe_host.find_agents("probe", "no spaces")


async def test_counts_manifests_and_residency(probe_host: Host) -> None:
    _fill(probe_host)
    assert await probe_host.count_agents("probe") == len(IDS)
    assert await probe_host.count_agents() == len(IDS)
    assert probe_host.manifest("probe").name == "probe"
    with pytest.raises(UnknownKind):
        probe_host.manifest("nothing")
    assert not probe_host.residency("probe/fresh").resident
    await probe_host.send("probe/fresh", {"op": "count"})
    residency = probe_host.residency("probe/fresh")
    assert residency.resident
    assert residency.held_resident_by == ()
    assert residency.mailbox_depth == 0

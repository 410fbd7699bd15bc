"""The deployment files in ``deploy/`` are what the code that runs clusters writes."""

from __future__ import annotations

from pathlib import Path

from roost.cluster import haproxy_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_the_sample_haproxy_config_is_the_one_roost_cluster_up_writes() -> None:
    hosts = [(f"h{i}", f"192.0.2.1{i}:8470") for i in (1, 2, 3)]
    sample = (DEPLOY / "haproxy.cfg").read_text()
    assert sample.rstrip("\n") == haproxy_config("0.0.0.0:8470", hosts).rstrip("\n")

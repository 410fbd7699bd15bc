"""``roost token`` and the credential files kept in the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.address import AgentAddress
from roost.api.auth import load_credentials, require_agent
from roost.api.server import check_dev_mode
from roost.cli import main
from roost.config import ServerConfig
from roost.errors import AccessDenied, ConfigError


def test_roost_token_mints_a_token_for_exactly_one_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROOST_SECRET", raising=False)
    monkeypatch.delenv("ROOST_ADMIN_TOKEN", raising=False)
    # No server has kept a secret there yet: a token would be signed with one nobody knows.
    assert main(["token", "echo", "alice", "--ttl", "60", "--data-dir", str(tmp_path)]) == 1
    assert "no server secret" in capsys.readouterr().err
    # The server generates its secret at start, kept owner-only; tokens are signed with it.
    credentials = load_credentials(ServerConfig(), tmp_path)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert main(["token", "echo", "alice", "--ttl", "60", "--data-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    require_agent(credentials, token, AgentAddress("echo", "alice"))
    with pytest.raises(AccessDenied):
        require_agent(credentials, token, AgentAddress("echo", "bob"))
    assert load_credentials(ServerConfig(), tmp_path) == credentials


def test_dev_mode_only_binds_to_loopback() -> None:
    check_dev_mode(ServerConfig(dev=True, bind_host="127.0.0.1"))
    check_dev_mode(ServerConfig(dev=True, bind_host="::1"))
    with pytest.raises(ConfigError, match="loopback"):
        check_dev_mode(ServerConfig(dev=True, bind_host="0.0.0.0"))

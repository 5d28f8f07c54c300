from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from datagraph.exceptions import ConfigError
from datagraph.settings import Settings
from datagraph.store.client import parse_redis_config


def test_env_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAGRAPH_MAX_BACKLOG", "77")
    monkeypatch.setenv("DATAGRAPH_SECRET", "s3")
    s = Settings.from_env(linger=0)
    assert s.max_backlog == 77
    assert s.secret == b"s3"
    assert s.linger == 0.0
    assert Settings.from_env(max_backlog=5).max_backlog == 5


def test_unknown_and_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="'max_backlogg'"):
        Settings.from_env(max_backlogg=1)
    with pytest.raises(ConfigError, match="'max_backlog' must be positive"):
        Settings.from_env(max_backlog=0)
    monkeypatch.setenv("DATAGRAPH_IDLE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="DATAGRAPH_IDLE_TIMEOUT"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"url": "redis://localhost:6379/0"}, ("localhost", 6379, 0, None, None, False)),
        ({"url": "valkey://u:p%40ss@h:7000/3"}, ("h", 7000, 3, "u", "p@ss", False)),
        ({"url": "rediss://h"}, ("h", 6379, 0, None, None, True)),
        ({"host": "x", "port": "1234", "db": 2, "password": "pw"}, ("x", 1234, 2, None, "pw", False)),
        ({"url": "redis://h:1/0", "db": 5}, ("h", 1, 5, None, None, False)),
    ],
)
def test_redis_config(config: dict[str, object], expected: tuple[object, ...]) -> None:
    a = parse_redis_config(config)
    assert (a.host, a.port, a.db, a.username, a.password, a.tls) == expected
    assert "p@ss" not in a.url


def test_bad_redis_config_is_named() -> None:
    with pytest.raises(ConfigError, match="scheme 'http'"):
        parse_redis_config({"url": "http://h"})
    with pytest.raises(ConfigError, match="'hots'"):
        parse_redis_config({"hots": "h"})


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    missing = [
        f.name for f in dataclasses.fields(Settings) if not any(f"`{f.name}`" in row for row in rows)
    ]
    assert not missing, f"settings missing from the README's settings table: {missing}"

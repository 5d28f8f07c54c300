"""``datagraph dashboard``: arguments, refusals, and a real server in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from datagraph.cli import build_parser, main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _dashboard(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from datagraph.cli import main; sys.exit(main())",
         "dashboard", "--port", str(port), "--log-level", "warning", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                out, err = process.communicate(timeout=5)
                pytest.fail(f"the dashboard did not start (exit {process.returncode}):\n{out}\n{err}")
            time.sleep(0.1)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_command_is_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["dashboard"])
    assert (args.host, args.port, args.app, args.token) == ("127.0.0.1", 8000, None, None)


def test_without_a_store_it_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard"]) == 2
    assert "pass --redis-url" in capsys.readouterr().err


def test_an_app_module_must_attach_a_supervisor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--app", "json"]) == 2
    assert "attached no Supervisor" in capsys.readouterr().err


@pytest.mark.timeout(90)
def test_serves_and_warns_when_exposed_without_a_token(valkey_url: str) -> None:
    with _dashboard("--redis-url", valkey_url, "--host", "0.0.0.0") as (base, process):
        assert httpx.get(f"{base}/processors").status_code == 200
        assert httpx.get(f"{base}/metrics").status_code == 200
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=15)
    assert "WITHOUT a token" in err


@pytest.mark.timeout(90)
def test_serves_with_a_token_from_the_environment(valkey_url: str) -> None:
    env = {"DATAGRAPH_DASHBOARD_TOKEN": "cli-token"}
    with _dashboard("--redis-url", valkey_url, env=env) as (base, process):
        assert httpx.get(f"{base}/api/processors").status_code == 401
        authorized = httpx.get(f"{base}/api/processors", headers={"Authorization": "Bearer cli-token"})
        assert authorized.status_code == 200
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=15)
    assert "WITHOUT a token" not in err


def test_a_cluster_store_needs_a_broker_of_its_own(
    valkey_cluster: object, valkey_server: object, capsys: pytest.CaptureFixture[str]
) -> None:
    url = valkey_cluster.url  # type: ignore[attr-defined]
    assert main(["dashboard", "--redis-url", url]) == 2
    assert "is a Valkey Cluster, which Celery cannot use as its broker: pass --broker-url" in (
        capsys.readouterr().err
    )


@pytest.mark.timeout(90)
def test_serves_a_cluster_store_with_a_standalone_broker(
    valkey_cluster: object, valkey_server: object
) -> None:
    store = valkey_cluster.url  # type: ignore[attr-defined]
    broker = f"redis://127.0.0.1:{valkey_server.port}/3"  # type: ignore[attr-defined]
    with _dashboard("--redis-url", store, "--broker-url", broker) as (base, process):
        assert httpx.get(f"{base}/processors").status_code == 200
        assert httpx.get(f"{base}/operations").status_code == 200
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=15)
    assert "Traceback" not in err

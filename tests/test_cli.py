"""``datagraph status`` against a store where a worker process registered and ran a flow."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from telemetry_worker import Worker, start_worker

from datagraph import cli

N = 300


@pytest.fixture(scope="module")
def worker(valkey_url: str) -> Iterator[Worker]:
    with start_worker(valkey_url, run=N) as worker:
        yield worker


def _datagraph(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DATAGRAPH_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "datagraph", *args],
        capture_output=True, text=True, env=environ, timeout=60, check=False,
    )


def _status_json(valkey_url: str, *args: str) -> dict[str, Any]:
    result = _datagraph("status", "--json", "--redis-url", valkey_url, *args)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.mark.stores
def test_status_json_lists_processors_workers_and_run_edges(
    valkey_url: str, worker: Worker
) -> None:
    data = _status_json(valkey_url, "--limit", "50")
    assert set(data) == {"processors", "workers", "runs"}

    processors = {p["name"]: p for p in data["processors"]}
    label = processors["tw_label"]
    assert worker.id in label["workers"]
    assert worker.id in label["online_workers"]
    assert [(p["name"], p["type"]) for p in label["inputs"]] == [("tw_numbers", "int")]
    assert [(p["name"], p["type"]) for p in label["outputs"]] == [("tw_labels", "Label")]
    assert label["outputs"][0]["schema"]["required"] == ["value", "text"]
    assert processors["tw_total"]["wait"] is True

    (me,) = [w for w in data["workers"] if w["id"] == worker.id]
    assert me["online"] is True
    assert me["pid"] == worker.process.pid
    assert me["executor"] == "local"
    assert "tw_source" in me["processors"]

    (run,) = [r for r in data["runs"] if r["id"] == worker.run]
    assert run["state"] == "succeeded"
    assert run["flow"] == "tw-flow"
    edges = [
        {k: e[k] for k in ("io", "source", "target", "written", "read", "backlog")}
        for e in run["edges"]
    ]
    assert edges == [
        {"io": "tw_n", "source": "(input)", "target": "tw_source",
         "written": 1, "read": 1, "backlog": 0},
        {"io": "tw_numbers", "source": "tw_source", "target": "tw_label",
         "written": N, "read": N, "backlog": 0},
        {"io": "tw_labels", "source": "tw_label", "target": "tw_total",
         "written": N, "read": N, "backlog": 0},
        {"io": "tw_total", "source": "tw_total", "target": "(output)",
         "written": 1, "read": 1, "backlog": 0},
    ]


def test_status_filters_by_state_and_run(valkey_url: str, worker: Worker) -> None:
    failed = _status_json(valkey_url, "--state", "failed", "--limit", "100")
    assert worker.run not in [r["id"] for r in failed["runs"]]
    assert all(r["state"] == "failed" for r in failed["runs"])
    assert worker.run is not None
    one = _status_json(valkey_url, "--run", worker.run)
    assert [r["id"] for r in one["runs"]] == [worker.run]
    assert [s["state"] for s in one["runs"][0]["processor_states"]] == ["done"] * 3


@pytest.mark.stores
def test_status_tables(valkey_url: str, worker: Worker) -> None:
    assert worker.run is not None
    result = _datagraph("status", "--run", worker.run, env={"DATAGRAPH_REDIS_URL": valkey_url})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("PROCESSORS", "WORKERS", "RUNS", f"run {worker.run} (succeeded)"):
        assert heading in out
    line = next(x for x in out.splitlines() if x.strip().startswith("tw_numbers"))
    assert line.split()[:6] == ["tw_numbers", "tw_source", "tw_label", str(N), str(N), "0"]
    assert "tw_n: int" in out
    assert "PROCESSOR" in out and "BUSY" in out


def test_status_needs_a_store() -> None:
    result = _datagraph("status")
    assert result.returncode == 2
    assert "--redis-url" in result.stderr


def test_status_reports_an_unreachable_store() -> None:
    result = _datagraph(
        "status", "--redis-url", "redis://127.0.0.1:1/0", env={"DATAGRAPH_CONNECT_TIMEOUT": "0.5"}
    )
    assert result.returncode == 1
    assert "127.0.0.1:1" in result.stderr


def test_subcommands_register(capsys: pytest.CaptureFixture[str]) -> None:
    def arguments(parser: argparse.ArgumentParser) -> None:
        cli.add_store_option(parser)
        parser.add_argument("--times", type=int, default=1)

    @cli.command("echo-test", help="say hello", arguments=arguments)
    def echo(args: argparse.Namespace) -> int:
        print("hello " * args.times + (cli.store_url(args) or "-"))
        return 3

    try:
        assert cli.main(["echo-test", "--times", "2", "--redis-url", "redis://x:1/0"]) == 3
        assert capsys.readouterr().out == "hello hello redis://x:1/0\n"
        assert "echo-test" in cli.build_parser().format_help()
    finally:
        del cli.COMMANDS["echo-test"]


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "status" in capsys.readouterr().out

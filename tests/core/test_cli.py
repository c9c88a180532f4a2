"""The ``bizosaas`` command as a user runs it: a real subprocess each time."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BIZOSAAS = [sys.executable, "-m", "core.cli"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIZ_")}
    return env | {"BIZ_DATA_DIR": str(tmp_path / ".data"), **extra}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BIZOSAAS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    ports = {"api": free_port(), "temporal": free_port(), "ui": free_port(), "metrics": free_port()}
    args = [
        *BIZOSAAS, "dev", "--config", str(ROOT / "temporal-dev.yml"),
        "--api-port", str(ports["api"]),
        "--temporal-port", str(ports["temporal"]),
        "--ui-port", str(ports["ui"]),
    ]  # fmt: skip
    env = _env(tmp_path, BIZ_WORKER_METRICS_PORT=str(ports["metrics"]))
    process = subprocess.Popen(
        args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    yield process, ports
    if process.poll() is None:
        # Its children run in sessions of their own: a test that failed leaves them to us.
        for child in _descendants(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def test_dev_starts_everything_and_stops_cleanly(
    dev: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    process, ports = dev
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"http://127.0.0.1:{ports['api']}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "API never became healthy"
        time.sleep(0.2)
    assert httpx.get(f"http://127.0.0.1:{ports['ui']}/").status_code == 200
    # Secrets in a URL (an OAuth code, a signed storage grant) never reach the logs.
    callback = f"http://127.0.0.1:{ports['api']}/api/v1/connections/oauth/callback"
    assert httpx.get(callback, params={"state": "s", "code": "code-in-url"}).status_code == 400
    assert (
        httpx.get(f"http://127.0.0.1:{ports['api']}/api/v1/storage/grant-in-url").status_code >= 400
    )
    with socket.create_connection(("127.0.0.1", ports["temporal"]), timeout=2):
        pass
    # Temporal, the API, then the worker, which `dev` starts once it has seen the API healthy.
    _wait_for(lambda: _children_running(process.pid, "worker"), timeout=30)
    assert len(_descendants(process.pid)) >= 3
    # The worker serves its metrics (SDK worker metrics included once it polls).
    scraped = _wait_for_metrics(ports["metrics"], "temporal_worker_task_slots_available")
    assert "bizosaas_emails_total" in scraped

    # A worker that dies is restarted, with a line that says so; the rest stays up.
    [worker] = _children_running(process.pid, "worker")
    os.kill(worker, signal.SIGKILL)
    # The killed one may still show as running for a moment: wait for another.
    restarted = _wait_for(
        lambda: [p for p in _children_running(process.pid, "worker") if p != worker], timeout=30
    )
    assert restarted != [worker]
    assert process.poll() is None
    assert httpx.get(f"http://127.0.0.1:{ports['api']}/healthz").status_code == 200
    _wait_for_metrics(ports["metrics"], "temporal_worker_task_slots_available")
    children = _descendants(process.pid)

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "code-in-url" not in output
    assert "grant-in-url" not in output
    assert "the worker process exited (exit -9); restarting it in 1 s" in output
    assert f"restarted the worker process (pid {restarted[0]})" in output
    assert "API docs:" in output
    assert "Temporal UI:" in output
    assert "Traceback" not in output
    assert "Fatal Python error" not in output
    assert not [pid for pid in children if _alive(pid)]


def _children_running(pid: int, command: str) -> list[int]:
    """Descendants of ``pid`` running ``python -m core.cli <command>``."""
    found = []
    for child in _descendants(pid):
        try:
            argv = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"core.cli" in argv and command.encode() in argv and _alive(child):
            found.append(child)
    return found


def _wait_for(probe: Callable[[], list[int]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


def _wait_for_metrics(port: int, name: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            if name in text:
                return text
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{name} never appeared on the worker's metrics"
        time.sleep(0.2)


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(
            ["dev", "--config", str(ROOT / "temporal-dev.yml"), "--api-port", str(port),
             "--temporal-port", str(free_port()), "--ui-port", str(free_port())],
            _env(tmp_path), tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"bizosaas: API port 127.0.0.1:{port} is not available (Address already in use); "
        "choose another with --api-port or BIZ_API_PORT"
    ]


@pytest.mark.parametrize("url", ["::::", "mysql://u@h/db"])
def test_malformed_database_url_is_one_clear_line(tmp_path: Path, url: str) -> None:
    result = _run(["migrate"], _env(tmp_path, BIZ_DATABASE_URL=url), tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("bizosaas: BIZ_DATABASE_URL")


def test_unreachable_temporal_is_one_clear_line(tmp_path: Path) -> None:
    env = _env(tmp_path, BIZ_TEMPORAL_ADDRESS="127.0.0.1:1", BIZ_API_PORT=str(free_port()))
    result = _run(["api"], env, tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("bizosaas: cannot reach Temporal at 127.0.0.1:1")
    assert "BIZ_TEMPORAL_ADDRESS" in line


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    env = _env(tmp_path, BIZ_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    result = _run(["migrate"], env, tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("bizosaas: cannot migrate the database (set BIZ_DATABASE_URL)")


def test_create_admin_is_idempotent(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _run(["migrate"], env, tmp_path).returncode == 0
    weak = _run(["users", "create-admin", "--email", "a@example.com", "--password", "password1"],
                env, tmp_path)  # fmt: skip
    assert weak.returncode == 1
    assert weak.stderr.startswith("bizosaas: --password must be at least 12 characters long")
    args = [
        "users",
        "create-admin",
        "--email",
        "Root@Example.com",
        "--password",
        "kite-lemon-29-orbit",
    ]
    first, second = _run(args, env, tmp_path), _run(args, env, tmp_path)
    assert first.returncode == second.returncode == 0, first.stderr
    assert "created" in first.stdout
    assert "already exists" in second.stdout

"""Start-up: ``bizosaas dev`` to a healthy API, and the worker to its first poll (issue 16, P6).

Every figure is wall time from spawning the process, on the venv this runs from (a warm venv:
installed, bytecode compiled). Baselines measured in the same run:

- the bare interpreter importing the Temporal SDK (``python -c "import temporalio.client,
  temporalio.worker"``) for ``bizosaas dev``;
- a sandboxed worker with one trivial workflow (``bench.idle_workflows``) for ``bizosaas worker``.

``bizosaas dev`` runs in a scratch directory (its own SQLite database, Temporal database and
secrets) on free ports: once on an empty data directory (migrations, keys and the Temporal
database created) and then again on the same directory, as a developer restarts it. Healthy
means ``GET /healthz`` answers 200: the database and Temporal both checked by the API.

``python -m bench.startup [runs]`` (default 3 runs of each).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.timing import report
from core.devserver import DevServerConfig, temporal_binary

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET = 5.0  # issue 16, P6: warm venv to healthy
SDK_IMPORT = "import temporalio.client, temporalio.worker"
WORKER_READY = "worker polling"  # both workers log this once they poll


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Watched:
    """A process in its own session whose output is read line by line and time-stamped."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(  # noqa: S603
            args,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append((time.perf_counter() - self.started, raw.decode(errors="replace")))

    def seen(self, marker: str) -> float | None:
        return next((at for at, line in list(self.lines) if marker in line), None)

    def wait_for(self, marker: str, timeout: float = 60.0) -> float:
        """Seconds from spawn to the first output line holding ``marker``."""
        deadline = time.perf_counter() + timeout
        while (at := self.seen(marker)) is None:
            self._check_alive(deadline, marker)
            time.sleep(0.01)
        return at

    def wait_healthy(self, url: str, timeout: float = 60.0) -> float:
        """Seconds from spawn to the first 200 from ``url``."""
        deadline = time.perf_counter() + timeout
        while True:
            self._check_alive(deadline, url)
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)

    def _check_alive(self, deadline: float, waiting_for: str) -> None:
        if self.process.poll() is not None or time.perf_counter() > deadline:
            output = "".join(line for _, line in self.lines[-30:])
            self.stop()
            raise RuntimeError(f"gave up waiting for {waiting_for!r}; last output:\n{output}")

    def stop(self) -> None:
        """SIGTERM to the process group (``bizosaas dev`` stops its own children), then wait."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout=5)


def clean_env(scratch: Path) -> dict[str, str]:
    """The caller's environment without BIZ_ settings, on a scratch data directory.

    Bytecode is cached (under the scratch directory, not in the tree) as on a developer's warm
    venv, even when the caller sets PYTHONDONTWRITEBYTECODE.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BIZ_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    return env | {
        "BIZ_DATA_DIR": str(scratch / "data"),
        "BIZ_WORKER_METRICS_PORT": "0",
        "PYTHONPYCACHEPREFIX": str(scratch / "pycache"),
    }


def interpreter(code: str, runs: int, env: dict[str, str]) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)  # noqa: S603
        seconds.append(time.perf_counter() - started)
    return seconds


@dataclass
class DevStart:
    """Seconds from spawning ``bizosaas dev`` to each milestone."""

    temporal: float  # the dev server's banner: CLI import, settings, migrations, server start
    api_serving: float  # uvicorn listening
    healthy: float  # GET /healthz answered 200
    polling: float  # the worker polls its task queue


def dev_start(scratch: Path) -> DevStart:
    """Start ``bizosaas dev`` until the API is healthy and the worker polls; stop it."""
    api_port = free_port()
    args = [
        str(BIN / "bizosaas"), "dev",
        "--config", str(REPO / "temporal-dev.yml"),
        "--api-port", str(api_port),
        "--temporal-port", str(free_port()),
        "--ui-port", str(free_port()),
    ]  # fmt: skip
    dev = Watched(args, clean_env(scratch), scratch)
    try:
        healthy = dev.wait_healthy(f"http://127.0.0.1:{api_port}/healthz")
        return DevStart(
            dev.wait_for("Temporal Server:"),
            dev.wait_for("Uvicorn running"),
            healthy,
            dev.wait_for(WORKER_READY),
        )
    finally:
        dev.stop()


def worker_starts(scratch: Path, runs: int) -> tuple[list[float], list[float]]:
    """Seconds to the first poll: the minimal sandboxed worker, then ``bizosaas worker``."""
    config = DevServerConfig(port=free_port(), db_filename=scratch / "worker-bench.db")
    temporal_args = [*config.command(temporal_binary()), "--headless"]
    temporal = Watched(temporal_args, clean_env(scratch), scratch)
    address = f"127.0.0.1:{config.port}"
    env = clean_env(scratch) | {"BIZ_TEMPORAL_ADDRESS": address}
    try:
        wait_for_port(config.port)
        minimal = [sys.executable, "-m", "bench.idle_workflows", address, "bench-startup"]
        bizosaas = [str(BIN / "bizosaas"), "worker"]
        samples: tuple[list[float], list[float]] = ([], [])
        for seconds, args in zip(samples, (minimal, bizosaas), strict=True):
            for _ in range(runs + 1):  # the first start registers search attributes: not kept
                worker = Watched(args, env, REPO)
                try:
                    seconds.append(worker.wait_for(WORKER_READY))
                finally:
                    worker.stop()
            del seconds[0]
        return samples
    finally:
        temporal.stop()


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def median_s(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s"


def run(runs: int) -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bizosaas-startup-") as directory:
        scratch = Path(directory)
        env = clean_env(scratch)
        # Fill the bytecode cache first.
        interpreter("import api.app, workers.main, core.migrate", 1, env)
        bare = interpreter("pass", runs, env)
        sdk = interpreter(SDK_IMPORT, runs, env)
        imports = {
            what: interpreter(f"import {what}", runs, env)
            for what in ("core.cli", "api.app", "workers.main")
        }
        first = dev_start(scratch)
        warm = [dev_start(scratch) for _ in range(runs)]
        minimal, worker = worker_starts(scratch, runs)
    healthy = [w.healthy for w in warm]

    print(
        f"start-up on a warm venv, {runs} runs each (medians; ratios against the baseline); "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(
        f"bare interpreter {statistics.median(bare) * 1e3:,.0f} ms; importing the Temporal SDK "
        f"{statistics.median(sdk) * 1e3:,.0f} ms; importing "
        + ", ".join(f"{what} {median_s(seconds)}" for what, seconds in imports.items())
    )
    print(
        f"bizosaas dev, empty data directory: Temporal up {first.temporal:.2f} s, API serving "
        f"{first.api_serving:.2f} s, healthy {first.healthy:.2f} s, worker polling "
        f"{first.polling:.2f} s"
    )
    print(
        f"bizosaas dev, again on the same directory: Temporal up "
        f"{median_s([w.temporal for w in warm])}, API serving "
        f"{median_s([w.api_serving for w in warm])}, healthy {median_s(healthy)}, worker polling "
        f"{median_s([w.polling for w in warm])}"
    )
    report("bizosaas dev to healthy (SDK import vs dev)", sdk, healthy)
    report("bizosaas dev to worker polling (SDK import vs dev)", sdk, [w.polling for w in warm])
    report("worker to first poll (one-workflow worker vs bizosaas worker)", minimal, worker)
    worst = max(healthy)
    verdict = "within" if worst <= TARGET else "OVER"
    print(f"slowest warm start to healthy {worst:.2f} s: {verdict} the {TARGET:.0f} s target")


async def main(runs: int = 3) -> None:
    await asyncio.to_thread(run, runs)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))

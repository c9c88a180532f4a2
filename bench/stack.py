"""``bizosaas dev`` for the benchmarks: started in a scratch directory on free ports, its
processes found, pinned and their CPU time read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import Client

from bench.startup import BIN, REPO, WORKER_READY, Watched, clean_env, free_port
from core.heap import freeze_startup_objects
from core.settings import Settings
from core.temporal import data_converter, load_codec_keys

# The load comes from one address: sign-up and sign-in limits that would refuse it.
UNLIMITED = {
    "BIZ_REGISTER_RATE_PER_IP": "1000000/hour",
    "BIZ_REGISTER_RATE_GLOBAL": "1000000/hour",
    "BIZ_LOGIN_RATE_PER_IP": "1000000/minute",
}
# Ids and numbers in log messages, so that lines saying the same thing are counted together.
_VARYING = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+(\.\d+)?")


class Stack:
    """``bizosaas dev`` in a scratch directory, and the CPU time of its processes."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.api_port, self.temporal_port = free_port(), free_port()
        env = clean_env(scratch) | UNLIMITED
        env.pop("PYTHONPYCACHEPREFIX")  # the tree's bytecode cache, as `make run` uses it
        args = [
            str(BIN / "bizosaas"), "dev",
            "--config", str(REPO / "temporal-dev.yml"),
            "--api-port", str(self.api_port),
            "--temporal-port", str(self.temporal_port),
            "--ui-port", str(free_port()),
        ]  # fmt: skip
        self.dev = Watched(args, env, scratch)
        self.pids: dict[str, int] = {}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def settings(self) -> Settings:
        """The settings the stack's processes run on (its data directory: keys, secrets)."""
        return Settings(_env_file=None, data_dir=self.scratch / "data")

    async def raw_client(self) -> Client:
        """A plain Temporal client of the stack's dev server, with the API's data converter
        (encrypted payloads): the raw SDK the benchmarks compare the API against."""
        keys = load_codec_keys(self.settings)
        return await Client.connect(
            f"127.0.0.1:{self.temporal_port}", data_converter=data_converter(keys)
        )

    def wait_ready(self) -> None:
        self.dev.wait_healthy(f"{self.api_url}/healthz", timeout=120)
        self.dev.wait_for(WORKER_READY, timeout=120)
        children = _children(self.dev.process.pid)
        for name, marker in (("api", "core.cli api"), ("worker", "core.cli worker")):
            self.pids[name] = next(pid for pid, cmd in children.items() if marker in cmd)
        self.pids["temporal"] = next(pid for pid, cmd in children.items() if "start-dev" in cmd)

    def give_api_its_core(self) -> None:
        """The API alone on the last core; the worker, Temporal and this process (the clients)
        on the others."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--api-core needs two cores or more")
        api, rest = {cpus[-1]}, set(cpus[:-1])
        for name, pid in self.pids.items():
            _pin(pid, api if name == "api" else rest)
        _pin(os.getpid(), rest)

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each process, this one as ``bench``."""
        mine = os.times()
        return {"bench": mine.user + mine.system} | {
            name: _cpu_seconds(pid) for name, pid in self.pids.items()
        }

    def stop(self) -> None:
        self.dev.stop()

    def complaints(self) -> list[str]:
        """What the stack said went wrong: restarts (``bizosaas dev`` restarts a dead API or
        worker and says so), tracebacks, and warnings and errors counted by logger and
        message (the JSON log lines of the API and the worker)."""
        said: Counter[str] = Counter()
        for _, line in self.dev.lines:
            try:
                record = json.loads(line)
            except ValueError:
                if line.startswith("bizosaas dev:") or "Traceback" in line:
                    said[line.strip()[:160]] += 1
                continue
            if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR"):
                message = _VARYING.sub("#", str(record.get("message", "")))[:120]
                said[f"{record['level']} {record.get('logger')}: {message}"] += 1
        return [f"{count} x {what}" for what, count in said.most_common(15)]


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads started later inherit it)."""
    for thread in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(thread.name), cpus)


def _children(parent: int) -> dict[int, str]:
    """Direct children of ``parent``: pid → command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def running(prefix: str) -> AsyncIterator[Stack]:
    """A healthy stack in a scratch directory; stopped after the block, and what it said went
    wrong printed.

    This process measures: its start-up objects are frozen, so that its own full collections
    (~100 ms at its size) do not land on whichever call they fall in, as the API's and the
    worker's would not.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        stack = Stack(Path(directory))
        try:
            await asyncio.to_thread(stack.wait_ready)
            freeze_startup_objects()
            yield stack
        finally:
            stack.stop()
            for line in stack.complaints():
                print(f"during the run: {line}")

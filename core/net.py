"""Small socket checks used at process start."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from core.errors import Fatal


def ensure_port_free(host: str, port: int, *, what: str, change_with: str) -> None:
    """Raise :class:`Fatal` naming the setting when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise Fatal(
                f"{what} port {host}:{port} is not available ({exc.strerror}); "
                f"choose another with {change_with}"
            ) from None


def wait_for_port(host: str, port: int, *, timeout: float, alive: Callable[[], bool]) -> None:
    """Wait until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise Fatal(f"the process meant to listen on {host}:{port} exited")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise Fatal(f"nothing listens on {host}:{port} after {timeout:.0f} s")

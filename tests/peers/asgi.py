"""Serve a vendor peer (any ASGI app) with uvicorn on a free loopback port, in a thread.

A thread of its own, not a task on the test's loop: a test that blocks its loop (a synchronous
client, a slow assertion) must not stall the peer it is talking to. The server answers over real
HTTP, so the connectors under test run exactly as they do against the vendor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.conftest import free_port


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` until the block ends; yields its base URL (``http://127.0.0.1:PORT``)."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        # Only plain HTTP/1.1: the peers need no websockets or lifespan, and loading neither
        # keeps their libraries' import-time warnings out of this warnings-as-errors suite.
        http="h11",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"peer-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the peer did not start on 127.0.0.1:{port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class Swappable:
    """An ASGI app that serves whichever app it currently holds.

    One server per test session, a fresh peer per test: starting and stopping uvicorn costs a
    few hundred milliseconds, swapping the app nothing.
    """

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            raise RuntimeError("no peer is mounted")
        await self.app(scope, receive, send)

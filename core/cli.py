"""The ``bizosaas`` command: dev, api, worker, migrate, users create-admin."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from core.errors import Fatal
from core.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in first["loc"])
        if not message.startswith("BIZ_"):
            message = f"BIZ_{field.upper()}: {message}"
        raise Fatal(message) from None


def _dev(args: argparse.Namespace) -> int:
    from core import devserver, migrate

    settings = _settings()
    config = devserver.DevServerConfig.load(Path(args.config))
    if args.temporal_port is not None:
        config.port = args.temporal_port
    if args.ui_port is not None:
        config.ui_port = args.ui_port
    _migrate_database(settings, migrate.upgrade_sync)
    ports = devserver.DevPorts(
        settings.api_host,
        args.api_port or settings.api_port,
        settings.worker_metrics_host,
        settings.worker_metrics_port,
    )
    return devserver.run(config, ports, dict(os.environ))


def _migrate_database(settings: Settings, upgrade: Callable[[str], None]) -> None:
    try:
        upgrade(settings.database_url)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise Fatal(
            f"cannot migrate the database (set BIZ_DATABASE_URL): {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [repr(exc)])[0]


def _migrate(_: argparse.Namespace) -> int:
    from core import migrate

    _migrate_database(_settings(), migrate.upgrade_sync)
    print("database is at the latest migration")
    return 0


def _worker(_: argparse.Namespace) -> int:
    from core import logging as biz_logging
    from core import telemetry
    from workers import main as worker_main

    settings = _settings()
    biz_logging.configure(settings.log_level, settings.log_format)
    telemetry.configure_tracing(settings, "bizosaas-worker")
    asyncio.run(worker_main.run(settings))
    return 0


def _api(_: argparse.Namespace) -> int:
    from uvicorn.loops.auto import auto_loop_factory

    from api.server import serve
    from core import telemetry

    settings = _settings()
    telemetry.configure_tracing(settings, "bizosaas-api")
    # uvloop where installed (uvicorn's own choice): less CPU per request than asyncio's loop.
    with asyncio.Runner(loop_factory=auto_loop_factory()) as runner:
        runner.run(serve(settings))
    return 0


# Commands whose process holds a Temporal client (the SDK's threads outlive the event loop).
_HOLD_TEMPORAL_CLIENTS = frozenset({"api", "worker"})


def _create_admin(args: argparse.Namespace) -> int:
    from core import password_policy
    from core.db import create_engine, session_factory, transaction
    from core.identity import ensure_super_admin

    if weaknesses := password_policy.problems(args.password, email=args.email):
        raise Fatal(f"--password {'; '.join(weaknesses)}")

    async def run() -> bool:
        engine = create_engine(_settings().database_url)
        try:
            async with transaction(session_factory(engine)) as session:
                _, created = await ensure_super_admin(session, args.email, args.password)
            return created
        finally:
            await engine.dispose()

    try:
        created = asyncio.run(run())
    except (OperationalError, DBAPIError, OSError) as exc:
        raise Fatal(f"cannot reach the database (BIZ_DATABASE_URL): {_first_line(exc)}") from None
    print(f"super_admin {args.email} {'created' if created else 'already exists'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bizosaas", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="Temporal dev server + worker + API on embedded defaults")
    dev.add_argument("--config", default="temporal-dev.yml", help="dev server settings file")
    dev.add_argument("--api-port", type=int, help="API port (default BIZ_API_PORT or 8000)")
    dev.add_argument("--temporal-port", type=int, help="Temporal frontend port (default 7233)")
    dev.add_argument("--ui-port", type=int, help="Temporal UI port (default 8233)")
    dev.set_defaults(func=_dev)

    commands.add_parser("api", help="serve the HTTP API").set_defaults(func=_api)
    commands.add_parser("worker", help="run the Temporal worker").set_defaults(func=_worker)
    commands.add_parser("migrate", help="upgrade the database").set_defaults(func=_migrate)

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", required=True
    )
    admin = users.add_parser("create-admin", help="create a super_admin (idempotent)")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", required=True)
    admin.set_defaults(func=_create_admin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bizosaas`` console script."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except Fatal as exc:
        print(f"bizosaas: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    if args.command in _HOLD_TEMPORAL_CLIENTS:
        from core.temporal import exit_without_teardown

        exit_without_teardown(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

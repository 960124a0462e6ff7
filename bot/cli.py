"""The ``teambot`` command: parses arguments, builds Settings once, configures logging once, runs the app."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
from importlib.metadata import version
from pathlib import Path

from bot import runtime, texts
from bot.check import CheckResult, check_database, check_model
from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.guards import RedactingFilter
from bot.logcontext import TurnFilter
from bot.runtime import open_core
from bot.store import copy_sqlite_to_postgres, describe_db, open_store

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teambot", description="An LLM in your team chat.")
    parser.add_argument("--version", action="version", version=f"teambot {version('teambot')}")
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="settings file (default: ./.env)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="run every platform adapter whose credentials are set")
    commands.add_parser("check", help="check the settings, the model endpoint and the platform tokens")
    console = commands.add_parser("console", help="chat with the bot in this terminal")
    console.add_argument("--name", default=None, help="your name in the conversation (default: your login)")
    db = commands.add_parser("db", help="database upkeep: migrate the schema, copy SQLite history into PostgreSQL")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_commands.add_parser("migrate", help="bring the schema of TEAMBOT_DB up to date")
    copy = db_commands.add_parser("copy", help="copy a SQLite file's history into the PostgreSQL of TEAMBOT_DB")
    copy.add_argument("--from", dest="source", required=True, type=Path, help="the SQLite file to copy")
    copy.add_argument("--to", dest="target", default=None, help="a PostgreSQL URL (default: TEAMBOT_DB)")
    return parser


def configure_logging(
    level: str, *, secrets: tuple[str, ...] = (), quiet: bool = False, log_file: Path | None = None
) -> None:
    """One handler for everything: ``log_file`` when given (the console keeps its log out of the chat), else stderr,
    where a ``quiet`` command shows only problems unless DEBUG is asked for. Raises OSError when ``log_file``
    cannot be opened for appending."""
    handler: logging.Handler
    handler = logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(turn)s] %(message)s"))
    handler.addFilter(TurnFilter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if log_file or not quiet or level == "DEBUG" else "WARNING")
    # httpx logs every request URL at INFO; ours carry no secrets, but they are noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _console_logging(settings: Settings) -> str:
    """Configure logging for ``teambot console`` and say where the log goes, for the banner.

    A log line printed between the question and the answer reads like part of the chat, so the console logs to
    a file (TEAMBOT_LOG_FILE, default beside the database); TEAMBOT_LOG_LEVEL=DEBUG asks for it on stderr.
    """
    secrets = settings.secret_values()
    if settings.log_level != "DEBUG":
        path = settings.console_log_file()
        try:
            configure_logging(settings.log_level, secrets=secrets, log_file=path)
            return str(path)
        except OSError as exc:
            if settings.log_file is not None:
                raise ConfigError(
                    f"TEAMBOT_LOG_FILE names {str(path)!r}, which cannot be written: {exc.strerror}"
                ) from None
            # The default place sits beside the database: when that folder is unusable, start-up says so about
            # TEAMBOT_DB in a moment, and that line must reach the terminal.
    configure_logging(settings.log_level, secrets=secrets, quiet=True)
    return texts.CONSOLE_LOG_STDERR


def _console(settings: Settings, name: str) -> None:
    from adapters.console import run_console

    log = _console_logging(settings)
    # describe_db, as everywhere a database is named: a PostgreSQL URL's password must not reach the terminal.
    banner = texts.CONSOLE_BANNER.format(
        model=settings.openai_model,
        base_url=settings.openai_base_url,
        key="console:local",
        db=describe_db(settings.db),
        log=log,
    )
    run_console(
        open_core(settings),
        lambda core: runtime.commands(settings, core),
        user_name=name,
        banner=banner,
        log=log,
        history=settings.beside_db(".history"),
    )


async def _run(settings: Settings) -> None:
    from adapters import registry
    from adapters.http_server import HttpServer, add_ops_routes

    factories = registry.configured(settings)
    if not factories:
        raise ConfigError(texts.RUN_NOTHING_CONFIGURED)
    # SIGTERM (docker stop, systemd) and Ctrl-C stop taking new messages, let replies in progress finish up to
    # TEAMBOT_DRAIN_SECONDS, then close the adapters and the database cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_core(settings) as core:
        adapters = [factory(core, settings) for factory in factories]

        async def readiness() -> dict[str, bool]:
            return {"database": await core.store.ping()} | {a.name: a.connected for a in adapters}

        public = HttpServer(settings.http_host, settings.http_port)
        for adapter in adapters:
            adapter.mount(public.app)
        servers = [public]
        ops_bind = settings.ops_bind()
        if ops_bind is None:
            add_ops_routes(public.app, core.metrics, readiness)
        else:
            # Readiness and metrics on a bind of their own, kept off the port Slack (and so the internet) reaches.
            ops = HttpServer(*ops_bind)
            add_ops_routes(ops.app, core.metrics, readiness)
            servers = [ops, public] if public.has_routes else [ops]
        started: list[registry.Adapter] = []
        running: list[HttpServer] = []
        try:
            for server in servers:
                await server.start()
                running.append(server)
            for adapter in adapters:
                await adapter.start()
                started.append(adapter)
            log.info("teambot is running: %s", ", ".join(a.name for a in adapters))
            await stop.wait()
            log.info("stopping: letting replies in progress finish (up to %.0f s)", settings.drain_seconds)
        finally:
            for adapter in started:
                await adapter.stop(settings.drain_seconds)
            for server in running:
                await server.stop()
    log.info("stopped")


async def _check(settings: Settings) -> bool:
    from adapters import registry

    results = [CheckResult("configuration", True, "every setting is valid")]
    try:
        settings.require_model_access()
        results += await check_model(settings)
        results.append(await check_database(settings))
    except ConfigError as exc:
        results.append(CheckResult("configuration", False, str(exc)))
    results += await registry.check(settings)
    for result in results:
        print(result.line(), flush=True)
    return all(r.ok for r in results)


async def _db(settings: Settings, args: argparse.Namespace) -> None:
    if args.db_command == "migrate":
        store = await open_store(settings.db, pool_size=1)
        try:
            version = await store.schema_version()
        finally:
            await store.close()
        print(f"teambot: database {describe_db(settings.db)} is at schema version {version}", flush=True)
        return
    target = args.target or settings.db
    counts = await copy_sqlite_to_postgres(str(args.source), target)
    summary = ", ".join(f"{count:,} {table}" for table, count in counts.items())
    print(f"teambot: copied {summary} from {args.source} to {describe_db(target)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.env_file)
        if args.command == "console":
            _console(settings, args.name or _login_name())
            return
        configure_logging(settings.log_level, secrets=settings.secret_values(), quiet=args.command != "run")
        if args.command == "check":
            raise SystemExit(0 if asyncio.run(_check(settings)) else 1)
        elif args.command == "db":
            if args.db_command == "copy" and not args.source.is_file():
                raise ConfigError(f"db copy: {str(args.source)!r} is not a SQLite file")
            asyncio.run(_db(settings, args))
        else:
            asyncio.run(_run(settings))
    except ConfigError as exc:
        if args.command == "check":
            print(CheckResult("configuration", False, str(exc)).line())
        print(f"teambot: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"

"""The ``teambot`` command: parses arguments, builds Settings once, configures logging once, runs the app."""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import logging
import os
import signal
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot import eventloop, runtime, texts
from bot.check import CheckResult, check_database, check_mcp, check_model
from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.guards import RedactingFilter
from bot.logcontext import TurnFilter
from bot.runtime import open_core
from bot.store import copy_sqlite_to_postgres, describe_db, open_store

if TYPE_CHECKING:
    from adapters import registry

log = logging.getLogger(__name__)


_ENV_FILE_HELP = "read settings from PATH (default: ./.env, if present); may come before or after the command"

_HELP = {
    "run": (
        "run every platform adapter whose credentials are set",
        "Start the Slack and/or Discord adapters whose credentials are set, with /healthz, /readyz and /metrics "
        "on the HTTP port, until SIGTERM or Ctrl-C (replies in progress may finish first).",
        "SLACK_BOT_TOKEN with SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode), DISCORD_TOKEN; "
        "OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL; TEAMBOT_DB; TEAMBOT_HTTP_HOST, TEAMBOT_HTTP_PORT, "
        "TEAMBOT_OPS_HOST, TEAMBOT_OPS_PORT; TEAMBOT_DRAIN_SECONDS; TEAMBOT_LOG_LEVEL; and every other setting in "
        ".env.example (limits, budgets, access lists).",
    ),
    "check": (
        "check the settings, the model endpoint, the database and the platform tokens",
        "Validate every setting, ask the model endpoint (and the fallback) for the model, open the database "
        "without changing it, try each configured platform token, and start each MCP server once. One PASS/FAIL "
        "line each; exit code 0 when all pass, 1 when one fails, 2 when a setting is invalid.",
        "OPENAI_API_KEY or OPENAI_API_KEY_FILE, OPENAI_BASE_URL, OPENAI_MODEL; TEAMBOT_FALLBACK_BASE_URL, "
        "TEAMBOT_FALLBACK_MODEL, TEAMBOT_FALLBACK_API_KEY; TEAMBOT_DB; SLACK_BOT_TOKEN, SLACK_APP_TOKEN, "
        "SLACK_SIGNING_SECRET, DISCORD_TOKEN; TEAMBOT_MCP_CONFIG; and validates every other setting.",
    ),
    "console": (
        "chat with the bot in this terminal",
        "Chat with the bot in this terminal, no Slack or Discord needed. The conversation is 'console:local' in "
        "TEAMBOT_DB, so it is still there next time. /reset, /usage, /system, /model; /exit or end of input quits.",
        "OPENAI_API_KEY or OPENAI_API_KEY_FILE, OPENAI_BASE_URL, OPENAI_MODEL; TEAMBOT_DB; "
        "TEAMBOT_SYSTEM_PROMPT, TEAMBOT_HISTORY_TOKENS, TEAMBOT_MODELS; TEAMBOT_LOG_LEVEL; the model, limit and "
        "budget settings in .env.example.",
    ),
    "db": (
        "database upkeep: migrate the schema, copy SQLite history into PostgreSQL",
        "Database upkeep: 'migrate' brings the schema up to date, 'copy' moves a SQLite history into PostgreSQL.",
        "TEAMBOT_DB (a SQLite file or a postgresql:// URL).",
    ),
    "migrate": (
        "bring the schema of TEAMBOT_DB up to date",
        "Create the database of TEAMBOT_DB, or bring its schema up to date, and print the schema version.",
        "TEAMBOT_DB.",
    ),
    "copy": (
        "copy a SQLite file's history into the PostgreSQL of TEAMBOT_DB",
        "Copy the history of a SQLite file into a PostgreSQL database (TEAMBOT_DB unless --to is given).",
        "TEAMBOT_DB (the target, unless --to is given).",
    ),
}


def _subcommand(commands: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` says what it does and which settings it reads."""
    summary, description, settings = _HELP[name]
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 78),
        epilog="settings read (environment or --env-file):\n" + textwrap.fill(settings, 78),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # SUPPRESS: given after the command it overrides the one before it; absent, it leaves that one alone.
    parser.add_argument("--env-file", type=Path, default=argparse.SUPPRESS, metavar="PATH", help=_ENV_FILE_HELP)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teambot",
        description="An LLM in your team chat. Settings come from the environment and ./.env (see .env.example).",
        epilog="'teambot COMMAND --help' says what a command does and the settings it reads.",
    )
    parser.add_argument("--version", action="version", version=f"teambot {version('teambot')}")
    parser.add_argument("--env-file", type=Path, default=None, metavar="PATH", help=_ENV_FILE_HELP)
    # Whose help `teambot` or `teambot db` alone prints: the innermost parser given sets it last.
    parser.set_defaults(help_of=parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _subcommand(commands, "run")
    _subcommand(commands, "check")
    console = _subcommand(commands, "console")
    console.add_argument("--name", default=None, help="your name in the conversation (default: your login)")
    db = _subcommand(commands, "db")
    db.set_defaults(help_of=db)
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    _subcommand(db_commands, "migrate")
    copy = _subcommand(db_commands, "copy")
    copy.add_argument("--from", dest="source", required=True, type=Path, help="the SQLite file to copy")
    copy.add_argument("--to", dest="target", default=None, help="a PostgreSQL URL (default: TEAMBOT_DB)")
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; a command left out prints the help of the level it is missing from (exit code 2)."""
    args = _parser().parse_args(argv)
    if args.command is None or (args.command == "db" and args.db_command is None):
        args.help_of.print_help()
        raise SystemExit(2)
    return args


def configure_logging(
    level: str, *, secrets: tuple[str, ...] = (), quiet: bool = False, log_file: Path | None = None
) -> None:
    """One handler for everything: ``log_file`` when given (the console keeps its log out of the chat), else stderr,
    where a ``quiet`` command shows only problems unless DEBUG is asked for. Raises OSError when ``log_file``
    cannot be opened for appending."""
    handler: logging.Handler
    if log_file is not None:
        _check_writable(log_file)
        # Opened at the first line logged: a command that stops at once (a bad database) leaves no empty file.
        handler = logging.FileHandler(log_file, encoding="utf-8", delay=True)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(turn)s] %(message)s"))
    handler.addFilter(TurnFilter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if log_file or not quiet or level == "DEBUG" else "WARNING")
    # httpx logs every request URL at INFO; ours carry no secrets, but they are noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The MCP SDK's httpx2 does the same with an MCP server's URL, whose query may hold a key.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    silence_library_noise()


def _check_writable(path: Path) -> None:
    """Raise the OSError opening ``path`` for appending would raise, without creating it."""
    if path.exists():
        with path.open("a", encoding="utf-8"):
            return
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


_BOLT_TOKEN_UNUSED = ("As you gave `client` as well, `token` will be unused",)
#: Logger name -> the starts of the messages dropped from it. Bolt logs through the logger teambot gives it
#: ("slack_bolt") or, given none, its own ("slack_bolt.AsyncApp").
_LIBRARY_NOISE: dict[str, tuple[str, ...]] = {
    "slack_bolt": _BOLT_TOKEN_UNUSED,
    "slack_bolt.AsyncApp": _BOLT_TOKEN_UNUSED,
    "discord.client": (
        "PyNaCl is not installed, voice will NOT be supported",
        "davey is not installed, voice will NOT be supported",
    ),
}


class LibraryNoise(logging.Filter):
    """Drops the warnings a library logs on every start about a choice teambot made on purpose.

    Matched by logger and message start, so every other record of those loggers still shows:
    slack_bolt reads SLACK_BOT_TOKEN from the environment although teambot hands it a ready client, and
    discord.py warns that voice needs PyNaCl and davey, which a text bot never installs.
    """

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.getMessage().startswith(self.prefixes))


def silence_library_noise() -> None:
    """Attach :class:`LibraryNoise` to the loggers that emit it (once, however often logging is configured).

    On the loggers, not on a handler: whatever handlers logging ends up with (stderr, a log file), the noise
    reaches none of them, and the level of every logger stays as it was.
    """
    for name, prefixes in _LIBRARY_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, LibraryNoise) for f in logger.filters):
            logger.addFilter(LibraryNoise(prefixes))


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
        running: list[HttpServer] = []
        try:
            for server in servers:
                await server.start()
                running.append(server)
            up = await _start_adapters(adapters, stop)
            if not stop.is_set():
                log.info("teambot is running: %s", ", ".join(a.name for a in up) or "no platform connected")
                await stop.wait()
            log.info("stopping: letting replies in progress finish (up to %.0f s)", settings.drain_seconds)
        finally:
            # Every adapter, whatever state it got to (connecting, retrying, connected, refused): each one's stop
            # copes with a start that never finished.
            for adapter in adapters:
                await adapter.stop(settings.drain_seconds)
            for server in running:
                await server.stop()
    log.info("stopped")


async def _start_adapters(adapters: list[registry.Adapter], stop: asyncio.Event) -> list[registry.Adapter]:
    """Start every adapter at once; return those that connected, once each has connected or failed, or at once
    when told to stop (a start still trying to reach its platform is then cancelled).

    A start keeps trying while its platform cannot be reached, so it is never awaited on its own: SIGTERM and
    Ctrl-C must stop the bot in every state. An adapter whose platform refuses its token stays down (its start
    raises ConfigError, logged here in its one line); the others, ``/healthz`` and ``/readyz`` (which names the
    adapter that is down) keep serving.
    """
    starting: dict[asyncio.Future[Any], registry.Adapter] = {
        asyncio.create_task(a.start(), name=f"teambot-start-{a.name}"): a for a in adapters
    }
    stopping: asyncio.Future[Any] = asyncio.create_task(stop.wait())
    up: list[registry.Adapter] = []
    try:
        pending = set(starting)
        while pending:
            done, _ = await asyncio.wait(pending | {stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                break
            for task in done:
                pending.discard(task)
                adapter = starting[task]
                error = task.exception()
                if error is None:
                    up.append(adapter)
                elif isinstance(error, ConfigError):
                    log.error("%s", error)
                else:
                    log.error("the %s adapter could not start", adapter.name, exc_info=error)
    finally:
        stopping.cancel()
        for task in starting:
            task.cancel()
        await asyncio.gather(stopping, *starting, return_exceptions=True)
    return up


async def _check(settings: Settings) -> bool:
    """One line per piece, printed as it is known; the same validation as start-up, and nothing written."""
    from adapters import registry

    failures: list[CheckResult] = []
    model_usable = True
    try:
        settings.require_model_access()
    except ConfigError as exc:
        failures.append(CheckResult("configuration", False, str(exc)))
        model_usable = False
    try:
        registry.configured(settings)
    except ConfigError as exc:
        failures.append(CheckResult("configuration", False, str(exc)))
    results = failures or [CheckResult("configuration", True, "every setting is valid")]
    _print(results)
    # A missing key stops the model check only: the database and the platforms are still worth knowing about.
    if model_usable:
        results += _print(await check_model(settings))
    results += _print([await check_database(settings)])
    results += _print(await registry.check(settings))
    results += _print(await check_mcp(settings))
    return all(r.ok for r in results)


def _print(results: list[CheckResult]) -> list[CheckResult]:
    for result in results:
        print(result.line(), flush=True)
    return results


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
    args = _parse(argv)
    try:
        named = args.env_file is not None
        settings = load_settings(args.env_file if named else Path(".env"), must_exist=named, warn=_warn)
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
            eventloop.tune_gc()
            eventloop.run(_run(settings), use_uvloop=settings.uvloop)
    except ConfigError as exc:
        # Once: check reports on stdout, line by line like everything else it finds; the others on stderr.
        if args.command == "check":
            print(CheckResult("configuration", False, str(exc)).line(), flush=True)
        else:
            print(f"teambot: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _warn(message: str) -> None:
    # Logging is not configured yet (it needs the settings): a warning about the settings goes straight to
    # stderr, in the same form as the one-line errors, so it is seen in the console too.
    print(f"teambot: warning: {message}", file=sys.stderr, flush=True)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"

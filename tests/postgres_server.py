"""A throwaway PostgreSQL server on loopback for the tests: initdb into a temporary folder, start, stop, delete.

Debian's package puts the server in /usr/lib/postgresql/<version>/bin, off PATH. PostgreSQL refuses to run as
root, so under root (CI) the server runs as the ``postgres`` user the package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Set by .ci/run: there a server must start, and a PostgreSQL test that cannot run fails instead of skipping.
REQUIRE_ENV = "REQUIRE_POSTGRES"


class Unavailable(Exception):
    """No PostgreSQL server can be started on this machine; the message says why."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def _binaries() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return Path(versions[-1]).parent
    raise Unavailable("PostgreSQL server binaries not found (install Debian's 'postgresql' package)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runner() -> tuple[list[str], int | None]:
    """The command prefix that runs the server as a non-root user, and that user's uid to own its files."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root and there is no 'postgres' user to run the server as") from None
    return ["runuser", "-u", "postgres", "--"], account.pw_uid


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    bin_dir = _binaries()
    prefix, uid = _runner()
    # Not under pytest's tmp folder: that one is private to root, and the server runs as another user.
    base = Path(tempfile.mkdtemp(prefix="teambot-pg-"))
    base.chmod(0o755)
    data, sockets, log = base / "data", base / "sockets", base / "server.log"
    sockets.mkdir()
    log.touch()
    if uid is not None:
        for path in (base, sockets, log):
            os.chown(path, uid, -1)
    port = _free_port()
    try:
        initdb = [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "teambot", "--auth=trust"]
        _run("initdb", [*initdb, "-E", "UTF8", "--no-sync", "--no-instructions"])
        # fsync off: a test database need not survive a power cut, and CI's disk is slow.
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        _run(
            "pg_ctl start",
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
        )
        try:
            yield PostgresServer("127.0.0.1", port, "teambot")
        finally:
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                check=False,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(name: str, command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Unavailable(f"{name} failed: {(done.stderr or done.stdout)[-500:]}")

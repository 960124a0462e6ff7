"""What every command does with a database it cannot use: one line naming TEAMBOT_DB, exit code 2, no hang.

Driven through the real ``teambot`` command in a subprocess, as a person would meet it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.store import open_store
from tests.bot_process import read_only, teambot

#: A model endpoint nothing listens on: these commands must fail on the database before they ever call it.
_NO_MODEL = "http://127.0.0.1:9/v1"


async def _database(path: Path) -> Path:
    store = await open_store(str(path))
    await store.close()
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("command", [["console"], ["db", "migrate"], ["check"]], ids=" ".join)
async def test_a_read_only_database_is_one_line_and_exit_code_2(tmp_path: Path, command: list[str]) -> None:
    db = await _database(tmp_path / "teambot.db")
    before = _files(tmp_path)
    with read_only(db):
        env = {"TEAMBOT_DB": str(db), "OPENAI_BASE_URL": _NO_MODEL}
        code, out, err = await teambot(*command, cwd=tmp_path, env=env)
    assert "Traceback" not in err, err
    if command == ["check"]:
        # check goes on to the other pieces and fails on its database line; nothing on stderr.
        assert code == 1 and err == "", err
        [line] = [line for line in out.splitlines() if line.startswith("FAIL  database")]
    else:
        assert code == 2, err
        [line] = err.splitlines()
    assert f"TEAMBOT_DB: cannot write to {str(db)!r}" in line and "read-only" in line, line
    assert _files(tmp_path) == before  # not a byte written, no journal left beside it


@pytest.mark.parametrize("refused", ["the first write", "the start-up purge"])
async def test_a_database_refusing_writes_past_the_file_checks_is_one_line_and_the_process_exits(
    tmp_path: Path, refused: str
) -> None:
    # The file and its folder are writable, but the database refuses a write (a trigger stands for what the file
    # checks cannot see): the first one a turn makes, or the purge of old message ids at start-up, after both
    # connections are open. The process must still end: each connection's thread is closed.
    db = await _database(tmp_path / "teambot.db")
    with sqlite3.connect(db) as conn:
        if refused == "the first write":
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON handled_messages BEGIN SELECT RAISE(FAIL, 'no'); END")
        else:
            conn.execute("INSERT INTO handled_messages (message_id, handled_at) VALUES ('old', 0)")
            conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON handled_messages BEGIN SELECT RAISE(FAIL, 'no'); END")
    code, _, err = await teambot("db", "migrate", cwd=tmp_path, env={"TEAMBOT_DB": str(db)}, within=30)
    assert code == 2 and "Traceback" not in err, err
    [line] = err.splitlines()
    if refused == "the first write":
        assert line.startswith(f"teambot: TEAMBOT_DB: cannot write to {str(db)!r} (the database is refusing writes")
    else:
        assert line == f"teambot: TEAMBOT_DB: cannot use {str(db)!r} as a SQLite database (no)", line

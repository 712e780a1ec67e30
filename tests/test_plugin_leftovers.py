"""A killed test run leaves its database on the server; the next run of the
pytest plugin on this machine drops it, and never a database that a live run
uses. Host suites run with pytest in a subprocess."""

import pytest
from sqlalchemy.engine import make_url

from agent_wake.testing.pytest_plugin import TestServer
from tests.test_testing_support import server_databases

pytest_plugins = ["pytester"]

KILLED_RUN = """
import os
import signal


from sqlalchemy.engine import make_url


def test_is_killed_before_its_teardown(wake_database_url):
    print("DATABASE", make_url(wake_database_url).database, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""

NEXT_RUN = """
def test_uses_a_database(wake_database_url):
    pass
"""


async def test_the_next_run_drops_the_database_a_killed_run_left_and_keeps_the_live_ones(
    pytester: pytest.Pytester, wake_server: TestServer, wake_database_url: str
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_killed=KILLED_RUN)
    killed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    (left,) = [line.split()[-1] for line in killed.stdout.lines if line.startswith("test_killed.py DATABASE ")]
    assert killed.ret != 0
    assert left in await server_databases(wake_server.url)

    (pytester.path / "test_killed.py").unlink()
    pytester.makepyfile(test_next=NEXT_RUN)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)

    remaining = await server_databases(wake_server.url)
    assert left not in remaining
    assert make_url(wake_database_url).database in remaining, "this live run's own database was dropped"

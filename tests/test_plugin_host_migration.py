"""The pytest plugin migrating a host's test database with the host's own
Alembic environment: host projects written into a temporary folder and run
with pytest in a subprocess, as a service's test suite would run."""

import configparser
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from agent_wake.testing import ScratchDatabase
from agent_wake.testing.pytest_plugin import TestServer
from tests.host_project import write_host_project
from tests.test_testing_support import WAKE_TABLES, public_tables, server_databases

pytest_plugins = ["pytester"]

PYTEST_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nagent_wake_alembic_ini = alembic.ini\n"

# The override the README shows, verbatim.
README_WAKE_MIGRATE = """
# conftest.py
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).parent / "alembic.ini"


@pytest.fixture(scope="session")
def wake_migrate():
    def migrate(url: str) -> None:
        config = Config(str(ALEMBIC_INI))
        # Alembic's options are ConfigParser values, where "%" starts an
        # interpolation; the embedded server's URL holds a percent-encoded path.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        command.upgrade(config, "heads")

    return migrate
"""

MIGRATED_BY_THE_HOST = """
import pytest
from sqlalchemy import text


@pytest.mark.asyncio
async def test_the_host_environment_migrated_the_database(wake_session, wake_factory):
    columns = await wake_session.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'conversations'"
    ))
    assert "title" in set(columns.scalars())
    skill = await wake_factory.skill()
    schedule = await wake_factory.schedule(skill_id=skill.skill_id)
    assert schedule.skill_id == skill.skill_id
"""


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A data folder for the embedded server, outside pytest's temporary root:
    every pytest session that starts (another run's, an xdist worker's) makes
    that root owner-only again, and a server started by root runs as the user
    pgserver, which must reach its folder."""
    folder = Path(tempfile.mkdtemp(prefix="agent-wake-embedded-"))
    yield folder / "pgdata"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("how", ["readme-override", "ini-option"])
def test_a_host_environment_migrates_the_test_database_on_the_embedded_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, embedded_data_dir: Path, how: str
) -> None:
    monkeypatch.delenv("AGENT_WAKE_TEST_DATABASE_URL", raising=False)
    monkeypatch.setenv("AGENT_WAKE_EMBEDDED_DIR", str(embedded_data_dir))
    write_host_project(pytester.path)
    if how == "readme-override":
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        pytester.makeconftest(README_WAKE_MIGRATE)
    else:
        pytester.makeini(PYTEST_INI)
    pytester.makepyfile(test_host=MIGRATED_BY_THE_HOST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["agent-wake test database: embedded PostgreSQL*"])
    result.assert_outcomes(passed=1)


def write_default_template_host(folder: Path, sqlalchemy_url: str | None) -> None:
    """The host project with the env.py and alembic.ini that `alembic init` writes
    (a synchronous engine_from_config), its sqlalchemy.url set to ``sqlalchemy_url``."""
    write_host_project(folder)
    template = folder / "alembic_init"
    command.init(Config(str(template / "alembic.ini")), str(template / "migrations"))
    shutil.copy(template / "migrations" / "env.py", folder / "migrations" / "env.py")
    host_ini = configparser.ConfigParser(interpolation=None)
    host_ini.read(folder / "alembic.ini")
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(template / "alembic.ini")
    for key, value in host_ini["alembic"].items():
        ini["alembic"][key] = value
    if sqlalchemy_url is None:
        ini.remove_option("alembic", "sqlalchemy.url")
    else:
        ini["alembic"]["sqlalchemy.url"] = sqlalchemy_url
    with (folder / "alembic.ini").open("w") as file:
        ini.write(file)
    shutil.rmtree(template)


def test_a_host_with_alembics_default_synchronous_env_py_migrates_with_the_driver_its_ini_names(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(PYTEST_INI)
    write_default_template_host(pytester.path, "postgresql+psycopg://app@localhost/app")
    assert "engine_from_config" in (pytester.path / "migrations" / "env.py").read_text()
    pytester.makepyfile(test_host=MIGRATED_BY_THE_HOST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_synchronous_env_py_given_the_asyncpg_url_is_told_to_name_its_driver(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTEST_INI)
    write_default_template_host(pytester.path, None)
    pytester.makepyfile(test_host=MIGRATED_BY_THE_HOST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*opened a synchronous engine on the postgresql+asyncpg URL the plugin set in sqlalchemy.url. "
            "Name your synchronous driver in that file's sqlalchemy.url*"
        ]
    )


def test_a_wrong_alembic_ini_path_names_the_file_looked_for(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTEST_INI.replace("= alembic.ini", "= config/alembic.ini"))
    write_host_project(pytester.path)
    pytester.makepyfile(test_host=MIGRATED_BY_THE_HOST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    looked_for = pytester.path.resolve() / "config" / "alembic.ini"
    result.stdout.fnmatch_lines([f"*agent_wake_alembic_ini: must name an alembic.ini*there is no file {looked_for}*"])


# Reads its URL from an environment variable, as many env.py files do, and so
# ignores the test database the plugin sets in sqlalchemy.url.
ENV_IGNORING_THE_URL = """
import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine


def run(connection):
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine(os.environ["HOST_DEVELOPMENT_DATABASE_URL"], poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


asyncio.run(main())
"""


async def test_an_env_py_that_migrated_another_database_fails_the_run_and_says_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, wake_server: TestServer
) -> None:
    async with ScratchDatabase(wake_server.url, prefix="agent_wake_host_dev", migrate=None) as development_url:
        monkeypatch.setenv("HOST_DEVELOPMENT_DATABASE_URL", development_url)
        pytester.makeini(PYTEST_INI)
        write_host_project(pytester.path)
        (pytester.path / "migrations" / "env.py").write_text(ENV_IGNORING_THE_URL)
        pytester.makepyfile(test_host=MIGRATED_BY_THE_HOST)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(
            [
                "*wake_migrate ran, but the test database agent_wake_test_main_* has no agent_wake_schedules, "
                "wake_fires, webhook_subscriptions. Most likely the env.py that ran ignores the URL the plugin "
                "sets in sqlalchemy.url*"
            ]
        )
        assert await public_tables(development_url) >= WAKE_TABLES
        test_database = re.search(r"the test database (agent_wake_test_main_[0-9a-f]{10})", result.stdout.str())
        assert test_database is not None
        assert test_database.group(1) not in await server_databases(wake_server.url)

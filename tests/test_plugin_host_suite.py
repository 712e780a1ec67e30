"""The pytest plugin in a host's test suite: its configuration, the host's
own tables in the factories and the cleanup, what a run reports. Host
projects are written into a temporary folder and run with pytest in a
subprocess."""

import textwrap

import pytest

from tests.host_project import write_host_project, write_host_revision

pytest_plugins = ["pytester"]

FUNCTION_LOOPS = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

PRINTS_ITS_DATABASE = """
from sqlalchemy.engine import make_url


def test_prints_its_database(wake_database_url):
    print("DATABASE", make_url(wake_database_url).database)
"""


def test_the_database_prefix_option_starts_the_test_database_name(pytester: pytest.Pytester) -> None:
    pytester.makeini(FUNCTION_LOOPS + "agent_wake_database_prefix = ci_team_a\n")
    pytester.makepyfile(test_name=PRINTS_ITS_DATABASE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r".*DATABASE ci_team_a_main_[0-9a-f]{10}$"])


def test_a_database_prefix_that_is_not_an_identifier_is_refused_naming_the_option(pytester: pytest.Pytester) -> None:
    pytester.makeini(FUNCTION_LOOPS + "agent_wake_database_prefix = CI-team\n")
    pytester.makepyfile(test_name=PRINTS_ITS_DATABASE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*InvalidInputError: agent_wake_database_prefix: must be a lower-case identifier: a-z, 0-9 and _*"]
    )


def write_host_with_columns_of_its_own(pytester: pytest.Pytester) -> None:
    """The host project whose conversations and agent_skills gain a NOT NULL
    column with no default, which the stand-in rows do not fill."""
    write_host_project(pytester.path)
    write_host_revision(
        pytester.path,
        "host_0002",
        "host_0001",
        'op.add_column("conversations", sa.Column("workspace", sa.Text(), nullable=False))',
        'op.drop_column("conversations", "workspace")',
    )
    write_host_revision(
        pytester.path,
        "host_0003",
        "host_0002",
        'op.add_column("agent_skills", sa.Column("slug", sa.Text(), nullable=False))',
        'op.drop_column("agent_skills", "slug")',
    )
    pytester.makeini(FUNCTION_LOOPS + "agent_wake_alembic_ini = alembic.ini\n")


# The README's conftest.py for a host's own tables, verbatim.
HOST_BUILDERS = """
# conftest.py: your conversations table has a NOT NULL "workspace" column and
# your agent_skills table a NOT NULL "slug", which the stand-in rows lack.
import uuid

import pytest
from sqlalchemy import text


async def build_conversation(session, /, **overrides):
    values = {
        "agent_id": uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "workspace": "factory",
        **overrides,
    }
    inserted = await session.execute(
        text(
            "INSERT INTO conversations (agent_id, conversation_id, user_id, workspace) "
            "VALUES (:agent_id, :conversation_id, :user_id, :workspace) RETURNING *"
        ),
        values,
    )
    return inserted.one()


async def build_skill(session, /, **overrides):
    values = {
        "agent_id": uuid.uuid4(),
        "skill_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "name": "factory skill",
        "slug": "factory-skill",
        **overrides,
    }
    inserted = await session.execute(
        text(
            "INSERT INTO agent_skills (agent_id, skill_id, user_id, name, slug) "
            "VALUES (:agent_id, :skill_id, :user_id, :name, :slug) RETURNING *"
        ),
        values,
    )
    return inserted.one()


@pytest.fixture
def wake_conversation_builder():
    return build_conversation


@pytest.fixture
def wake_skill_builder():
    return build_skill


@pytest.fixture(scope="session")
def wake_cleanup_tables():
    # Emptied with the wake tables after each test that uses wake_engine.
    return ["conversations", "agent_skills"]
"""

USES_THE_HOST_BUILDERS = """
import pytest


@pytest.mark.asyncio
async def test_the_factory_writes_the_hosts_own_rows(wake_factory):
    conversation = await wake_factory.conversation(workspace="acme")
    skill = await wake_factory.skill(slug="summarize")
    schedule = await wake_factory.schedule(conversation_id=conversation.conversation_id, skill_id=skill.skill_id)
    assert (conversation.workspace, skill.slug) == ("acme", "summarize")
    assert schedule.skill_id == skill.skill_id
"""


def test_a_host_plugs_in_builders_of_its_own_conversations_and_skills(pytester: pytest.Pytester) -> None:
    write_host_with_columns_of_its_own(pytester)
    pytester.makeconftest(HOST_BUILDERS)
    pytester.makepyfile(test_host=USES_THE_HOST_BUILDERS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


USES_THE_STAND_IN_BUILDER = """
import pytest


@pytest.mark.asyncio
async def test_the_stand_in_conversation(wake_factory):
    await wake_factory.conversation()
"""


def test_the_stand_in_builder_on_a_hosts_own_table_says_which_fixture_to_override(pytester: pytest.Pytester) -> None:
    write_host_with_columns_of_its_own(pytester)
    pytester.makepyfile(test_host=USES_THE_STAND_IN_BUILDER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AgentWakeError: wake_factory.conversation() inserts a row of the stand-in conversations table "
            "(agent_id, conversation_id, user_id*) and the database refused it: *null value in column "
            '"workspace"*. If conversations is your own table, return a builder of its rows from a '
            "wake_conversation_builder fixture*"
        ]
    )


COMMITS_WITH_WAKE_ENGINE = """
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import spans_partitions
from agent_wake.testing import WakeFactory


async def count(wake_engine, table):
    async with wake_engine.connect() as connection:
        with spans_partitions("test: count a whole table"):
            return (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()


@pytest.mark.asyncio
@pytest.mark.parametrize("run", [1, 2])
async def test_each_run_starts_from_empty_tables(
    wake_engine, wake_secrets, wake_conversation_builder, wake_skill_builder, run
):
    assert [await count(wake_engine, table) for table in ("conversations", "agent_skills")] == [0, 0]
    async with AsyncSession(wake_engine) as session:
        factory = WakeFactory(session, wake_secrets, conversation_builder=wake_conversation_builder,
                              skill_builder=wake_skill_builder)
        conversation = await factory.conversation()
        await factory.schedule(conversation_id=conversation.conversation_id, skill_id=(await factory.skill()).skill_id)
        await session.commit()
    assert [await count(wake_engine, table) for table in ("conversations", "agent_skills")] == [1, 1]
"""


def test_wake_engine_empties_the_hosts_cleanup_tables_with_the_wake_tables(pytester: pytest.Pytester) -> None:
    write_host_with_columns_of_its_own(pytester)
    pytester.makeconftest(HOST_BUILDERS)
    pytester.makepyfile(test_host=COMMITS_WITH_WAKE_ENGINE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("returned", "rule"),
    [
        ('"conversations"', "must return a list of table names, not one string"),
        ('["a.b.c"]', 'each entry must be a table name: "name" or "schema.name"'),
    ],
    ids=["one-string", "three-parts"],
)
def test_a_cleanup_table_that_is_not_a_table_name_is_refused_before_the_test(
    pytester: pytest.Pytester, returned: str, rule: str
) -> None:
    pytester.makeini(FUNCTION_LOOPS)
    pytester.makeconftest(
        f"import pytest\n\n\n@pytest.fixture(scope='session')\ndef wake_cleanup_tables():\n    return {returned}\n"
    )
    pytester.makepyfile(test_engine="def test_engine(wake_engine):\n    raise AssertionError('ran')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*InvalidInputError: wake_cleanup_tables: {rule}*"])


def test_under_xdist_the_controller_names_the_database_source(pytester: pytest.Pytester) -> None:
    pytester.makeini(FUNCTION_LOOPS)
    pytester.makepyfile(
        test_parallel="import pytest\n\n\n@pytest.mark.parametrize('run', range(4))\n"
        "def test_uses_the_database(wake_database_url, run):\n    pass\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["agent-wake test database: * (xdist workers gw0, gw1)"])


# The README's complete test file, verbatim, and the configuration it asks for.
README_TEST_FILE = """
import uuid

import pytest
from sqlalchemy import select

from agent_wake import PartitionScopeError, WakeFireRepository, WakeSchedule

# pytest-asyncio runs these in strict mode (its default) and in auto mode alike.
pytestmark = pytest.mark.asyncio


async def test_a_fired_schedule_has_its_output(wake_factory, wake_session):
    conversation_id = uuid.uuid4()
    schedule = await wake_factory.schedule(
        conversation_id=conversation_id, schedule_type="cron", schedule_config={"expr": "0 * * * *"}
    )
    await wake_factory.fire(conversation_id=conversation_id, schedule_id=schedule.schedule_id, status="fired")
    await wake_session.commit()  # rolled back after the test all the same

    latest = await WakeFireRepository(wake_session).latest_for_schedule(conversation_id, schedule.schedule_id)
    assert latest is not None
    assert latest.status == "fired"


async def test_unscoped_queries_are_refused(wake_session):
    with pytest.raises(PartitionScopeError):
        await wake_session.execute(select(WakeSchedule))
"""

README_PYPROJECT = """
[tool.pytest.ini_options]
asyncio_default_fixture_loop_scope = "function"
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_the_readme_test_file_passes_without_warnings_in_strict_and_auto_mode(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyprojecttoml(textwrap.dedent(README_PYPROJECT) + f'asyncio_mode = "{mode}"\n')
    pytester.makepyfile(test_service=README_TEST_FILE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)
    assert "Warning" not in result.stdout.str() + result.stderr.str()


def test_the_loop_scope_warning_is_pytest_asyncios_own_and_shows_without_our_plugin(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:agent_wake")
    result.assert_outcomes(passed=1)
    assert '"asyncio_default_fixture_loop_scope" is unset' in result.stderr.str()

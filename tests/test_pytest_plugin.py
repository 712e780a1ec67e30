"""The pytest plugin, seen from the outside: small downstream projects written
into a temporary folder and run with pytest in a subprocess, as a service's
test suite would run."""

import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from agent_wake.testing.pytest_plugin import _from_testcontainers, start_test_server
from tests.host_project import write_host_project

pytest_plugins = ["pytester"]

ROUND_TRIP = """
    import uuid

    import pytest
    from sqlalchemy import select, text

    from agent_wake import PartitionScopeError, WakeSchedule, WakeScheduleRepository, spans_partitions

    CONVERSATION = uuid.UUID("00000000-0000-0000-0000-0000000000c1")


    async def count_all_schedules(session):
        with spans_partitions("test: count every schedule"):
            result = await session.execute(text("SELECT count(*) FROM agent_wake_schedules"))
        return result.scalar_one()


    {marker}
    async def test_commits_a_schedule(wake_factory, wake_session):
        schedule = await wake_factory.schedule(
            conversation_id=CONVERSATION, schedule_type="cron", schedule_config={{"expr": "0 * * * *"}}
        )
        await wake_session.commit()
        found = await WakeScheduleRepository(wake_session).get(CONVERSATION, schedule.schedule_id)
        assert found is not None
        assert await count_all_schedules(wake_session) == 1


    {marker}
    async def test_then_finds_the_table_empty(wake_session):
        assert await count_all_schedules(wake_session) == 0


    {marker}
    async def test_an_unscoped_query_is_refused(wake_session):
        with pytest.raises(PartitionScopeError, match="agent_wake_schedules"):
            await wake_session.execute(select(WakeSchedule))


    {marker}
    async def test_factories_build_every_row(wake_factory):
        skill = await wake_factory.skill()
        conversation = await wake_factory.conversation()
        schedule = await wake_factory.schedule(
            conversation_id=conversation.conversation_id, skill_id=skill.skill_id
        )
        fire = await wake_factory.fire(
            schedule_id=schedule.schedule_id, conversation_id=schedule.conversation_id, status="fired"
        )
        subscription = await wake_factory.subscription(conversation_id=conversation.conversation_id)
        assert (fire.status, fire.schedule_id) == ("fired", schedule.schedule_id)
        assert subscription.conversation_id == conversation.conversation_id


    def test_secrets_round_trip(wake_secrets):
        assert wake_secrets.decrypt(wake_secrets.encrypt("s3cret")) == "s3cret"
"""


@pytest.mark.parametrize(("mode", "marker"), [("strict", "@pytest.mark.asyncio"), ("auto", "")], ids=["strict", "auto"])
def test_downstream_suite_gets_a_migrated_database_and_isolation(
    pytester: pytest.Pytester, mode: str, marker: str
) -> None:
    pytester.makeini(f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_downstream=textwrap.dedent(ROUND_TRIP).format(marker=marker))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["agent-wake test database: *"])


def test_a_suite_that_asks_for_no_wake_fixture_starts_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "agent-wake test database" not in result.stdout.str()


LAYOUT_CHECK = """
    from sqlalchemy import text

    from agent_wake.distribution import is_rekeyed


    async def test_the_wake_tables_are_rekeyed(wake_session):
        schema = (await wake_session.execute(text("SELECT current_schema()"))).scalar_one()
        assert await (await wake_session.connection()).run_sync(is_rekeyed, schema)
"""


def test_the_distributed_layout_gives_a_rekeyed_database_and_says_so(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_WAKE_TEST_LAYOUT", "distributed")
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_layout=textwrap.dedent(LAYOUT_CHECK))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["agent-wake test database: * (distributed layout)"])


def test_an_unknown_layout_stops_the_tests_naming_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_WAKE_TEST_LAYOUT", "sharded")
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_layout=textwrap.dedent(LAYOUT_CHECK))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*AGENT_WAKE_TEST_LAYOUT: must be one of reference, distributed*"])


HOST_TEST = """
import pytest
from sqlalchemy import text


@pytest.mark.asyncio
async def test_the_host_environment_migrated_the_database(wake_session, wake_factory):
    columns = await wake_session.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'conversations'"
    ))
    assert "title" in set(columns.scalars())
    version = await wake_session.execute(text("SELECT version_num FROM alembic_version"))
    assert set(version.scalars()) == {"agent_wake_0008"}
    skill = await wake_factory.skill()
    schedule = await wake_factory.schedule(skill_id=skill.skill_id)
    assert schedule.skill_id == skill.skill_id
"""


def test_downstream_project_migrates_with_its_own_alembic_environment(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "agent_wake_alembic_ini = alembic.ini\n"
    )
    write_host_project(pytester.path)
    pytester.makepyfile(test_host=HOST_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


XDIST_TEST = """
import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import spans_partitions
from agent_wake.testing.factories import WakeFactory


async def commit_five_and_count_all(wake_engine, wake_secrets):
    conversation_id = uuid.uuid4()
    async with AsyncSession(wake_engine) as session:
        for _ in range(5):
            await WakeFactory(session, wake_secrets).schedule(conversation_id=conversation_id)
        await session.commit()
    await asyncio.sleep(1.5)  # overlap with the other worker's test
    async with wake_engine.connect() as connection:
        with spans_partitions("test: count every schedule of this database"):
            result = await connection.execute(text("SELECT count(*) FROM agent_wake_schedules"))
        return result.scalar_one()


@pytest.mark.parametrize("run", range(4))
@pytest.mark.asyncio
async def test_each_worker_sees_only_its_own_rows(wake_engine, wake_secrets, wake_database_url, run):
    assert await commit_five_and_count_all(wake_engine, wake_secrets) == 5
    print("DATABASE", wake_database_url.rsplit("/", 1)[1])
"""


def test_two_xdist_workers_do_not_touch_each_others_data(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_parallel=XDIST_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-rA")
    result.assert_outcomes(passed=4)
    databases = {line.split()[-1] for line in result.stdout.lines if "DATABASE agent_wake_test_" in line}
    workers = {name.split("_")[3] for name in databases}
    assert workers == {"gw0", "gw1"}


def test_the_testcontainers_source_is_passed_over_when_docker_does_not_answer() -> None:
    import docker

    try:
        docker.from_env(timeout=3).ping()
    except Exception:
        tried: list[str] = []
        assert _from_testcontainers(tried) is None
        assert tried == [tried[0]]
        assert tried[0].startswith("testcontainers: Docker does not answer")
    else:
        pytest.skip("Docker answers here; the container test covers this machine")


async def test_the_testcontainers_source_starts_a_postgresql_container() -> None:
    import docker

    try:
        docker.from_env(timeout=3).ping()
    except Exception:
        pytest.skip("Docker does not answer on this machine")
    server = _from_testcontainers([])
    assert server is not None
    assert server.stop is not None
    try:
        engine = create_async_engine(server.url)
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
        await engine.dispose()
    finally:
        server.stop()


def test_when_no_source_works_the_error_says_what_was_tried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import docker

    try:
        docker.from_env(timeout=3).ping()
    except Exception:
        pass
    else:
        pytest.skip("Docker answers here, so a source does work")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("AGENT_WAKE_TEST_DATABASE_URL", raising=False)
    monkeypatch.setenv("AGENT_WAKE_EMBEDDED_DIR", str(blocker / "pgdata"))
    with pytest.raises(Exception, match="no PostgreSQL for the tests") as caught:
        start_test_server()
    message = str(caught.value)
    assert "AGENT_WAKE_TEST_DATABASE_URL: not set" in message
    assert "testcontainers: Docker does not answer" in message
    assert "embedded PostgreSQL:" in message
    assert "set AGENT_WAKE_TEST_DATABASE_URL" in message

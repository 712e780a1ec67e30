"""The distributed layout: re-keyed on plain PostgreSQL, distributed on a
real Citus cluster, a populated database moved onto it with nothing lost,
and every partition-scoped statement a single-shard query there."""

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql

from agent_wake import _statements
from agent_wake.distribution import DistributionRefusedError, distribute_schema, is_rekeyed
from agent_wake.partition_guard import span_reason
from tests.conftest import ScratchDatabases
from tests.test_adoption import dump, execute, on_connection
from tests.test_cli import agent_wake

REPO = Path(__file__).resolve().parent.parent
CLUSTER_VARIABLE = "AGENT_WAKE_CITUS_CLUSTER"


def cluster_script() -> Path | None:
    """The script that runs the Citus cluster: $AGENT_WAKE_CITUS_CLUSTER, else ../shared/citus/cluster
    beside the checkout, else /work/shared/citus/cluster."""
    candidates = [os.environ.get(CLUSTER_VARIABLE), REPO.parent / "shared/citus/cluster", "/work/shared/citus/cluster"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def cluster(*args: str) -> subprocess.CompletedProcess[str]:
    script = cluster_script()
    assert script is not None
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def citus_cluster() -> str:
    """Skips, saying why, where no cluster is up; else the coordinator's URL."""
    if cluster_script() is None:
        pytest.skip(
            f"no Citus cluster script (set {CLUSTER_VARIABLE}, or put shared/citus/cluster beside the checkout)"
        )
    up = cluster("url")
    if up.returncode != 0:
        pytest.skip(f"the Citus cluster is not up (run `{cluster_script()} up`): {up.stderr.strip()}")
    return up.stdout.strip()


@pytest.fixture
def citus_database(citus_cluster: str) -> Iterator[str]:
    """A fresh database on the cluster, Citus set up on every node; dropped afterwards."""
    name = f"agent_wake_citus_{uuid.uuid4().hex[:10]}"
    made = cluster("db", name)
    assert made.returncode == 0, made.stderr
    yield made.stdout.strip()
    cluster("dropdb", name)


def seed(conversations: int = 20) -> list[str]:
    """Rows in all three tables, context chains, webhook fires and a skill, per conversation."""
    return [
        "INSERT INTO conversations (agent_id, conversation_id, user_id) "
        f"SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid() FROM generate_series(1, {conversations})",
        "INSERT INTO agent_skills (agent_id, skill_id, user_id, name) "
        "SELECT agent_id, gen_random_uuid(), user_id, 'skill' FROM conversations",
        "INSERT INTO agent_wake_schedules (conversation_id, schedule_id, user_id, agent_id, skill_id, schedule_type, "
        "schedule_config, next_fire_at) "
        "SELECT c.conversation_id, gen_random_uuid(), c.user_id, c.agent_id, s.skill_id, "
        """'interval', '{"seconds": 60}', now() FROM conversations c JOIN agent_skills s USING (agent_id), """
        "generate_series(1, 3)",
        "UPDATE agent_wake_schedules s SET context_from_schedule_id = (SELECT min(o.schedule_id::text)::uuid "
        "FROM agent_wake_schedules o WHERE o.conversation_id = s.conversation_id AND o.schedule_id <> s.schedule_id)",
        "INSERT INTO webhook_subscriptions (conversation_id, subscription_id, user_id, agent_id, secret_ciphertext) "
        "SELECT conversation_id, gen_random_uuid(), user_id, agent_id, 'ciphertext' FROM conversations",
        "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, scheduled_fire_at, status, output_text) "
        "SELECT conversation_id, gen_random_uuid(), schedule_id, now() - g * interval '1 minute', 'fired', 'out' "
        "FROM agent_wake_schedules, generate_series(1, 5) g",
        "INSERT INTO wake_fires (conversation_id, fire_id, webhook_subscription_id, status) "
        "SELECT conversation_id, gen_random_uuid(), subscription_id, 'fired' FROM webhook_subscriptions",
    ]


def constraint_definitions(connection: Connection) -> dict[str, str]:
    rows = connection.execute(
        text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid IN ('agent_wake_schedules'::regclass, 'wake_fires'::regclass, "
            "'webhook_subscriptions'::regclass)"
        )
    )
    found = {name: definition for name, definition in rows}
    connection.rollback()
    return found


async def migrated_and_seeded(url: str) -> None:
    assert agent_wake("upgrade", url=url).returncode == 0
    await execute(url, *seed())


async def test_rekeying_makes_every_key_between_the_wake_tables_composite_and_keeps_every_row(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await migrated_and_seeded(url)
    before = await on_connection(url, dump, "public")

    done = await on_connection(url, distribute_schema, "public")

    assert (done.rekeyed, done.distributed, done.citus) == (True, False, False)
    assert await on_connection(url, dump, "public") == before
    definitions = await on_connection(url, constraint_definitions)
    assert definitions["wake_fires_schedule_fk"] == (
        "FOREIGN KEY (conversation_id, schedule_id) REFERENCES agent_wake_schedules(conversation_id, schedule_id) "
        "ON DELETE CASCADE"
    )
    assert definitions["wake_fires_webhook_subscription_fk"] == (
        "FOREIGN KEY (conversation_id, webhook_subscription_id) "
        "REFERENCES webhook_subscriptions(conversation_id, subscription_id)"
    )
    assert definitions["agent_wake_schedules_context_from_fk"] == (
        "FOREIGN KEY (conversation_id, context_from_schedule_id) "
        "REFERENCES agent_wake_schedules(conversation_id, schedule_id)"
    )
    for standalone in (
        "agent_wake_schedules_schedule_id_key",
        "wake_fires_fire_id_key",
        "webhook_subscriptions_subscription_id_key",
    ):
        assert standalone not in definitions


async def test_rekeying_twice_changes_nothing_the_second_time(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await migrated_and_seeded(url)
    await on_connection(url, distribute_schema, "public")
    definitions = await on_connection(url, constraint_definitions)

    again = await on_connection(url, distribute_schema, "public")

    assert (again.rekeyed, again.distributed) == (False, False)
    assert await on_connection(url, constraint_definitions) == definitions


async def test_doctor_finds_nothing_wrong_with_the_rekeyed_layout(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await migrated_and_seeded(url)
    await on_connection(url, distribute_schema, "public")

    examined = agent_wake("doctor", url=url)

    assert examined.returncode == 0, examined.stdout
    assert "ok: the tables have the distributed layout (agent-wake distribute)" in examined.stdout


async def test_a_dry_run_says_what_it_would_do_and_changes_nothing(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await migrated_and_seeded(url)

    planned = await on_connection(url, distribute_schema, "public", dry_run=True)

    assert planned.rekeyed
    assert not await on_connection(url, is_rekeyed, "public")


async def test_a_reference_across_conversations_is_refused_and_nothing_changes(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await migrated_and_seeded(url)
    await execute(
        url,
        "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, status) "
        "SELECT gen_random_uuid(), gen_random_uuid(), schedule_id, 'fired' FROM agent_wake_schedules LIMIT 1",
    )

    with pytest.raises(DistributionRefusedError, match="1 fires naming a schedule of another conversation"):
        await on_connection(url, distribute_schema, "public")
    assert not await on_connection(url, is_rekeyed, "public")


def test_the_distribute_command_reports_per_schema(citus_database: str) -> None:
    assert agent_wake("upgrade", url=citus_database).returncode == 0

    dry = agent_wake("distribute", "--dry-run", url=citus_database)
    done = agent_wake("distribute", url=citus_database)
    again = agent_wake("distribute", url=citus_database)

    assert (dry.returncode, done.returncode, again.returncode) == (0, 0, 0)
    assert "public: would re-key and distribute on Citus" in dry.stdout
    assert "public: re-keyed and distributed on Citus" in done.stdout
    assert "public: already re-keyed and distributed" in again.stdout


@pytest.fixture
async def single_server_database(citus_cluster: str) -> AsyncIterator[str]:
    """A plain database (no Citus in it) on the coordinator's server: the single server being
    moved, of the same PostgreSQL version as the cluster, as pg_dump needs."""
    name = f"agent_wake_single_{uuid.uuid4().hex[:10]}"
    server = await asyncpg.connect(_libpq(citus_cluster))
    try:
        await server.execute(f'CREATE DATABASE "{name}"')
        yield citus_cluster.rsplit("/", 1)[0] + f"/{name}"
        await server.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await server.close()


async def test_a_populated_database_moves_onto_citus_with_every_row(
    single_server_database: str, citus_database: str
) -> None:
    single = single_server_database
    await migrated_and_seeded(single)
    before = await on_connection(single, dump, "public")

    # The README's procedure: dump the single server, restore into the coordinator, distribute.
    dumped = await asyncio.to_thread(
        subprocess.run,
        ["pg_dump", "--no-owner", "--no-privileges", _libpq(single)],
        capture_output=True,
        text=True,
        check=True,
    )
    restored = await asyncio.to_thread(
        subprocess.run,
        ["psql", "-v", "ON_ERROR_STOP=1", "-q", _libpq(citus_database)],
        input=dumped.stdout,
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr
    moved = await on_connection(citus_database, distribute_schema, "public")

    assert (moved.rekeyed, moved.distributed) == (True, True)
    assert await on_connection(citus_database, dump, "public") == before
    assert await on_connection(citus_database, distributed_tables) == {
        "agent_skills": "n",
        "agent_wake_schedules": "h",
        "wake_fires": "h",
        "webhook_subscriptions": "h",
    }


def distributed_tables(connection: Connection) -> dict[str, str]:
    rows = connection.execute(text("SELECT logicalrelid::regclass::text, partmethod::text FROM pg_dist_partition"))
    found = {name: method for name, method in rows}
    connection.rollback()
    return found


def _libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


# claim_due's: its batch statements, each naming the conversations of a batch that spans shards on
# plain PostgreSQL (tests/test_citus_claims.py checks what it sends on Citus), and its catalog queries.
TICK_STATEMENTS = frozenset(
    {
        "schedules.claim_lock",
        "schedules.claim_lock_excluding",
        "schedules.claim_fires",
        "schedules.claim_reschedule",
        "schedules.citus_installed",
        "schedules.hash_distributed",
    }
)


def partition_scoped_statements() -> dict[str, str]:
    """Every prebuilt statement that names its conversations, as asyncpg receives it: not the
    cross-partition ones (marked with a span), nor the tick's, which claim across conversations."""
    dialect = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    scoped = {}
    for name, statement in _statements.PREBUILT.items():
        if span_reason(statement.get_execution_options()) is None and name not in TICK_STATEMENTS:
            scoped[name] = str(statement.compile(dialect=dialect))
    return scoped


_SAMPLE_VALUES: dict[str, Any] = {
    "uuid": uuid.UUID(int=1),
    "text": "x",
    "varchar": "x",
    "int4": 1,
    "int8": 1,
    "bool": True,
    "jsonb": "{}",
    "bytea": b"x",
}


def sample(parameter_type: Any, conversation_id: uuid.UUID) -> Any:
    """A value of the type asyncpg says a parameter has (an array's name is its element's followed
    by ``[]``); uuids are the conversation's, so that a parameter naming the
    conversation names one."""
    if parameter_type.kind == "array":
        return [_sample_scalar(parameter_type.name.removesuffix("[]"), conversation_id)]
    return _sample_scalar(parameter_type.name, conversation_id)


def _sample_scalar(type_name: str, conversation_id: uuid.UUID) -> Any:
    if type_name == "uuid":
        return conversation_id
    if type_name == "timestamptz":
        return datetime(2026, 1, 1, tzinfo=UTC)
    return _SAMPLE_VALUES[type_name]


@pytest.fixture
async def distributed_connection(citus_database: str) -> AsyncIterator[asyncpg.Connection]:
    await migrated_and_seeded(citus_database)
    await on_connection(citus_database, distribute_schema, "public")
    connection = await asyncpg.connect(_libpq(citus_database))
    yield connection
    await connection.close()


async def test_every_partition_scoped_statement_is_a_single_shard_query_on_citus(
    distributed_connection: asyncpg.Connection,
) -> None:
    conversation_id = uuid.uuid4()
    task_counts: dict[str, list[Any]] = {}
    for name, sql in partition_scoped_statements().items():
        prepared = await distributed_connection.prepare(sql)
        arguments = [sample(parameter, conversation_id) for parameter in prepared.get_parameters()]
        try:
            plan = json.loads(await distributed_connection.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *arguments))
        except asyncpg.UndefinedObjectError:
            # Citus cannot EXPLAIN an INSERT ... SELECT with parameters ("no value found for
            # parameter 1"), though it runs one: the same values written into the text instead.
            plan = json.loads(await distributed_connection.fetchval(f"EXPLAIN (FORMAT JSON) {inlined(sql, arguments)}"))
        task_counts[name] = _task_counts(plan)
    assert {name: counts for name, counts in task_counts.items() if counts != [1]} == {}


def inlined(sql: str, arguments: list[Any]) -> str:
    """``sql`` with each ``$n`` replaced by a literal of its argument (the sample values: uuids,
    instants, numbers, text, lists of those), last first so that $1 does not match inside $10."""
    for position in range(len(arguments), 0, -1):
        sql = sql.replace(f"${position}", _literal(arguments[position - 1]))
    return sql


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(each) for each in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, bytes):
        return "'\\x" + value.hex() + "'"
    return "'" + str(value).replace("'", "''") + "'"


def _task_counts(plan: Any) -> list[int]:
    """Every "Task Count" in a Citus plan, outermost first."""
    found: list[int] = []
    pending = [plan]
    while pending:
        node = pending.pop(0)
        if isinstance(node, dict):
            if "Task Count" in node:
                found.append(node["Task Count"])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found

"""Taking over schemas built by the older migration runner, and bringing
every schema of a deployment to our head.

Both work on one PostgreSQL schema at a time, on a synchronous
``Connection`` (an ``AsyncConnection``'s ``run_sync`` gives one), with our
packaged Alembic scripts, each schema with its own ``alembic_version``.
Both hold the older runner's advisory lock on the schema while they work,
so that a pod still running that runner during a rolling deploy waits for
them, and they for it.

- :func:`adopt_schema` reads the runner's ledger, checks that the live
  tables are exactly that step's, checks what our later revisions will need
  of the rows, and stamps our revision for that step: it touches no row.
- :func:`upgrade_schema` runs our revisions to head, each in its own
  transaction.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from agent_wake import _catalog, _older_runner
from agent_wake.database import validate_schema_name
from agent_wake.errors import AgentWakeError, first_line
from agent_wake.migration_config import alembic_config
from agent_wake.partition_guard import spans_partitions

__all__ = [
    "AdoptionRefusedError",
    "SchemaAdoption",
    "SchemaUpgrade",
    "UpgradeFailedError",
    "adopt_schema",
    "upgrade_schema",
]

# How long a command waits for the older runner's lock on a schema before it gives up.
RUNNER_LOCK_TIMEOUT: Final = "30s"


class AdoptionRefusedError(AgentWakeError):
    """A schema cannot be adopted as it is; ``reason`` says why and what to do. Nothing was written."""

    def __init__(self, schema: str, reason: str) -> None:
        super().__init__(f"schema {schema}: {reason}")
        self.schema = schema
        self.reason = reason


class UpgradeFailedError(AgentWakeError):
    """A revision failed in ``schema``: it is at ``reached`` (the revisions before ``failed`` are
    committed; ``failed`` is not recorded, though one that commits part-way may have committed its
    first part), and the same command run again resumes there."""

    def __init__(self, schema: str, *, reached: tuple[str, ...], failed: str, cause: BaseException) -> None:
        where = ", ".join(reached) or "no revision"
        super().__init__(
            f"schema {schema}: revision {failed} failed ({type(cause).__name__}: {first_line(cause)}); "
            f"the schema is at {where}. A revision that commits part-way (agent_wake_0003 to agent_wake_0005, "
            f"agent_wake_0007) may have committed its first part; the rest of {failed} is not applied. "
            "Fix the cause and run the same command again: it resumes at this schema"
        )
        self.schema = schema
        self.reached = reached
        self.failed = failed


@dataclass(frozen=True)
class SchemaAdoption:
    """What :func:`adopt_schema` found and did: ``step`` per the ledger, the ``revision``
    stamped for it (not on a dry run), and the revisions an upgrade runs next."""

    schema: str
    step: int
    revision: str
    pending: tuple[str, ...]
    stamped: bool


@dataclass(frozen=True)
class SchemaUpgrade:
    """The revisions a schema was at, and those run (or, on a dry run, to run) to reach head."""

    schema: str
    before: tuple[str, ...]
    applied: tuple[str, ...]
    dry_run: bool


def adopt_schema(connection: Connection, schema: str, *, dry_run: bool = False) -> SchemaAdoption:
    """Stamp ``schema``, built by the older runner, at our revision for its step; touch no row.

    Refuses (:class:`AdoptionRefusedError`, nothing written) a schema that
    already has an ``alembic_version``, has no runner ledger or one whose
    ``agent_wake`` rows are not steps 1..N with the runner's descriptions,
    lacks ``conversations`` or ``agent_skills``, whose wake tables differ
    in any way from step N's (the first difference is named), or whose rows
    a later revision would refuse (a webhook fire before step 3's foreign
    key; two fires of one schedule period before revision 0007's unique
    index). Holds the runner's lock on the schema meanwhile, waiting at
    most ``RUNNER_LOCK_TIMEOUT`` for it. Reads the catalog in a handful of
    queries and the rows in one aggregate over ``wake_fires``; the stamp is
    committed with the checks in one transaction.
    """
    validate_schema_name(schema)
    with _older_runner_lock(connection, schema), spans_partitions("adopt: checks every conversation's fires"):
        step = _checked_step(connection, schema)
        revision = _older_runner.revision_for_step(step)
        pending = _revisions_after(revision)
        if not dry_run:
            config = alembic_config(schema=schema)
            config.attributes["connection"] = connection
            command.stamp(config, revision)
        connection.commit()
    return SchemaAdoption(schema, step, revision, pending, stamped=not dry_run)


def upgrade_schema(connection: Connection, schema: str, *, dry_run: bool = False) -> SchemaUpgrade:
    """Run our revisions in ``schema`` up to head, each committed on its own.

    Refuses a schema the older runner built that has not been adopted (it
    would create a second set of tables beside the runner's): adopt it
    first. A revision that fails raises :class:`UpgradeFailedError` naming
    where the schema stopped; the revisions before it stay committed.
    Holds the runner's lock on the schema meanwhile. In a schema with the
    runner's ledger, records there the six steps our head includes (rows
    missing only), so that the runner, started again by an old pod, finds
    nothing left to do.
    """
    validate_schema_name(schema)
    with _older_runner_lock(connection, schema):
        before = _current_revisions(connection, schema)
        if not before:
            _require_no_tables_of_ours(connection, schema)
        pending = _revisions_after(*before)
        connection.commit()
        if not dry_run and pending:
            config = alembic_config(schema=schema)
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, "head")
            except Exception as exc:
                connection.rollback()
                reached = _current_revisions(connection, schema)
                connection.commit()
                raise UpgradeFailedError(
                    schema, reached=reached, failed=_revisions_after(*reached)[0], cause=exc
                ) from exc
        if not dry_run:
            _record_steps_in_the_runners_ledger(connection, schema)
    return SchemaUpgrade(schema, before, pending, dry_run)


@contextlib.contextmanager
def _older_runner_lock(connection: Connection, schema: str) -> Iterator[None]:
    # Session-level, as the runner takes it: it outlives the commits of the
    # revisions run under it.
    key = {"namespace": _older_runner.LOCK_NAMESPACE, "key": _older_runner.lock_key(schema)}
    connection.execute(text("SELECT set_config('lock_timeout', :timeout, true)"), {"timeout": RUNNER_LOCK_TIMEOUT})
    connection.execute(text("SELECT pg_advisory_lock(:namespace, :key)"), key)
    connection.commit()
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:namespace, :key)"), key)
        connection.commit()


def _record_steps_in_the_runners_ledger(connection: Connection, schema: str) -> None:
    # Our head includes the runner's six steps: recorded in its ledger, an
    # old pod that starts the runner again finds them applied instead of
    # running them a second time on our tables.
    if not _catalog.relation_exists(connection, schema, _older_runner.LEDGER_TABLE):
        return
    connection.execute(
        text(
            f"INSERT INTO {_qualified(schema, _older_runner.LEDGER_TABLE)} (version, package, description) "
            "SELECT version, :package, description FROM unnest(CAST(:versions AS integer[]), "
            "CAST(:descriptions AS text[])) AS step(version, description) ON CONFLICT (version, package) DO NOTHING"
        ),
        {
            "package": _older_runner.LEDGER_PACKAGE,
            "versions": list(range(1, len(_older_runner.STEPS) + 1)),
            "descriptions": list(_older_runner.STEPS),
        },
    )
    connection.commit()


def _require_no_tables_of_ours(connection: Connection, schema: str) -> None:
    # Without a version table, an upgrade starts from nothing and would
    # collide with tables someone else built (or, in another schema, add a
    # second empty set): say who built them instead.
    if _catalog.relation_exists(connection, schema, _older_runner.LEDGER_TABLE):
        raise AdoptionRefusedError(
            schema, "was built by the older runner and is not adopted: run `agent-wake adopt` on it first"
        )
    for table in (*_older_runner.WAKE_TABLES, "conversations", "agent_skills"):
        if _catalog.relation_exists(connection, schema, table):
            raise AdoptionRefusedError(
                schema,
                f"has a {table} table but no alembic_version: stamp the revision it is at "
                '(see the README, "Adopting a database") before upgrading',
            )


def _checked_step(connection: Connection, schema: str) -> int:
    if _catalog.relation_exists(connection, schema, "alembic_version"):
        raise AdoptionRefusedError(schema, "already has agent-wake's alembic_version: use `agent-wake upgrade`")
    if not _catalog.relation_exists(connection, schema, _older_runner.LEDGER_TABLE):
        raise AdoptionRefusedError(
            schema, f"has no {_older_runner.LEDGER_TABLE} table: it was not built by the older runner"
        )
    step = _ledger_step(schema, _runner_steps(connection, schema))
    for table in ("conversations", "agent_skills"):
        if not _catalog.relation_exists(connection, schema, table):
            raise AdoptionRefusedError(schema, f"has no {table} table, which the wake tables depend on")
    live = _catalog.read_table_shapes(connection, schema, _older_runner.WAKE_TABLES)
    difference = _catalog.first_difference(_older_runner.shape_after_step(step), live)
    if difference is not None:
        raise AdoptionRefusedError(schema, f"its ledger says step {step}, but {difference}")
    _require_rows_later_revisions_accept(connection, schema, step)
    return step


def _runner_steps(connection: Connection, schema: str) -> list[tuple[int, str | None]]:
    rows = connection.execute(
        text(
            f"SELECT version, description FROM {_qualified(schema, _older_runner.LEDGER_TABLE)} "
            "WHERE package = :package ORDER BY version"
        ),
        {"package": _older_runner.LEDGER_PACKAGE},
    )
    return [(version, description) for version, description in rows]


def _ledger_step(schema: str, recorded: list[tuple[int, str | None]]) -> int:
    for expected_version, (version, description) in enumerate(recorded, start=1):
        if version != expected_version:
            raise AdoptionRefusedError(
                schema, f"the ledger's agent_wake steps skip from {expected_version - 1} to {version}"
            )
        if version > len(_older_runner.STEPS):
            raise AdoptionRefusedError(
                schema, f"the ledger records agent_wake step {version}, past the runner's last step (6)"
            )
        if description != _older_runner.STEPS[version - 1]:
            raise AdoptionRefusedError(
                schema,
                f"the ledger's step {version} is {description!r}, the runner's is {_older_runner.STEPS[version - 1]!r}",
            )
    return len(recorded)


def _require_rows_later_revisions_accept(connection: Connection, schema: str, step: int) -> None:
    fires = _qualified(schema, "wake_fires")
    if step == 2:
        webhook_fires = connection.execute(
            text(f"SELECT count(*) FROM {fires} WHERE webhook_subscription_id IS NOT NULL")
        ).scalar_one()
        if webhook_fires:
            raise AdoptionRefusedError(
                schema,
                f"{webhook_fires} fires name a webhook subscription, and step 3 adds the foreign key to a table "
                "it creates empty: set their webhook_subscription_id to NULL first",
            )
    if step >= 2:
        # As the unique index sees them: NULL periods are never equal to each other.
        duplicated = connection.execute(
            text(
                f"SELECT count(*) FROM (SELECT 1 FROM {fires} "
                "WHERE schedule_id IS NOT NULL AND scheduled_fire_at IS NOT NULL "
                "GROUP BY conversation_id, schedule_id, scheduled_fire_at HAVING count(*) > 1) AS duplicated"
            )
        ).scalar_one()
        if duplicated:
            raise AdoptionRefusedError(
                schema,
                f"{duplicated} schedule periods have more than one fire, and revision agent_wake_0007 makes them "
                "unique: keep one fire per (conversation_id, schedule_id, scheduled_fire_at) first",
            )


def _current_revisions(connection: Connection, schema: str) -> tuple[str, ...]:
    if not _catalog.relation_exists(connection, schema, "alembic_version"):
        return ()
    context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    return tuple(sorted(context.get_current_heads()))


def _revisions_after(*current: str) -> tuple[str, ...]:
    """Our revisions from ``current`` (exclusive) to head, in the order they run."""
    script = ScriptDirectory.from_config(alembic_config())
    return tuple(
        revision.revision
        for revision in reversed(list(script.iterate_revisions("heads", current or "base", implicit_base=True)))
    )


def _qualified(schema: str, table: str) -> str:
    # Both are checked identifiers (validate_schema_name, our own constants).
    return f'"{schema}"."{table}"'

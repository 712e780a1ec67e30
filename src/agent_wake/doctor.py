"""What is wrong with one schema of a deployment, found without changing
anything: ``agent-wake doctor`` runs :func:`examine_schema` on each schema.

The checks: the schema is at our head revision; the live tables equal the
models (Alembic's own comparison, server defaults included; for the
distributed layout of :mod:`agent_wake.distribution`, the constraints it
changes by design are left out); no index of
ours is left INVALID by a failed concurrent build; the partition guard
refuses an unscoped statement on an engine built as a service builds it;
no ``dispatching`` fire is older than ``stale_after``; no row belongs to a
conversation that no longer exists; every stored ``schedule_config``
still validates (types registered by an application are not known to the
command and are counted as unchecked).
"""

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, pool, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_wake import _older_runner, distribution, maintenance
from agent_wake.database import create_engine_and_session_factory
from agent_wake.errors import InvalidInputError, PartitionScopeError
from agent_wake.migration_config import alembic_config
from agent_wake.models import Base, WakeFire
from agent_wake.schedule_configs import validate_schedule_config

__all__ = ["SchemaReport", "examine_schema"]

# How many refused configs a report names; the count covers them all.
SHOWN_CONFIGS: Final = 5
_CONFIG_BATCH: Final = 1000


@dataclass
class SchemaReport:
    """``findings`` need an operator; ``notes`` are what was checked and found fine."""

    schema: str
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"ok: {note}" for note in self.notes] + [f"FOUND: {finding}" for finding in self.findings]


async def examine_schema(engine: AsyncEngine, url: str, schema: str, *, stale_after: timedelta) -> SchemaReport:
    """Run every check on ``schema`` and report; reads only.

    ``engine`` is a plain engine on the database (no guard needed); ``url``
    builds the guarded engine of the guard check. Costs a catalog
    comparison, one count per check, and a scan of ``agent_wake_schedules``.
    """
    report = SchemaReport(schema)
    async with engine.connect() as connection:
        at_head = await connection.run_sync(_check_revision, schema, report)
        if at_head:
            await connection.run_sync(_check_models, schema, report)
            await connection.run_sync(_check_indexes, schema, report)
            await connection.run_sync(_check_stale_fires, schema, stale_after, report)
            await connection.run_sync(_check_configs, schema, report)
        await connection.rollback()
    if at_head:
        await _check_guard_and_orphans(url, schema, report)
    return report


def _check_revision(connection: Connection, schema: str, report: SchemaReport) -> bool:
    tables = connection.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = ANY(:names)"
        ),
        {"schema": schema, "names": ["alembic_version", *_older_runner.WAKE_TABLES]},
    ).scalars()
    present = set(tables)
    if "alembic_version" not in present:
        if present:
            report.findings.append("it has wake tables but no alembic_version: run `agent-wake adopt` (or stamp it)")
        else:
            report.findings.append("it has no agent-wake tables: run `agent-wake upgrade` on it")
        return False
    current = set(MigrationContext.configure(connection, opts={"version_table_schema": schema}).get_current_heads())
    head = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    if current != head:
        report.findings.append(
            f"it is at {', '.join(sorted(current)) or 'no revision'}, head is {', '.join(sorted(head))}: "
            "run `agent-wake upgrade`"
        )
        return False
    report.notes.append(f"at head ({', '.join(sorted(head))})")
    return True


def _check_models(connection: Connection, schema: str, report: SchemaReport) -> None:
    connection.execute(text("SELECT set_config('search_path', :schema, true)"), {"schema": f'"{schema}"'})
    # Reflection treats the dialect's default schema as "no schema", which is
    # how the models name their tables; the dialect is shared, hence the restore.
    saved = connection.dialect.default_schema_name
    connection.dialect.default_schema_name = schema
    try:
        context = MigrationContext.configure(
            connection, opts={"compare_server_default": True, "include_name": _only_wake_tables}
        )
        differences = compare_metadata(context, Base.metadata)
        if distribution.is_rekeyed(connection, schema):
            differences = [each for each in differences if _object_name(each) not in distribution.REKEYED_NAMES]
            report.notes.append("the tables have the distributed layout (agent-wake distribute)")
    finally:
        connection.dialect.default_schema_name = saved
    if differences:
        report.findings.append(
            f"the tables differ from the models: {_shown_difference(differences[0])}"
            + (f" (and {len(differences) - 1} more)" if len(differences) > 1 else "")
        )
    else:
        report.notes.append("the tables equal the models")


def _only_wake_tables(name: str | None, type_: str, parent_names: Any) -> bool:
    return type_ != "table" or name in _older_runner.WAKE_TABLES


def _object_name(difference: Any) -> str | None:
    # A constraint, foreign key or index difference is (kind, object, ...); a column one is a list.
    if isinstance(difference, list):
        return None
    return getattr(difference[1], "name", None)


def _shown_difference(difference: Any) -> str:
    # compare_metadata gives tuples, or lists of tuples for column changes.
    first = difference[0] if isinstance(difference, list) else difference
    return " ".join(str(part) for part in first[:3])


def _check_indexes(connection: Connection, schema: str, report: SchemaReport) -> None:
    invalid = (
        connection.execute(
            text(
                "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE n.nspname = :schema AND t.relname = ANY(:tables) AND NOT x.indisvalid ORDER BY 1"
            ),
            {"schema": schema, "tables": list(_older_runner.WAKE_TABLES)},
        )
        .scalars()
        .all()
    )
    if invalid:
        report.findings.append(
            f"INVALID indexes, left by a failed concurrent build: {', '.join(invalid)} "
            "(drop them with DROP INDEX CONCURRENTLY and run `agent-wake upgrade` again)"
        )
    else:
        report.notes.append("no invalid index")


def _check_stale_fires(connection: Connection, schema: str, stale_after: timedelta, report: SchemaReport) -> None:
    stale = connection.execute(
        text(
            f'SELECT count(*) FROM "{schema}".wake_fires '
            "WHERE status = 'dispatching' AND actual_fired_at < now() - CAST(:age AS interval)"
        ),
        {"age": stale_after},
    ).scalar_one()
    if stale:
        report.findings.append(
            f"{stale} fires have been dispatching for more than {stale_after}: a worker died mid-dispatch "
            "(finalize them with WakeFireRepository.list_stale_dispatching and finalize_failed)"
        )
    else:
        report.notes.append(f"no fire dispatching for more than {stale_after}")


def _check_configs(connection: Connection, schema: str, report: SchemaReport) -> None:
    refused: list[str] = []
    unchecked = 0
    checked = 0
    after: tuple[Any, Any] | None = None
    while True:
        batch = connection.execute(
            text(
                "SELECT conversation_id, schedule_id, schedule_type, schedule_config "
                f'FROM "{schema}".agent_wake_schedules '
                "WHERE (CAST(:after_conversation AS uuid) IS NULL "
                "OR (conversation_id, schedule_id) > (:after_conversation, :after_schedule)) "
                "ORDER BY conversation_id, schedule_id LIMIT :limit"
            ),
            {
                "after_conversation": after[0] if after else None,
                "after_schedule": after[1] if after else None,
                "limit": _CONFIG_BATCH,
            },
        ).all()
        for conversation_id, schedule_id, schedule_type, config in batch:
            try:
                validate_schedule_config(schedule_type, config)
                checked += 1
            except InvalidInputError as exc:
                if exc.field == "schedule_type":
                    unchecked += 1
                else:
                    refused.append(f"{conversation_id}/{schedule_id} ({schedule_type}) {exc}")
        if len(batch) < _CONFIG_BATCH:
            break
        after = (batch[-1][0], batch[-1][1])
    if refused:
        shown = "; ".join(refused[:SHOWN_CONFIGS])
        report.findings.append(f"{len(refused)} schedule configs no longer validate: {shown}")
    else:
        report.notes.append(f"{checked} schedule configs validate")
    if unchecked:
        report.notes.append(f"{unchecked} schedules of types this command does not know were not checked")


async def _check_guard_and_orphans(url: str, schema: str, report: SchemaReport) -> None:
    engine, sessions = create_engine_and_session_factory(url, schema=schema, poolclass=pool.NullPool)
    try:
        async with sessions() as session:
            try:
                await session.execute(select(func.count()).select_from(WakeFire))
            except PartitionScopeError:
                report.notes.append("the partition guard refuses a statement that names no conversation")
            else:
                report.findings.append("the partition guard let a statement naming no conversation through")
        orphans = await maintenance.delete_orphans(sessions, dry_run=True)
    finally:
        await engine.dispose()
    if orphans.total:
        report.findings.append(
            f"{orphans.fires} fires, {orphans.schedules} schedules and {orphans.subscriptions} subscriptions belong "
            "to conversations that no longer exist: `agent-wake gc-orphans`"
        )
    else:
        report.notes.append("no orphan rows")

"""The distributed layout: the wake tables keyed by ``conversation_id`` in
every constraint, and, on Citus, distributed by it (``agent-wake distribute``).

Citus refuses a unique constraint or a foreign key between distributed
tables that leaves out the distribution column, and a composite foreign key
with ``ON DELETE SET NULL``. :func:`distribute_schema` therefore, in a
schema at our head:

1. **re-keys** (on any PostgreSQL): the foreign keys between the wake
   tables become composite, ``(conversation_id, x)`` → ``(conversation_id,
   y)``, keeping their names; ``ON DELETE CASCADE`` stays, ``SET NULL``
   becomes ``NO ACTION`` and the repositories clear the references before a
   delete instead. The standalone ``UNIQUE (schedule_id)``, ``(fire_id)``
   and ``(subscription_id)`` are dropped (ids are UUIDv7 made by the
   application; the primary keys still hold, with ``conversation_id``), and
   ``idx_webhook_subs_subscription`` keeps the receiver's lookup by bare id
   on an index;
2. **distributes** (only where the ``citus`` extension is installed):
   ``agent_skills`` becomes a reference table, the three wake tables are
   distributed by ``conversation_id`` and colocated, and their rows move
   into the shards.

The re-keyed layout works on plain PostgreSQL too, with the same
repositories, so a database can be re-keyed (and tested) before it moves.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, text

from agent_wake.database import validate_schema_name
from agent_wake.errors import AgentWakeError

__all__ = ["Distribution", "DistributionRefusedError", "distribute_schema", "is_rekeyed"]

LOCK_TIMEOUT: Final = "5s"

# Each foreign key between the wake tables, and how the re-keyed layout declares it.
_REKEYED_FOREIGN_KEYS: Final = (
    (
        "wake_fires",
        "wake_fires_schedule_fk",
        "FOREIGN KEY (conversation_id, schedule_id) REFERENCES agent_wake_schedules (conversation_id, schedule_id) "
        "ON DELETE CASCADE",
    ),
    (
        "wake_fires",
        "wake_fires_webhook_subscription_fk",
        "FOREIGN KEY (conversation_id, webhook_subscription_id) "
        "REFERENCES webhook_subscriptions (conversation_id, subscription_id)",
    ),
    (
        "agent_wake_schedules",
        "agent_wake_schedules_context_from_fk",
        "FOREIGN KEY (conversation_id, context_from_schedule_id) "
        "REFERENCES agent_wake_schedules (conversation_id, schedule_id)",
    ),
)
_STANDALONE_UNIQUES: Final = (
    ("agent_wake_schedules", "agent_wake_schedules_schedule_id_key"),
    ("wake_fires", "wake_fires_fire_id_key"),
    ("webhook_subscriptions", "webhook_subscriptions_subscription_id_key"),
)
_SKILL_FOREIGN_KEYS: Final = (
    ("agent_wake_schedules", "agent_wake_schedules_skill_fk", "skill_id"),
    ("webhook_subscriptions", "webhook_subscriptions_default_skill_fk", "default_skill_id"),
)
# A reference to a row of another conversation cannot survive the re-keying.
_CROSS_CONVERSATION_REFERENCES: Final = (
    (
        "fires naming a schedule of another conversation",
        "SELECT count(*) FROM wake_fires f JOIN agent_wake_schedules s ON s.schedule_id = f.schedule_id "
        "WHERE s.conversation_id <> f.conversation_id",
    ),
    (
        "fires naming a webhook subscription of another conversation",
        "SELECT count(*) FROM wake_fires f JOIN webhook_subscriptions w "
        "ON w.subscription_id = f.webhook_subscription_id WHERE w.conversation_id <> f.conversation_id",
    ),
    (
        "schedules taking context from a schedule of another conversation",
        "SELECT count(*) FROM agent_wake_schedules s JOIN agent_wake_schedules source "
        "ON source.schedule_id = s.context_from_schedule_id WHERE source.conversation_id <> s.conversation_id",
    ),
)
# Referenced tables first: a distributed table's foreign keys must point at distributed or reference tables.
_DISTRIBUTION_ORDER: Final = ("agent_wake_schedules", "webhook_subscriptions", "wake_fires")


class DistributionRefusedError(AgentWakeError):
    """The schema cannot take the distributed layout as it is; ``reason`` says why. Nothing was changed."""

    def __init__(self, schema: str, reason: str) -> None:
        super().__init__(f"schema {schema}: {reason}")
        self.schema = schema
        self.reason = reason


@dataclass(frozen=True)
class Distribution:
    """What :func:`distribute_schema` did (or, on a dry run, would do) to a schema."""

    schema: str
    rekeyed: bool
    distributed: bool
    citus: bool
    dry_run: bool


def is_rekeyed(connection: Connection, schema: str) -> bool:
    """Whether the schema's wake tables have the re-keyed layout (its fires' schedule key is composite)."""
    definition = connection.execute(
        text(
            "SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = 'wake_fires' AND k.conname = 'wake_fires_schedule_fk'"
        ),
        {"schema": schema},
    ).scalar()
    return definition is not None and definition.startswith("FOREIGN KEY (conversation_id, schedule_id)")


def distribute_schema(connection: Connection, schema: str, *, dry_run: bool = False) -> Distribution:
    """Give ``schema``'s wake tables the distributed layout; rerunning it finishes what is left.

    Refuses (:class:`DistributionRefusedError`, nothing changed) a schema
    without the wake tables, and one with a reference across conversations.
    The re-keying takes ACCESS EXCLUSIVE on the three tables for the
    catalog changes only (the new foreign keys are added ``NOT VALID`` and
    validated after a commit, and the bare-id index is built
    ``CONCURRENTLY``), waiting at most ``LOCK_TIMEOUT`` for each lock. The
    distribution copies every row into the shards in one transaction,
    holding its tables' locks meanwhile: run it in a maintenance window
    sized to the data. ``connection`` must have no transaction open.
    """
    validate_schema_name(schema)
    if connection.in_transaction():
        connection.commit()
    with _in_schema(connection, schema):
        present = connection.execute(
            text(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relname = ANY(:tables)"
            ),
            {"schema": schema, "tables": list(_DISTRIBUTION_ORDER)},
        ).scalar_one()
        if present != len(_DISTRIBUTION_ORDER):
            raise DistributionRefusedError(
                schema, "does not have the three wake tables: run `agent-wake upgrade` first"
            )
        citus = connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'citus'")).first() is not None
        rekey = not is_rekeyed(connection, schema)
        distribute = citus and not _is_distributed(connection, schema)
        if rekey:
            _require_no_cross_conversation_reference(connection, schema)
        connection.commit()
        if not dry_run:
            if rekey:
                _rekey(connection)
            if distribute:
                _distribute(connection, schema)
    return Distribution(schema, rekeyed=rekey, distributed=distribute, citus=citus, dry_run=dry_run)


@contextlib.contextmanager
def _in_schema(connection: Connection, schema: str) -> Iterator[None]:
    saved = connection.execute(text("SELECT current_setting('search_path')")).scalar_one()
    connection.execute(text("SELECT set_config('search_path', :schema, false)"), {"schema": f'"{schema}"'})
    connection.commit()
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(text("SELECT set_config('search_path', :saved, false)"), {"saved": saved})
        connection.commit()


def _require_no_cross_conversation_reference(connection: Connection, schema: str) -> None:
    for what, query in _CROSS_CONVERSATION_REFERENCES:
        found = connection.execute(text(query)).scalar_one()
        if found:
            raise DistributionRefusedError(
                schema, f"{found} {what}: a key that includes conversation_id cannot hold them; fix those rows first"
            )


def _rekey(connection: Connection) -> None:
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    for table, name, definition in _REKEYED_FOREIGN_KEYS:
        connection.execute(
            text(f"ALTER TABLE {table} DROP CONSTRAINT {name}, ADD CONSTRAINT {name} {definition} NOT VALID")
        )
    for table, name in _STANDALONE_UNIQUES:
        connection.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {name}"))
    connection.commit()
    for table, name, _ in _REKEYED_FOREIGN_KEYS:
        connection.execute(text(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}"))
        connection.commit()
    autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
    autocommit.execute(
        text(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_webhook_subs_subscription "
            "ON webhook_subscriptions (subscription_id)"
        )
    )


def _is_distributed(connection: Connection, schema: str) -> bool:
    found = connection.execute(
        text(
            "SELECT count(*) FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relname = ANY(:tables)"
        ),
        {"schema": schema, "tables": list(_DISTRIBUTION_ORDER)},
    ).scalar_one()
    return bool(found)


def _distribute(connection: Connection, schema: str) -> None:
    # A reference table linked by a foreign key to a local table turns that
    # table into a Citus local table, which cannot then be distributed: the
    # skill keys are dropped around the change and added back after it.
    for table, name, _ in _SKILL_FOREIGN_KEYS:
        connection.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {name}"))
    skills_kind = connection.execute(
        text("SELECT partmethod FROM pg_dist_partition WHERE logicalrelid = to_regclass('agent_skills')")
    ).scalar()
    if skills_kind is None:
        connection.execute(text("SELECT create_reference_table('agent_skills')"))
    first = _DISTRIBUTION_ORDER[0]
    for table in _DISTRIBUTION_ORDER:
        colocation = "" if table == first else f", colocate_with => '{schema}.{first}'"
        connection.execute(text(f"SELECT create_distributed_table('{schema}.{table}', 'conversation_id'{colocation})"))
    for table, name, column in _SKILL_FOREIGN_KEYS:
        connection.execute(
            text(
                f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({column}) "
                "REFERENCES agent_skills (skill_id) ON DELETE SET NULL"
            )
        )
    connection.commit()
    # Only once every table linked to them is distributed: before that, a
    # truncate of one cascades into the local rows of the others.
    for table in (*_DISTRIBUTION_ORDER, "agent_skills"):
        connection.execute(text(f"SELECT truncate_local_data_after_distributing_table('{schema}.{table}')"))
    connection.commit()

"""Every statement the repositories and the maintenance jobs send more than
once, built once with bind parameters and found by name in :data:`PREBUILT`.

Built once, a call skips building the statement and its cache key (a third
of a ``get``'s client time). The text of each is fixed whatever the values,
batches included (``unnest`` over one array per column), so PostgreSQL
plans it once and the partition guard decides once. ``tests/test_statement_sql.py``
pins the SQL of every entry, and the tick benchmark checks its plans, the
generic plan included.

Two rules hold for all of them:

- **Rows come back as stored.** A statement that returns model rows loads
  them with ``populate_existing``, so an object the session already holds
  is overwritten with what the database returned. DML that returns rows is
  Core DML on the table, loaded through :func:`returning_rows`: ORM-enabled
  DML would run the ORM's ``synchronize_session``, whose default "evaluate"
  writes the SET values into held objects even when no row matched.
- **Constants a partial index depends on are literals** (``status =
  'active'``), via :func:`constant`: under a generic plan a bound ``$n``
  cannot prove the index predicate, and the claim becomes a sequential scan.

The tick's statements also run on the session's driver connection, skipping
SQLAlchemy's cursor layer (:func:`for_driver`): compiled once from the same
entry, for the asyncpg dialect; the engine's listeners, the partition guard
among them, are still shown each one.
"""

import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Executable,
    Integer,
    Interval,
    LargeBinary,
    Table,
    Text,
    all_,
    and_,
    any_,
    bindparam,
    column,
    delete,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    table,
    tuple_,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY, REGCLASS, UUID
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import FromClause, Select, TableValuedAlias, TypedReturnsRows
from sqlalchemy.types import TypeEngine

from agent_wake import enums
from agent_wake.models import PARTITION_COLUMN, Base, WakeFire, WakeSchedule, WebhookSubscription
from agent_wake.partition_guard import span_reason, spans_partitions
from agent_wake.standins import Conversation

__all__ = ["PREBUILT", "RESCHEDULED_COLUMNS", "DriverStatement", "constant", "for_driver", "returning_rows", "span_of"]

_Model = TypeVar("_Model", bound=Base)
_UUID: Final = UUID(as_uuid=True)
_INSTANT: Final = DateTime(timezone=True)
_PLAIN_VALUE: Final = re.compile(r"^[a-z_]+$")


def table_of(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def constant(value: str) -> ColumnElement[str]:
    """``value`` as an SQL literal, for enum values a partial index's predicate names."""
    if not _PLAIN_VALUE.match(value):
        raise ValueError(f"not a plain enum value: {value!r}")
    return literal_column(f"'{value}'", Text())


def returning_rows(model: type[_Model], statement: Insert | Update | Delete) -> TypedReturnsRows[_Model]:
    """``statement ... RETURNING`` every column, loaded as ``model`` objects as stored."""
    loading = select(model).from_statement(statement.returning(*table_of(model).c))
    return cast(TypedReturnsRows[_Model], loading.execution_options(populate_existing=True))


def as_stored(statement: Select[Any]) -> Select[Any]:
    return statement.execution_options(populate_existing=True)


def unnest_rows(name: str, columns: Mapping[str, TypeEngine[Any]]) -> TableValuedAlias:
    """``unnest($name_col1::type1[], ...) AS name(col1, ...)``: a batch as rows, one array parameter per column.

    Parameters are named ``<name>_<column>``: an UPDATE reserves the bare
    column names for its SET clause.
    """
    arrays = [bindparam(f"{name}_{column}", type_=ARRAY(column_type)) for column, column_type in columns.items()]
    return func.unnest(*arrays).table_valued(*columns).render_derived(name=name)


_FIRES: Final = table_of(WakeFire)
_SCHEDULES: Final = table_of(WakeSchedule)


def _key_of(model: type[Base], id_column: str, *, parameter_prefix: str = "") -> ColumnElement[bool]:
    """The row (conversation_id, ``id_column``), from parameters of those names.

    An UPDATE reserves the bare column names for its SET clause: its key
    parameters take ``parameter_prefix="target_"``.
    """
    table = table_of(model)
    return (table.c[PARTITION_COLUMN] == bindparam(f"{parameter_prefix}{PARTITION_COLUMN}", type_=_UUID)) & (
        table.c[id_column] == bindparam(f"{parameter_prefix}{id_column}", type_=_UUID)
    )


def _keyed(
    prefix: str,
    model: type[Base],
    id_column: str,
    newest_first: tuple[str, ...],
    *,
    unlinking: Update | None = None,
) -> dict[str, Executable]:
    """get, list_for_conversation and delete of one row kind, by (conversation_id, id).

    ``unlinking`` (an UPDATE of the rows that name the deleted one, see
    :func:`_unlinking`) runs in the DELETE's own statement, as a CTE. Every
    DELETE's key parameters are therefore named ``target_<column>``, as an
    UPDATE's are: SQLAlchemy would send a parameter named like a column of
    the updated table as a value to SET.
    """
    table = table_of(model)
    deleting = delete(table).where(_key_of(model, id_column, parameter_prefix="target_")).returning(table.c[id_column])
    return {
        f"{prefix}.get": as_stored(select(model).where(_key_of(model, id_column))),
        f"{prefix}.list_for_conversation": as_stored(
            select(model)
            .where(table.c[PARTITION_COLUMN] == bindparam(PARTITION_COLUMN, type_=_UUID))
            .order_by(*(table.c[column].desc() for column in newest_first))
            .limit(bindparam("limit", type_=Integer))
        ),
        f"{prefix}.delete": deleting if unlinking is None else deleting.add_cte(unlinking.cte("unlinked")),
    }


def _unlinking(referring: Table, column: str, id_parameter: str, *, keep: Mapping[str, Any]) -> Update:
    """``UPDATE referring SET column = NULL`` in the rows of the conversation
    (``target_conversation_id``) that name the row ``id_parameter`` is deleting:
    what ``ON DELETE SET NULL`` does on the reference layout, done by the
    statement itself, because on the re-keyed one
    (:mod:`agent_wake.distribution`) that key is ``NO ACTION``.

    In the DELETE's own statement it is correct on both layouts: PostgreSQL
    checks a ``NO ACTION`` key at the end of the statement, after the CTE has
    cleared the references (and the reference layout's SET NULL then finds
    none); Citus runs it on the conversation's shard. ``keep`` sets columns to
    themselves, so that a row changes only as SET NULL would change it
    (``date_updated`` stays).
    """
    return (
        update(referring)
        .where(
            referring.c[PARTITION_COLUMN] == bindparam(f"target_{PARTITION_COLUMN}", type_=_UUID),
            referring.c[column] == bindparam(id_parameter, type_=_UUID),
        )
        .values({column: null(), **keep})
    )


def _creating(model: type[_Model], columns: tuple[str, ...]) -> TypedReturnsRows[_Model]:
    """``INSERT`` of one row with every column the repository sets (None included, so the text is
    fixed), the others left to their server defaults, returned as stored."""
    table = table_of(model)
    return returning_rows(
        model, pg_insert(table).values({column: bindparam(column, type_=table.c[column].type) for column in columns})
    )


# The columns create() sets; date_created and date_updated are the server's.
SCHEDULE_CREATED_COLUMNS: Final = (
    "conversation_id",
    "schedule_id",
    "user_id",
    "agent_id",
    "skill_id",
    "schedule_type",
    "schedule_config",
    "task_prompt",
    "execution_mode",
    "status",
    "next_fire_at",
    "name",
    "missed_fire_policy",
    "context_from_schedule_id",
    "include_conversation_history",
)
SUBSCRIPTION_CREATED_COLUMNS: Final = (
    "conversation_id",
    "subscription_id",
    "user_id",
    "agent_id",
    "default_skill_id",
    "name",
    "secret_ciphertext",
    "allowed_source_pattern",
    "execution_mode",
    "task_prompt_template",
    "verification_scheme",
    "status",
    "rate_limit_per_minute",
)


def _dispatching_fire(source: Select[Any]) -> PgInsert:
    """``INSERT INTO wake_fires ... SELECT`` of ``dispatching`` fires, one per row of ``source``.

    ``source`` selects (conversation_id, fire_id, schedule_id,
    webhook_subscription_id, scheduled_fire_at, actual_fired_at).
    """
    columns = [
        "conversation_id",
        "fire_id",
        "schedule_id",
        "webhook_subscription_id",
        "scheduled_fire_at",
        "actual_fired_at",
        "status",
    ]
    return pg_insert(table_of(WakeFire)).from_select(columns, source.add_columns(constant("dispatching")))


def _dispatching_from(source: type[WakeSchedule] | type[WebhookSubscription], id_column: str) -> Executable:
    """One fire from its source's row in the same conversation: nothing when the source is elsewhere."""
    table = table_of(source)
    source_id = table.c[id_column]
    fire_source = (source_id, null()) if source is WakeSchedule else (null(), source_id)
    # The conversation_id as a parameter, not the source row's column: with the
    # column, Citus pushes the INSERT ... SELECT down to the shard, where its
    # RETURNING wake_fires.* fails ("missing FROM-clause entry"); with the
    # parameter it reads the source on its shard and inserts through the coordinator.
    row = select(
        bindparam(PARTITION_COLUMN, type_=_UUID),
        bindparam("fire_id", type_=_UUID),
        *fire_source,
        bindparam("scheduled_fire_at", type_=_INSTANT),
        func.coalesce(bindparam("actual_fired_at", type_=_INSTANT), func.now()),
    ).where(_key_of(source, id_column))
    return returning_rows(WakeFire, _dispatching_fire(row))


def conditional_update(
    model: type[_Model], id_column: str, columns: tuple[str, ...], allowed_statuses: tuple[str, ...] | None
) -> Executable:
    """The row (``target_conversation_id``, ``target_<id_column>``) set to the parameters
    ``new_<column>``, only if its status is one of ``allowed_statuses`` (any, when None)."""
    table = table_of(model)
    statement = update(table).where(_key_of(model, id_column, parameter_prefix="target_"))
    if allowed_statuses is not None:
        statement = statement.where(table.c.status.in_([constant(status) for status in allowed_statuses]))
    values = {column: bindparam(f"new_{column}", type_=table.c[column].type) for column in columns}
    return returning_rows(model, statement.values(values))


def _batch_update(model: type[_Model], id_column: str, batch: str, columns: Mapping[str, TypeEngine[Any]]) -> Update:
    """``UPDATE ... FROM unnest(...) AS batch(conversation_id, id_column, *columns)``: each
    row of the batch (any conversations) sets ``columns`` of its row, in one statement.

    The batch's conversations, as one array, also pin the partition for the guard.
    """
    table = table_of(model)
    rows = unnest_rows(batch, {PARTITION_COLUMN: _UUID, id_column: _UUID, **columns})
    return (
        update(table)
        .where(
            table.c[PARTITION_COLUMN] == any_(bindparam(f"{batch}_{PARTITION_COLUMN}", type_=ARRAY(_UUID))),
            table.c[PARTITION_COLUMN] == rows.c[PARTITION_COLUMN],
            table.c[id_column] == rows.c[id_column],
        )
        .values({column: rows.c[column] for column in columns})
    )


def _finalizing_batch(columns: tuple[str, ...]) -> Executable:
    """Many ``dispatching`` fires (any conversations) finalized in one ``UPDATE ... FROM unnest``."""
    statement = _batch_update(WakeFire, "fire_id", "outcome", {column: _FIRES.c[column].type for column in columns})
    return returning_rows(WakeFire, statement.where(_FIRES.c.status == constant("dispatching")))


# The columns each finalization writes, in the order the repository validates them.
SUCCESS_COLUMNS: Final = ("status", "output_text", "latency_ms", "display_suppressed")
FAILURE_COLUMNS: Final = ("status", "error", "latency_ms")

_claimed_fire = unnest_rows(
    "claimed_fire",
    {"conversation_id": _UUID, "fire_id": _UUID, "schedule_id": _UUID, "scheduled_fire_at": _INSTANT},
)
_STATUSES: Final = bindparam("statuses", type_=ARRAY(Text()))
# What the claim's reschedule returns: the key and the columns it changes (the rest is as locked).
RESCHEDULED_COLUMNS: Final = (
    "conversation_id",
    "schedule_id",
    "next_fire_at",
    "status",
    "last_fired_at",
    "date_updated",
)
# Active schedules due at the parameter ``now``, oldest period first.
_DUE_FIRST: Final = (
    select(WakeSchedule)
    .where(_SCHEDULES.c.status == constant("active"), _SCHEDULES.c.next_fire_at <= bindparam("now", type_=_INSTANT))
    .order_by(WakeSchedule.next_fire_at, WakeSchedule.schedule_id)
    .limit(bindparam("limit", type_=Integer))
)

# On Citus, claim_due (WakeScheduleRepository) asks the catalog once per connection whether the
# schedules are hash-distributed; if so it finds the due schedules' shards with an unlocked scan, and
# locks them one shard at a time: Citus refuses FOR UPDATE on a statement that spans shards.
_EXTENSIONS: Final = table("pg_extension", column("extname", Text()))
_DISTRIBUTED_TABLES: Final = table(
    "pg_dist_partition", column("logicalrelid", REGCLASS()), column("partmethod", Text())
)
# Resolved on the connection's search_path, as the statements' unqualified table names are.
_SCHEDULES_RELATION: Final = sql_cast(constant(_SCHEDULES.name), REGCLASS())


def _due_shards(*, after: bool) -> Select[Any]:
    """Up to ``limit`` active schedules due at ``now``, oldest period first, as (conversation_id,
    its shard, next_fire_at, schedule_id): the first page, or the one after (``after_next_fire_at``,
    ``after_schedule_id``). Takes no locks. Citus only: the shard comes from its
    ``get_shard_id_for_distribution_column``."""
    shard = func.get_shard_id_for_distribution_column(_SCHEDULES_RELATION, _SCHEDULES.c.conversation_id)
    page = (
        select(
            _SCHEDULES.c.conversation_id, shard.label("shard_id"), _SCHEDULES.c.next_fire_at, _SCHEDULES.c.schedule_id
        )
        .where(_SCHEDULES.c.status == constant("active"), _SCHEDULES.c.next_fire_at <= bindparam("now", type_=_INSTANT))
        .order_by(_SCHEDULES.c.next_fire_at, _SCHEDULES.c.schedule_id)
        .limit(bindparam("limit", type_=Integer))
    )
    if after:
        after_key = tuple_(bindparam("after_next_fire_at", type_=_INSTANT), bindparam("after_schedule_id", type_=_UUID))
        page = page.where(tuple_(_SCHEDULES.c.next_fire_at, _SCHEDULES.c.schedule_id) > after_key)
    return page


_SUBSCRIPTIONS: Final = table_of(WebhookSubscription)
# Unqualified, so the conversations table on the connection's search_path: a host's own, or the stand-in.
_CONVERSATIONS: Final = cast(Table, Conversation.__table__)
_OUTPUT_STATUSES: Final = [constant(status) for status in enums.OUTPUT_FIRE_STATUSES]
# Where a maintenance job resumes: the conversation_id its last batch (or page) ended at.
_BATCH_START: Final = bindparam("after_conversation_id", type_=_UUID)
_BATCH_SIZE: Final = bindparam("batch_size", type_=Integer)
_PRUNE_CUTOFF: Final = func.now() - bindparam("older_than", type_=Interval())


def _of_conversation(table: Table) -> ColumnElement[bool]:
    return table.c[PARTITION_COLUMN] == bindparam(PARTITION_COLUMN, type_=_UUID)


def _prunable(fires: FromClause, cutoff: ColumnElement[Any]) -> ColumnElement[bool]:
    """The fires of ``fires`` that ``prune_fires`` deletes: fired before ``cutoff``, not
    ``dispatching``, and not their schedule's latest fire with output (latest by
    ``actual_fired_at``, then ``fire_id``), which a context-from reader needs.

    The later output is looked up through ``idx_wake_fires_schedule_time``, from the fire's
    instant on, in the fire's own conversation (on the re-keyed layout a schedule id is unique
    per conversation only). That conversation is compared with ``IS NOT DISTINCT FROM`` (the same
    on these NOT NULL columns), which no index serves: as ``=`` it would make
    ``idx_wake_fires_schedule_period`` (conversation, schedule, period) look the better index,
    and that one reads the schedule's fires from its first period on, for every candidate.
    """
    later = _FIRES.alias("later_output")
    later_output = exists().where(
        later.c.conversation_id.is_not_distinct_from(fires.c.conversation_id),
        later.c.schedule_id == fires.c.schedule_id,
        later.c.status.in_(_OUTPUT_STATUSES),
        tuple_(later.c.actual_fired_at, later.c.fire_id) > tuple_(fires.c.actual_fired_at, fires.c.fire_id),
    )
    return and_(
        fires.c.actual_fired_at < cutoff,
        fires.c.status != constant("dispatching"),
        or_(fires.c.schedule_id.is_(None), fires.c.status.not_in(_OUTPUT_STATUSES), later_output),
    )


def _locked_batch(
    id_column: str, candidate: FromClause, criteria: Sequence[ColumnElement[bool]], order: Sequence[ColumnElement[Any]]
) -> FromClause:
    """The first ``batch_size`` rows of ``candidate`` (an alias of the table) that meet ``criteria``,
    in ``order``, that no other transaction holds (``FOR UPDATE SKIP LOCKED`` skips a held row,
    never waits for it), as rows ``chosen(conversation_id, <id_column>)`` to join the table on.

    The walk starts at ``after_conversation_id`` on an index that leads with conversation_id
    (``order``), so each batch starts where the last one stopped: a run reads each row about once
    whatever the batch size, and only the rows the last batch's conversation keeps (or skipped)
    are read again. The keys come back as one array of rows, unnested: PostgreSQL estimates a
    function's rows at a fixed 100, so the generic plan finds each through the primary key.
    Joined to the batch directly, it would guess a tenth of the table for the LIMIT and read the
    whole table; an array of bare ids would need an index on the id alone, which the re-keyed
    layout does not have (and would reach a row of another conversation with the same id).
    """
    locked = (
        select(tuple_(candidate.c[PARTITION_COLUMN], candidate.c[id_column]).label("locked_key"))
        .where(candidate.c[PARTITION_COLUMN] >= _BATCH_START, *criteria)
        .order_by(*order)
        .limit(_BATCH_SIZE)
        .with_for_update(skip_locked=True)
    )
    return (
        func.unnest(func.array(locked.scalar_subquery()))
        .table_valued(column(PARTITION_COLUMN, _UUID), column(id_column, _UUID))
        .render_derived(name="chosen", with_types=True)
    )


def _of_batch(table: Table, id_column: str, chosen: FromClause) -> ColumnElement[bool]:
    return and_(table.c[PARTITION_COLUMN] == chosen.c[PARTITION_COLUMN], table.c[id_column] == chosen.c[id_column])


def _primary_key_order(candidate: FromClause, id_column: str) -> tuple[ColumnElement[Any], ...]:
    return (candidate.c[PARTITION_COLUMN], candidate.c[id_column])


def _pruning() -> Executable:
    """A batch of ``prune_fires``, in ``idx_wake_fires_conv_time`` order: the cutoff is checked in
    the index, so the heap is read only for old fires. Returns each deleted fire's conversation_id."""
    candidate = _FIRES.alias("candidate")
    chosen = _locked_batch(
        "fire_id",
        candidate,
        [_prunable(candidate, bindparam("cutoff", type_=_INSTANT))],
        [candidate.c.conversation_id, candidate.c.actual_fired_at.desc()],
    )
    return delete(_FIRES).where(_of_batch(_FIRES, "fire_id", chosen)).returning(_FIRES.c[PARTITION_COLUMN])


def _orphaned(rows: FromClause) -> ColumnElement[bool]:
    return ~exists().where(_CONVERSATIONS.c.conversation_id == rows.c[PARTITION_COLUMN])


def _counting_orphans(table: Table) -> Select[Any]:
    return select(func.count()).select_from(table).where(_orphaned(table))


def _deleting_orphans(table: Table, id_column: str, *referring: tuple[FromClause, str]) -> Executable:
    """A batch of ``delete_orphans`` on ``table``; returns each deleted row's conversation_id.

    A row that a row of its conversation still names, in a ``referring`` (table, column), waits for
    a later run (a fire the fires' batches skipped, a schedule whose context the unlinking batches
    skipped, or one written since): deleting it would reach, by ON DELETE CASCADE or SET NULL, a
    row no batch locked, or break a NO ACTION key of the re-keyed layout.
    """
    candidate = table.alias("candidate")
    still_named = [
        ~exists().where(
            rows.c[PARTITION_COLUMN] == candidate.c[PARTITION_COLUMN], rows.c[name] == candidate.c[id_column]
        )
        for rows, name in referring
    ]
    chosen = _locked_batch(
        id_column, candidate, [_orphaned(candidate), *still_named], _primary_key_order(candidate, id_column)
    )
    return delete(table).where(_of_batch(table, id_column, chosen)).returning(table.c[PARTITION_COLUMN])


def _unlinking_orphans() -> Executable:
    """A batch of ``delete_orphans``' first pass: clears ``context_from_schedule_id`` of orphan
    schedules, so that the schedules' batches can delete a source and its readers in any order
    (the re-keyed layout's key is NO ACTION). Returns each cleared row's conversation_id."""
    candidate = _SCHEDULES.alias("candidate")
    chosen = _locked_batch(
        "schedule_id",
        candidate,
        [_orphaned(candidate), candidate.c.context_from_schedule_id.is_not(None)],
        _primary_key_order(candidate, "schedule_id"),
    )
    return (
        update(_SCHEDULES)
        .where(_of_batch(_SCHEDULES, "schedule_id", chosen))
        .values(context_from_schedule_id=null())
        .returning(_SCHEDULES.c[PARTITION_COLUMN])
    )


def _secrets_page(*, after: bool) -> Select[Any]:
    """Up to ``batch_size`` subscriptions' secrets in primary-key order: the first page, or the one
    after (``after_conversation_id``, ``after_subscription_id``). Takes no locks."""
    key = (_SUBSCRIPTIONS.c.conversation_id, _SUBSCRIPTIONS.c.subscription_id)
    page = select(*key, _SUBSCRIPTIONS.c.secret_ciphertext).order_by(*key).limit(_BATCH_SIZE)
    if after:
        page = page.where(tuple_(*key) > tuple_(_BATCH_START, bindparam("after_subscription_id", type_=_UUID)))
    return page


def _reencrypting() -> Executable:
    """Each row of the batch (``rotated``: key, the ciphertext read, the new one) gets its new
    ciphertext only if it still holds the one read and no other transaction holds it (``FOR UPDATE
    SKIP LOCKED`` in ``still_old``): neither a concurrent change nor a held row is waited for or
    overwritten. Returns the subscription_id of each row written.

    The batch's conversations, as one array, pin both references to the table for the guard.
    """
    rotated = unnest_rows(
        "rotated",
        {
            PARTITION_COLUMN: _UUID,
            "subscription_id": _UUID,
            "old_ciphertext": LargeBinary(),
            "new_ciphertext": LargeBinary(),
        },
    )
    conversations = bindparam(f"rotated_{PARTITION_COLUMN}", type_=ARRAY(_UUID))
    locked = _SUBSCRIPTIONS.alias("locked")
    still_old = (
        select(locked.c.conversation_id, locked.c.subscription_id, rotated.c.new_ciphertext)
        .join_from(
            locked,
            rotated,
            and_(
                locked.c.conversation_id == rotated.c.conversation_id,
                locked.c.subscription_id == rotated.c.subscription_id,
                locked.c.secret_ciphertext == rotated.c.old_ciphertext,
            ),
        )
        .where(locked.c.conversation_id == any_(conversations))
        .with_for_update(of=locked, skip_locked=True)
        .subquery("still_old")
    )
    return (
        update(_SUBSCRIPTIONS)
        .where(
            _SUBSCRIPTIONS.c.conversation_id == any_(conversations),
            _SUBSCRIPTIONS.c.conversation_id == still_old.c.conversation_id,
            _SUBSCRIPTIONS.c.subscription_id == still_old.c.subscription_id,
        )
        .values(secret_ciphertext=still_old.c.new_ciphertext)
        .returning(_SUBSCRIPTIONS.c.subscription_id)
    )


PREBUILT: Final[dict[str, Executable]] = {
    **_keyed(
        "schedules",
        WakeSchedule,
        "schedule_id",
        ("date_created", "schedule_id"),
        # Not the schedule itself: the DELETE must still find its row (a row the statement
        # updated is not deleted by it), and it goes with its own reference anyway.
        unlinking=_unlinking(
            _SCHEDULES,
            "context_from_schedule_id",
            "target_schedule_id",
            keep={"date_updated": _SCHEDULES.c.date_updated},
        ).where(_SCHEDULES.c.schedule_id != bindparam("target_schedule_id", type_=_UUID)),
    ),
    **_keyed("fires", WakeFire, "fire_id", ("actual_fired_at", "fire_id")),
    **_keyed(
        "subscriptions",
        WebhookSubscription,
        "subscription_id",
        ("date_created", "subscription_id"),
        unlinking=_unlinking(_FIRES, "webhook_subscription_id", "target_subscription_id", keep={}),
    ),
    "schedules.create": _creating(WakeSchedule, SCHEDULE_CREATED_COLUMNS),
    "subscriptions.create": _creating(WebhookSubscription, SUBSCRIPTION_CREATED_COLUMNS),
    "schedules.list_active_for_conversation": as_stored(
        select(WakeSchedule)
        .where(WakeSchedule.conversation_id == bindparam(PARTITION_COLUMN, type_=_UUID))
        .where(_SCHEDULES.c.status == constant("active"))
        .order_by(WakeSchedule.next_fire_at.asc().nulls_last(), WakeSchedule.schedule_id)
        .limit(bindparam("limit", type_=Integer))
    ),
    "schedules.count_active_for_conversation": select(func.count())
    .select_from(_SCHEDULES)
    .where(_SCHEDULES.c.conversation_id == bindparam(PARTITION_COLUMN, type_=_UUID))
    .where(_SCHEDULES.c.status == constant("active")),
    "schedules.source_exists": select(_SCHEDULES.c.schedule_id).where(_key_of(WakeSchedule, "schedule_id")),
    # The status changes and fixed-column writes (update() builds its own: its columns are the caller's).
    "schedules.set_next_fire_if_active": conditional_update(
        WakeSchedule, "schedule_id", ("next_fire_at",), ("active",)
    ),
    "schedules.set_status_unless_expired": conditional_update(
        WakeSchedule, "schedule_id", ("status", "next_fire_at"), ("active", "paused")
    ),
    "schedules.set_status": conditional_update(WakeSchedule, "schedule_id", ("status", "next_fire_at"), None),
    "subscriptions.set_status": conditional_update(WebhookSubscription, "subscription_id", ("status",), None),
    "subscriptions.set_secret": conditional_update(
        WebhookSubscription, "subscription_id", ("secret_ciphertext",), None
    ),
    "subscriptions.record_fire_if_active": conditional_update(
        WebhookSubscription, "subscription_id", ("last_fired_at",), ("active",)
    ),
    "schedules.claim_and_reschedule": returning_rows(
        WakeSchedule,
        update(_SCHEDULES)
        .where(
            _key_of(WakeSchedule, "schedule_id", parameter_prefix="target_"),
            _SCHEDULES.c.status == constant("active"),
            _SCHEDULES.c.next_fire_at == bindparam("expected_next_fire", type_=_INSTANT),
        )
        .values(
            next_fire_at=bindparam("computed_next_fire", type_=_INSTANT),
            status=bindparam("new_status", type_=Text()),
            last_fired_at=bindparam("now", type_=_INSTANT),
        ),
    ),
    "schedules.list_due": as_stored(_DUE_FIRST.execution_options(**spans_partitions("tick: scan for due schedules"))),
    # The tick's three statements (WakeScheduleRepository.claim_due), and the top-up
    # lock it sends only when schedules whose next_fire failed took places in the batch.
    "schedules.claim_lock": as_stored(
        _DUE_FIRST.with_for_update(skip_locked=True).execution_options(**spans_partitions("tick: claim due schedules"))
    ),
    "schedules.claim_lock_excluding": as_stored(
        _DUE_FIRST.where(_SCHEDULES.c.schedule_id != all_(bindparam("seen", type_=ARRAY(_UUID))))
        .with_for_update(skip_locked=True)
        .execution_options(**spans_partitions("tick: claim due schedules"))
    ),
    # On Citus, in their place: whether the schedules are hash-distributed (once per connection), then
    # the unlocked scan for the due schedules' shards, and the locking SELECT over the conversations
    # of one shard (a single-shard statement, which Citus lets take row locks).
    "schedules.citus_installed": select(exists().where(_EXTENSIONS.c.extname == constant("citus"))),
    "schedules.hash_distributed": select(
        exists().where(
            _DISTRIBUTED_TABLES.c.logicalrelid == _SCHEDULES_RELATION, _DISTRIBUTED_TABLES.c.partmethod == constant("h")
        )
    ),
    "schedules.claim_scan_sharded": _due_shards(after=False).execution_options(
        **spans_partitions("tick: find the shards of due schedules")
    ),
    "schedules.claim_scan_sharded_after": _due_shards(after=True).execution_options(
        **spans_partitions("tick: find the shards of due schedules")
    ),
    "schedules.claim_lock_among": as_stored(
        _DUE_FIRST.where(
            _SCHEDULES.c.conversation_id == any_(bindparam("conversation_ids", type_=ARRAY(_UUID))),
            _SCHEDULES.c.schedule_id != all_(bindparam("seen", type_=ARRAY(_UUID))),
        ).with_for_update(skip_locked=True)
    ),
    # A period that already has its fire (a schedule re-armed at an instant it fired for) gets none.
    "schedules.claim_fires": _dispatching_fire(
        select(
            _claimed_fire.c.conversation_id,
            _claimed_fire.c.fire_id,
            _claimed_fire.c.schedule_id,
            null(),
            _claimed_fire.c.scheduled_fire_at,
            bindparam("now", type_=_INSTANT),
        )
    )
    .on_conflict_do_nothing(
        index_elements=["conversation_id", "schedule_id", "scheduled_fire_at"],
        index_where=_FIRES.c.schedule_id.is_not(None),
    )
    .returning(_FIRES.c.schedule_id, _FIRES.c.fire_id),
    "schedules.claim_reschedule": _batch_update(
        WakeSchedule,
        "schedule_id",
        "claimed",
        {"next_fire_at": _INSTANT, "status": Text(), "last_fired_at": _INSTANT},
    ).returning(*(_SCHEDULES.c[column] for column in RESCHEDULED_COLUMNS)),
    "fires.list_for_schedule": as_stored(
        select(WakeFire)
        .where(_FIRES.c.conversation_id == bindparam(PARTITION_COLUMN, type_=_UUID))
        .where(_FIRES.c.schedule_id == bindparam("schedule_id", type_=_UUID))
        .order_by(WakeFire.actual_fired_at.desc(), WakeFire.fire_id.desc())
        .limit(bindparam("limit", type_=Integer))
    ),
    "fires.latest_for_schedule": as_stored(
        select(WakeFire)
        .where(_FIRES.c.conversation_id == bindparam(PARTITION_COLUMN, type_=_UUID))
        .where(_FIRES.c.schedule_id == bindparam("schedule_id", type_=_UUID))
        .where(_FIRES.c.status == any_(_STATUSES))
        .order_by(WakeFire.actual_fired_at.desc(), WakeFire.fire_id.desc())
        .limit(1)
    ),
    "fires.count_in_window": select(func.count())
    .select_from(_FIRES)
    .where(_FIRES.c.conversation_id == bindparam(PARTITION_COLUMN, type_=_UUID))
    .where(_FIRES.c.actual_fired_at >= bindparam("since", type_=_INSTANT))
    .where(_FIRES.c.status == any_(_STATUSES)),
    "fires.create_dispatching_from_schedule": _dispatching_from(WakeSchedule, "schedule_id"),
    "fires.create_dispatching_from_subscription": _dispatching_from(WebhookSubscription, "subscription_id"),
    "fires.finalize_success": conditional_update(WakeFire, "fire_id", SUCCESS_COLUMNS, ("dispatching",)),
    "fires.finalize_failed": conditional_update(WakeFire, "fire_id", FAILURE_COLUMNS, ("dispatching",)),
    "fires.finalize_success_batch": _finalizing_batch(SUCCESS_COLUMNS),
    "fires.finalize_failed_batch": _finalizing_batch(FAILURE_COLUMNS),
    "fires.list_stale_dispatching": as_stored(
        select(WakeFire)
        .where(_FIRES.c.status == constant("dispatching"))
        .where(_FIRES.c.actual_fired_at < bindparam("older_than", type_=_INSTANT))
        .order_by(WakeFire.actual_fired_at, WakeFire.fire_id)
        .limit(bindparam("limit", type_=Integer))
        .execution_options(**spans_partitions("recovery: find fires left dispatching"))
    ),
    # Two rows at most: enough to tell an id two conversations hold (the re-keyed layout allows it).
    "subscriptions.find_by_id": as_stored(
        select(WebhookSubscription)
        .where(WebhookSubscription.subscription_id == bindparam("subscription_id", type_=_UUID))
        .limit(2)
        .execution_options(**spans_partitions("webhook receiver: look up a subscription by id"))
    ),
    "subscriptions.secret_ciphertext": select(table_of(WebhookSubscription).c.secret_ciphertext).where(
        _key_of(WebhookSubscription, "subscription_id")
    ),
    # The operator's jobs (agent_wake.maintenance). purge_conversation's, one conversation each:
    "fires.purge_conversation": delete(_FIRES).where(_of_conversation(_FIRES)),
    "schedules.purge_conversation": delete(_SCHEDULES)
    .where(_of_conversation(_SCHEDULES))
    .returning(_SCHEDULES.c.schedule_id),
    "subscriptions.purge_conversation": delete(_SUBSCRIPTIONS)
    .where(_of_conversation(_SUBSCRIPTIONS))
    .returning(_SUBSCRIPTIONS.c.subscription_id),
    # prune_fires: the cutoff and the count, from one now(); then the batches.
    "fires.count_prunable": select(_PRUNE_CUTOFF.label("cutoff"), func.count())
    .select_from(_FIRES)
    .where(_prunable(_FIRES, _PRUNE_CUTOFF))
    .execution_options(**spans_partitions("maintenance: count the fires prune_fires would delete")),
    "fires.prune": _pruning().execution_options(**spans_partitions("maintenance: prune old fires")),
    # delete_orphans: fires, then the schedules' context references, then schedules, then subscriptions.
    "fires.count_orphans": _counting_orphans(_FIRES).execution_options(
        **spans_partitions("maintenance: count fires of deleted conversations")
    ),
    "schedules.count_orphans": _counting_orphans(_SCHEDULES).execution_options(
        **spans_partitions("maintenance: count schedules of deleted conversations")
    ),
    "subscriptions.count_orphans": _counting_orphans(_SUBSCRIPTIONS).execution_options(
        **spans_partitions("maintenance: count webhook subscriptions of deleted conversations")
    ),
    "fires.delete_orphans": _deleting_orphans(_FIRES, "fire_id").execution_options(
        **spans_partitions("maintenance: delete fires of deleted conversations")
    ),
    "schedules.unlink_orphans": _unlinking_orphans().execution_options(
        **spans_partitions("maintenance: clear the context references of schedules of deleted conversations")
    ),
    "schedules.delete_orphans": _deleting_orphans(
        _SCHEDULES,
        "schedule_id",
        (_FIRES, "schedule_id"),
        (_SCHEDULES.alias("reader"), "context_from_schedule_id"),
    ).execution_options(**spans_partitions("maintenance: delete schedules of deleted conversations")),
    "subscriptions.delete_orphans": _deleting_orphans(
        _SUBSCRIPTIONS, "subscription_id", (_FIRES, "webhook_subscription_id")
    ).execution_options(**spans_partitions("maintenance: delete webhook subscriptions of deleted conversations")),
    # rotate_secrets: the count, the pages of secrets, the conditional writes (partition-scoped).
    "subscriptions.count": select(func.count())
    .select_from(_SUBSCRIPTIONS)
    .execution_options(**spans_partitions("maintenance: count webhook subscriptions for a key rotation")),
    "subscriptions.first_secrets": _secrets_page(after=False).execution_options(
        **spans_partitions("maintenance: read webhook secrets for a key rotation")
    ),
    "subscriptions.secrets_after": _secrets_page(after=True).execution_options(
        **spans_partitions("maintenance: read webhook secrets for a key rotation")
    ),
    "subscriptions.reencrypt_secrets": _reencrypting(),
}


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A :data:`PREBUILT` entry as the asyncpg driver takes it: ``$n`` SQL and the parameter names in order."""

    sql: str
    parameters: tuple[str, ...]
    execution_options: Mapping[str, Any]  # the entry's, its span among them

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] for name in self.parameters]


def span_of(statement: DriverStatement) -> AbstractContextManager[object]:
    """The statement's own span, entered around what the guard is shown (none: a no-op)."""
    reason = span_reason(statement.execution_options)
    return spans_partitions(reason) if reason is not None else nullcontext()


@cache
def for_driver(name: str) -> DriverStatement:
    """The entry ``name`` compiled once for asyncpg: the text SQLAlchemy sends for it.

    Only statements whose values bind as they are, with no post-compile
    expansion, qualify; a result is plain rows in the statement's column order.
    """
    statement = PREBUILT[name]
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=asyncpg_dialect()))  # type: ignore[no-untyped-call]
    if compiled.literal_execute_params or compiled.post_compile_params or compiled.positiontup is None:
        raise ValueError(f"{name} does not compile to fixed SQL with positional parameters")
    return DriverStatement(compiled.string, tuple(compiled.positiontup), statement.get_execution_options())

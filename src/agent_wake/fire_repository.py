"""Partition-scoped access to ``wake_fires``, the fire history."""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar, cast

import uuid_utils.compat as uuid_utils
from sqlalchemy import (
    DateTime,
    Integer,
    Table,
    any_,
    bindparam,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.selectable import TypedReturnsRows

from agent_wake import _validation as check
from agent_wake import enums
from agent_wake._batch import unnest_rows
from agent_wake.errors import InvalidInputError, NotFoundError, translate_database_errors
from agent_wake.models import WakeFire, WakeSchedule, WebhookSubscription
from agent_wake.partition_guard import spans_partitions

__all__ = ["FireFailure", "FireSuccess", "WakeFireRepository"]

_MAX_OUTPUT_LENGTH: Final = 1_000_000
_MAX_LATENCY_MS: Final = 2**31 - 1
# (conversation_id, fire_id)
_FireKey = tuple[uuid.UUID, uuid.UUID]

# The hot statements are built once, with bind parameters: a call then skips
# building the statement and its cache key (for create_dispatching and
# finalize that was half their client time, bench/ab_revision.py).
_FIRES: Final = cast(Table, WakeFire.__table__)
_GET: Final = select(WakeFire).where(
    WakeFire.conversation_id == bindparam("conversation_id"), WakeFire.fire_id == bindparam("fire_id")
)
_LIST_FOR_CONVERSATION: Final = (
    select(WakeFire)
    .where(WakeFire.conversation_id == bindparam("conversation_id"))
    .order_by(WakeFire.actual_fired_at.desc(), WakeFire.fire_id.desc())
    .limit(bindparam("limit", type_=Integer))
)
_COUNT_IN_WINDOW: Final = (
    select(func.count())
    .select_from(WakeFire)
    .where(WakeFire.conversation_id == bindparam("conversation_id"), WakeFire.actual_fired_at >= bindparam("since"))
)


def _loaded(statement: Insert | Update) -> TypedReturnsRows[WakeFire]:
    """The fires ``statement`` writes, as stored, loaded as objects; one the session holds is refreshed.

    The statement is Core DML on the table because, executed with a
    parameter dict, an ORM-enabled INSERT is a bulk INSERT of that dict. The
    UPDATE is built the same way so that both return the row as stored.
    """
    loading = select(WakeFire).from_statement(statement.returning(*_FIRES.c))
    return cast(TypedReturnsRows[WakeFire], loading.execution_options(populate_existing=True))


def _dispatching_from(
    source_columns: tuple[Any, Any],
    source_conversation: InstrumentedAttribute[uuid.UUID],
    source_id: InstrumentedAttribute[uuid.UUID],
) -> TypedReturnsRows[WakeFire]:
    """``INSERT ... SELECT`` of a ``dispatching`` fire from its source's row in the same conversation.

    ``source_columns`` are the fire's (schedule_id, webhook_subscription_id):
    the source's id column and NULL. Parameters: conversation_id,
    source_id, fire_id, scheduled_fire_at, actual_fired_at (NULL: ``now()``).
    """
    row = select(
        *source_columns,
        bindparam("conversation_id", type_=UUID(as_uuid=True)),
        bindparam("fire_id", type_=UUID(as_uuid=True)),
        bindparam("scheduled_fire_at", type_=DateTime(timezone=True)),
        func.coalesce(bindparam("actual_fired_at", type_=DateTime(timezone=True)), func.now()),
        literal("dispatching"),
    ).where(source_conversation == bindparam("conversation_id"), source_id == bindparam("source_id"))
    columns = [
        "schedule_id",
        "webhook_subscription_id",
        "conversation_id",
        "fire_id",
        "scheduled_fire_at",
        "actual_fired_at",
        "status",
    ]
    return _loaded(insert(_FIRES).from_select(columns, row))


def _finalizing(columns: tuple[str, ...]) -> TypedReturnsRows[WakeFire]:
    """``UPDATE`` of the ``dispatching`` fire (target_conversation_id, target_fire_id)
    setting ``columns`` from the parameters ``new_<column>``."""
    # An UPDATE reserves bind names equal to column names for its SET clause
    # (the INSERT ... SELECT above has none, so its names can be the columns').
    return _loaded(
        update(_FIRES)
        .where(
            _FIRES.c.conversation_id == bindparam("target_conversation_id"),
            _FIRES.c.fire_id == bindparam("target_fire_id"),
            _FIRES.c.status == "dispatching",
        )
        .values({column: bindparam(f"new_{column}", type_=_FIRES.c[column].type) for column in columns})
    )


_DISPATCHING_FROM_SCHEDULE: Final = _dispatching_from(
    (WakeSchedule.schedule_id, null()), WakeSchedule.conversation_id, WakeSchedule.schedule_id
)
_DISPATCHING_FROM_SUBSCRIPTION: Final = _dispatching_from(
    (null(), WebhookSubscription.subscription_id),
    WebhookSubscription.conversation_id,
    WebhookSubscription.subscription_id,
)
# One statement per set of columns a finalization writes, keyed by those
# columns in the order _success_values and _failure_values list them.
_FINALIZING: Final[dict[tuple[str, ...], TypedReturnsRows[WakeFire]]] = {
    columns: _finalizing(columns)
    for columns in (
        ("status", "output_text", "latency_ms", "display_suppressed"),
        ("status", "error", "latency_ms"),
    )
}


class WakeFireRepository:
    """Writes and reads the fires of one conversation at a time.

    Every method takes ``conversation_id`` first and puts it in the SQL's
    WHERE clause. Methods flush but never commit: the caller owns the
    transaction.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def create_dispatching(
        self,
        *,
        conversation_id: uuid.UUID,
        schedule_id: uuid.UUID | None = None,
        webhook_subscription_id: uuid.UUID | None = None,
        scheduled_fire_at: datetime | None = None,
        actual_fired_at: datetime | None = None,
        fire_id: uuid.UUID | None = None,
    ) -> WakeFire:
        """Write the in-flight ``dispatching`` row of a fire and return it.

        Exactly one source is required: ``schedule_id`` or
        ``webhook_subscription_id``, which must belong to the same
        conversation. The row is inserted by an ``INSERT ... SELECT`` from
        the source's own partition, so a source of another conversation
        inserts nothing and is refused: one round trip either way.
        ``actual_fired_at`` defaults to the transaction's ``now()``.
        """
        conversation_id = check.require_uuid("conversation_id", conversation_id)
        schedule_id = check.optional_uuid("schedule_id", schedule_id)
        webhook_subscription_id = check.optional_uuid("webhook_subscription_id", webhook_subscription_id)
        if schedule_id is not None and webhook_subscription_id is not None:
            raise InvalidInputError(
                "webhook_subscription_id", "a fire has one source: give schedule_id or this, not both"
            )
        fire_id = uuid_utils.uuid7() if fire_id is None else check.require_uuid("fire_id", fire_id)
        scheduled_fire_at = check.optional_aware("scheduled_fire_at", scheduled_fire_at)
        actual_fired_at = check.optional_aware("actual_fired_at", actual_fired_at)

        if schedule_id is not None:
            source_name = f"schedule {schedule_id}"
            source_id, statement = schedule_id, _DISPATCHING_FROM_SCHEDULE
        elif webhook_subscription_id is not None:
            source_name = f"webhook subscription {webhook_subscription_id}"
            source_id, statement = webhook_subscription_id, _DISPATCHING_FROM_SUBSCRIPTION
        else:
            raise InvalidInputError("schedule_id", "a fire needs a source: give schedule_id or webhook_subscription_id")
        parameters = {
            "conversation_id": conversation_id,
            "source_id": source_id,
            "fire_id": fire_id,
            "scheduled_fire_at": scheduled_fire_at,
            "actual_fired_at": actual_fired_at,
        }
        with translate_database_errors():
            fire: WakeFire | None = (await self._session.scalars(statement, parameters)).one_or_none()
        if fire is None:
            raise NotFoundError(f"{source_name} not found in conversation {conversation_id}")
        return fire

    async def finalize_success(
        self,
        conversation_id: uuid.UUID,
        fire_id: uuid.UUID,
        *,
        status: enums.FireStatus,
        output_text: str | None = None,
        latency_ms: int | None = None,
        display_suppressed: bool = False,
    ) -> WakeFire:
        """Move a ``dispatching`` fire to a terminal ``status`` other than ``failed``.

        Finalizing a fire that is already final changes nothing and returns
        it as stored (first finalization wins), so a retry is harmless. One
        UPDATE; one more SELECT only in that already-final case.
        """
        outcome = FireSuccess(conversation_id, fire_id, status, output_text, latency_ms, display_suppressed)
        return await self._finalize(*_success_values(outcome, ""))

    async def finalize_failed(
        self,
        conversation_id: uuid.UUID,
        fire_id: uuid.UUID,
        *,
        error: str,
        latency_ms: int | None = None,
    ) -> WakeFire:
        """Move a ``dispatching`` fire to ``failed`` with ``error``; harmless on a final fire."""
        outcome = FireFailure(conversation_id, fire_id, error, latency_ms)
        return await self._finalize(*_failure_values(outcome, ""))

    async def finalize_success_batch(self, outcomes: Sequence["FireSuccess"]) -> list[WakeFire]:
        """Finalize many ``dispatching`` fires (any conversations) in one round trip.

        Returns the fires this call finalized; fires that are unknown or
        already final are left as they are and not returned. Every outcome
        is validated before the single ``UPDATE ... FROM unnest`` runs.
        """
        rows = [
            _success_values(outcome, f"outcomes[{index}].")
            for index, outcome in enumerate(_require_outcomes(outcomes, FireSuccess))
        ]
        return await self._finalize_batch(rows)

    async def finalize_failed_batch(self, outcomes: Sequence["FireFailure"]) -> list[WakeFire]:
        """Mark many ``dispatching`` fires ``failed`` in one round trip, like
        :meth:`finalize_success_batch`."""
        rows = [
            _failure_values(outcome, f"outcomes[{index}].")
            for index, outcome in enumerate(_require_outcomes(outcomes, FireFailure))
        ]
        return await self._finalize_batch(rows)

    async def list_stale_dispatching(self, older_than: datetime, *, limit: int = 200) -> list[WakeFire]:
        """Cross-partition: fires still ``dispatching`` that started before ``older_than``, oldest first.

        Evidence of a process that died mid-dispatch, for a recovery job,
        which then finalizes them (finalizing twice is harmless). Served by
        the partial index ``idx_wake_fires_dispatching``.
        """
        statement = (
            select(WakeFire)
            .where(
                WakeFire.status == "dispatching",
                WakeFire.actual_fired_at < check.require_aware("older_than", older_than),
            )
            .order_by(WakeFire.actual_fired_at, WakeFire.fire_id)
            .limit(check.require_limit(limit))
            .execution_options(**spans_partitions("recovery: find fires left dispatching"))
        )
        return list(await self._session.scalars(statement))

    async def get(self, conversation_id: uuid.UUID, fire_id: uuid.UUID) -> WakeFire | None:
        """The fire, or ``None`` when this conversation has no such fire."""
        parameters = {
            "conversation_id": check.require_uuid("conversation_id", conversation_id),
            "fire_id": check.require_uuid("fire_id", fire_id),
        }
        return (await self._session.scalars(_GET, parameters)).one_or_none()

    async def list_for_schedule(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, *, limit: int = 50
    ) -> list[WakeFire]:
        """The schedule's fires, newest first."""
        statement = (
            select(WakeFire)
            .where(
                WakeFire.conversation_id == check.require_uuid("conversation_id", conversation_id),
                WakeFire.schedule_id == check.require_uuid("schedule_id", schedule_id),
            )
            .order_by(WakeFire.actual_fired_at.desc(), WakeFire.fire_id.desc())
            .limit(check.require_limit(limit))
        )
        return list(await self._session.scalars(statement))

    async def list_for_conversation(self, conversation_id: uuid.UUID, *, limit: int = 50) -> list[WakeFire]:
        """The conversation's fires from every source, newest first."""
        parameters = {
            "conversation_id": check.require_uuid("conversation_id", conversation_id),
            "limit": check.require_limit(limit),
        }
        return list(await self._session.scalars(_LIST_FOR_CONVERSATION, parameters))

    async def latest_for_schedule(
        self,
        conversation_id: uuid.UUID,
        schedule_id: uuid.UUID,
        *,
        statuses: Iterable[enums.FireStatus] | None = None,
    ) -> WakeFire | None:
        """The schedule's most recent fire, or ``None``.

        ``statuses`` keeps only fires in those statuses; a context-from
        reader passes ``OUTPUT_FIRE_STATUSES`` (``fired``, ``fired_silent``)
        to get the last output.
        """
        statement = select(WakeFire).where(
            WakeFire.conversation_id == check.require_uuid("conversation_id", conversation_id),
            WakeFire.schedule_id == check.require_uuid("schedule_id", schedule_id),
        )
        if statuses is not None:
            statement = statement.where(
                WakeFire.status.in_(check.require_choices("statuses", statuses, enums.FIRE_STATUSES))
            )
        statement = statement.order_by(WakeFire.actual_fired_at.desc(), WakeFire.fire_id.desc()).limit(1)
        return (await self._session.scalars(statement)).one_or_none()

    async def count_in_window(
        self,
        conversation_id: uuid.UUID,
        since: datetime,
        *,
        statuses: Iterable[enums.FireStatus] | None = None,
    ) -> int:
        """How many fires the conversation had at or after ``since`` (for rate limits and caps)."""
        parameters = {
            "conversation_id": check.require_uuid("conversation_id", conversation_id),
            "since": check.require_aware("since", since),
        }
        statement = _COUNT_IN_WINDOW
        if statuses is not None:
            statement = statement.where(
                WakeFire.status.in_(check.require_choices("statuses", statuses, enums.FIRE_STATUSES))
            )
        return int((await self._session.execute(statement, parameters)).scalar_one())

    async def _finalize(self, key: _FireKey, values: dict[str, Any]) -> WakeFire:
        conversation_id, fire_id = key
        parameters = {"target_conversation_id": conversation_id, "target_fire_id": fire_id}
        parameters.update((f"new_{column}", value) for column, value in values.items())
        with translate_database_errors():
            fire: WakeFire | None = (await self._session.scalars(_FINALIZING[tuple(values)], parameters)).one_or_none()
        if fire is not None:
            return fire
        # The first finalization's result, as stored: a copy this session
        # loaded while the fire was still dispatching must not stand in for it.
        already_final = (
            await self._session.scalars(
                _GET,
                {"conversation_id": conversation_id, "fire_id": fire_id},
                execution_options={"populate_existing": True},
            )
        ).one_or_none()
        if already_final is None:
            raise NotFoundError(f"fire {fire_id} not found in conversation {conversation_id}")
        return already_final

    async def _finalize_batch(
        self,
        rows: list[tuple[tuple[uuid.UUID, uuid.UUID], dict[str, Any]]],
    ) -> list[WakeFire]:
        if not rows:
            return []
        columns = tuple(rows[0][1])
        keys = [key for key, _ in rows]
        if len(set(keys)) != len(keys):
            raise InvalidInputError("outcomes", "names the same fire more than once")
        conversation_ids = [conversation_id for conversation_id, _ in keys]
        outcome = unnest_rows(
            "outcome",
            {
                "conversation_id": (conversation_ids, UUID(as_uuid=True)),
                "fire_id": ([fire_id for _, fire_id in keys], UUID(as_uuid=True)),
                **{column: ([values[column] for _, values in rows], _FIRES.c[column].type) for column in columns},
            },
        )
        statement = (
            update(WakeFire)
            .where(
                WakeFire.conversation_id == any_(literal(conversation_ids, ARRAY(UUID(as_uuid=True)))),
                WakeFire.conversation_id == outcome.c.conversation_id,
                WakeFire.fire_id == outcome.c.fire_id,
                WakeFire.status == "dispatching",
            )
            .values({column: outcome.c[column] for column in columns})
            .returning(WakeFire)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        with translate_database_errors():
            return list(await self._session.scalars(statement))


@dataclass(frozen=True)
class FireSuccess:
    """One outcome for :meth:`WakeFireRepository.finalize_success_batch`."""

    conversation_id: uuid.UUID
    fire_id: uuid.UUID
    status: enums.FireStatus
    output_text: str | None = None
    latency_ms: int | None = None
    display_suppressed: bool = False


@dataclass(frozen=True)
class FireFailure:
    """One outcome for :meth:`WakeFireRepository.finalize_failed_batch`."""

    conversation_id: uuid.UUID
    fire_id: uuid.UUID
    error: str
    latency_ms: int | None = None


_Outcome = TypeVar("_Outcome", FireSuccess, FireFailure)


def _require_outcomes(outcomes: object, kind: type[_Outcome]) -> list[_Outcome]:
    if not isinstance(outcomes, list | tuple):
        raise InvalidInputError("outcomes", f"must be a list of {kind.__name__}")
    for index, outcome in enumerate(outcomes):
        if not isinstance(outcome, kind):
            raise InvalidInputError(f"outcomes[{index}]", f"must be a {kind.__name__}")
    return list(outcomes)


def _fire_key(outcome: FireSuccess | FireFailure, prefix: str) -> _FireKey:
    return (
        check.require_uuid(f"{prefix}conversation_id", outcome.conversation_id),
        check.require_uuid(f"{prefix}fire_id", outcome.fire_id),
    )


def _success_values(outcome: FireSuccess, prefix: str) -> tuple[_FireKey, dict[str, Any]]:
    return _fire_key(outcome, prefix), {
        "status": check.require_choice(f"{prefix}status", outcome.status, enums.FINAL_FIRE_STATUSES),
        # An agent may answer with nothing; "" is a real, empty output.
        "output_text": check.optional_text(
            f"{prefix}output_text", outcome.output_text, max_length=_MAX_OUTPUT_LENGTH, allow_empty=True
        ),
        "latency_ms": check.optional_int(f"{prefix}latency_ms", outcome.latency_ms, minimum=0, maximum=_MAX_LATENCY_MS),
        "display_suppressed": check.require_bool(f"{prefix}display_suppressed", outcome.display_suppressed),
    }


def _failure_values(outcome: FireFailure, prefix: str) -> tuple[_FireKey, dict[str, Any]]:
    return _fire_key(outcome, prefix), {
        "status": "failed",
        "error": check.require_text(f"{prefix}error", outcome.error, max_length=_MAX_OUTPUT_LENGTH),
        "latency_ms": check.optional_int(f"{prefix}latency_ms", outcome.latency_ms, minimum=0, maximum=_MAX_LATENCY_MS),
    }

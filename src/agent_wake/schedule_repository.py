"""Partition-scoped access to ``agent_wake_schedules``."""

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import uuid_utils.compat as uuid_utils
from sqlalchemy import ColumnElement, Integer, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import _claiming, enums
from agent_wake import _validation as check
from agent_wake.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    translate_database_errors,
)
from agent_wake.models import WakeFire, WakeSchedule
from agent_wake.partition_guard import spans_partitions
from agent_wake.schedule_configs import validate_schedule_config

__all__ = ["ClaimedFire", "NextFire", "WakeScheduleRepository"]

# The caller's schedule arithmetic: the instant after the claimed period, or
# None when the schedule is finished (a one-shot).
NextFire = Callable[[WakeSchedule, datetime], datetime | None]


@dataclass(frozen=True)
class ClaimedFire:
    """One schedule claimed by :meth:`WakeScheduleRepository.claim_due` and its new fire."""

    schedule: WakeSchedule
    fire: WakeFire


_MAX_PROMPT_LENGTH: Final = 100_000
_MAX_NAME_LENGTH: Final = 500
# Statuses a schedule can be created in; "expired" is reached only by firing.
_CREATABLE_STATUSES: Final[tuple[enums.ScheduleStatus, ...]] = ("active", "paused")
_UPDATABLE_FIELDS: Final = frozenset(
    {
        "schedule_type",
        "schedule_config",
        "skill_id",
        "task_prompt",
        "execution_mode",
        "name",
        "missed_fire_policy",
        "context_from_schedule_id",
        "include_conversation_history",
    }
)


# The hottest reads are built once, with bind parameters: a call then skips
# building the statement and its cache key (a third of a get's client time).
_GET: Final = select(WakeSchedule).where(
    WakeSchedule.conversation_id == bindparam("conversation_id"),
    WakeSchedule.schedule_id == bindparam("schedule_id"),
)
_LIST_FOR_CONVERSATION: Final = (
    select(WakeSchedule)
    .where(WakeSchedule.conversation_id == bindparam("conversation_id"))
    .order_by(WakeSchedule.date_created.desc(), WakeSchedule.schedule_id.desc())
    .limit(bindparam("limit", type_=Integer))
)

_UPDATE_HINTS: Final = {
    "status": " (use pause, resume or mark_expired)",
    "next_fire_at": " (use update_next_fire_at or resume)",
}


def _this_schedule(conversation_id: uuid.UUID, schedule_id: uuid.UUID) -> ColumnElement[bool]:
    return (WakeSchedule.conversation_id == conversation_id) & (WakeSchedule.schedule_id == schedule_id)


class WakeScheduleRepository:
    """Reads and writes the wake schedules of one conversation at a time.

    Every method but :meth:`list_due` takes ``conversation_id`` first and puts
    it in the SQL's WHERE clause. Methods flush but never commit: the caller
    owns the transaction. Arguments are validated before any SQL runs; a
    database error aborts the caller's transaction and is raised as an
    :class:`~agent_wake.errors.AgentWakeError`, so rolling back leaves the
    database as it was.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def create(
        self,
        *,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        agent_id: uuid.UUID,
        schedule_type: str,
        schedule_config: Mapping[str, Any],
        next_fire_at: datetime | None = None,
        skill_id: uuid.UUID | None = None,
        task_prompt: str | None = None,
        execution_mode: enums.ExecutionMode = "inline",
        status: enums.ScheduleStatus = "active",
        name: str | None = None,
        missed_fire_policy: enums.MissedFirePolicy = "coalesce",
        context_from_schedule_id: uuid.UUID | None = None,
        include_conversation_history: bool = True,
        schedule_id: uuid.UUID | None = None,
    ) -> WakeSchedule:
        """Insert a schedule and return it; ``schedule_id`` is a new UUIDv7 unless given.

        ``schedule_config`` is checked against ``schedule_type``'s model. A
        ``context_from_schedule_id`` must name another schedule of the same
        conversation (one extra SELECT when given). One INSERT otherwise.
        """
        conversation_id = check.require_uuid("conversation_id", conversation_id)
        schedule_id = uuid_utils.uuid7() if schedule_id is None else check.require_uuid("schedule_id", schedule_id)
        status = check.require_choice("status", status, _CREATABLE_STATUSES)
        next_fire_at = check.optional_aware("next_fire_at", next_fire_at)
        if status != "active" and next_fire_at is not None:
            raise InvalidInputError("next_fire_at", "must be None unless status is 'active'")
        schedule = WakeSchedule(
            conversation_id=conversation_id,
            schedule_id=schedule_id,
            user_id=check.require_uuid("user_id", user_id),
            agent_id=check.require_uuid("agent_id", agent_id),
            skill_id=check.optional_uuid("skill_id", skill_id),
            schedule_type=check.require_slug("schedule_type", schedule_type),
            schedule_config=validate_schedule_config(schedule_type, schedule_config),
            task_prompt=check.optional_text("task_prompt", task_prompt, max_length=_MAX_PROMPT_LENGTH),
            execution_mode=check.require_choice("execution_mode", execution_mode, enums.EXECUTION_MODES),
            status=status,
            next_fire_at=next_fire_at,
            name=check.optional_text("name", name, max_length=_MAX_NAME_LENGTH),
            missed_fire_policy=check.require_choice(
                "missed_fire_policy", missed_fire_policy, enums.MISSED_FIRE_POLICIES
            ),
            context_from_schedule_id=check.optional_uuid("context_from_schedule_id", context_from_schedule_id),
            include_conversation_history=check.require_bool(
                "include_conversation_history", include_conversation_history
            ),
        )
        if schedule.context_from_schedule_id is not None:
            await self._require_context_source(conversation_id, schedule_id, schedule.context_from_schedule_id)
        self._session.add(schedule)
        with translate_database_errors():
            await self._session.flush()
        return schedule

    async def get(self, conversation_id: uuid.UUID, schedule_id: uuid.UUID) -> WakeSchedule | None:
        """The schedule, or ``None`` when this conversation has no such schedule."""
        parameters = {
            "conversation_id": check.require_uuid("conversation_id", conversation_id),
            "schedule_id": check.require_uuid("schedule_id", schedule_id),
        }
        return (await self._session.scalars(_GET, parameters)).one_or_none()

    async def list_for_conversation(self, conversation_id: uuid.UUID, *, limit: int = 200) -> list[WakeSchedule]:
        """The conversation's schedules in every status, newest first."""
        parameters = {
            "conversation_id": check.require_uuid("conversation_id", conversation_id),
            "limit": check.require_limit(limit),
        }
        return list(await self._session.scalars(_LIST_FOR_CONVERSATION, parameters))

    async def list_active_for_conversation(self, conversation_id: uuid.UUID, *, limit: int = 200) -> list[WakeSchedule]:
        """The conversation's active schedules, soonest ``next_fire_at`` first, unset last."""
        statement = (
            select(WakeSchedule)
            .where(
                WakeSchedule.conversation_id == check.require_uuid("conversation_id", conversation_id),
                WakeSchedule.status == "active",
            )
            .order_by(WakeSchedule.next_fire_at.asc().nulls_last(), WakeSchedule.schedule_id)
            .limit(check.require_limit(limit))
        )
        return list(await self._session.scalars(statement))

    async def count_active_for_conversation(self, conversation_id: uuid.UUID) -> int:
        """How many active schedules the conversation has (for per-conversation caps)."""
        statement = (
            select(func.count())
            .select_from(WakeSchedule)
            .where(
                WakeSchedule.conversation_id == check.require_uuid("conversation_id", conversation_id),
                WakeSchedule.status == "active",
            )
        )
        return int((await self._session.execute(statement)).scalar_one())

    async def update(self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, /, **changes: Any) -> WakeSchedule:
        """Change the named fields and return the schedule.

        Status changes go through :meth:`pause`, :meth:`resume` and
        :meth:`mark_expired`, and ``next_fire_at`` through
        :meth:`update_next_fire_at` (active schedules only); they are refused
        here, as are unknown fields.
        Changing only ``schedule_config`` validates it against the stored
        type (one extra SELECT).
        """
        conversation_id = check.require_uuid("conversation_id", conversation_id)
        schedule_id = check.require_uuid("schedule_id", schedule_id)
        if not changes:
            raise InvalidInputError("changes", "name at least one field to update")
        for field in changes:
            if field not in _UPDATABLE_FIELDS:
                raise InvalidInputError(
                    field,
                    "cannot be changed with update()" + _UPDATE_HINTS.get(field, ""),
                )
        values = await self._validated_changes(conversation_id, schedule_id, changes)
        return await self._update_one(conversation_id, schedule_id, values, action="update", extra_where=None)

    async def update_next_fire_at(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, next_fire_at: datetime | None
    ) -> WakeSchedule:
        """Set ``next_fire_at`` of an active schedule; refuses a paused or expired one."""
        return await self._update_one(
            check.require_uuid("conversation_id", conversation_id),
            check.require_uuid("schedule_id", schedule_id),
            {"next_fire_at": check.optional_aware("next_fire_at", next_fire_at)},
            action="set next_fire_at of",
            extra_where=WakeSchedule.status == "active",
        )

    async def pause(self, conversation_id: uuid.UUID, schedule_id: uuid.UUID) -> WakeSchedule:
        """Active → paused, clearing ``next_fire_at``; pausing a paused one changes nothing.

        Refuses an expired schedule.
        """
        return await self._update_one(
            check.require_uuid("conversation_id", conversation_id),
            check.require_uuid("schedule_id", schedule_id),
            {"status": "paused", "next_fire_at": None},
            action="pause",
            extra_where=WakeSchedule.status.in_(("active", "paused")),
        )

    async def resume(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, *, next_fire_at: datetime
    ) -> WakeSchedule:
        """Paused → active, firing next at ``next_fire_at``. Never revives an expired schedule."""
        return await self._update_one(
            check.require_uuid("conversation_id", conversation_id),
            check.require_uuid("schedule_id", schedule_id),
            {"status": "active", "next_fire_at": check.require_aware("next_fire_at", next_fire_at)},
            action="resume",
            extra_where=WakeSchedule.status.in_(("active", "paused")),
        )

    async def mark_expired(self, conversation_id: uuid.UUID, schedule_id: uuid.UUID) -> WakeSchedule:
        """Mark the schedule expired (terminal) and clear ``next_fire_at``."""
        return await self._update_one(
            check.require_uuid("conversation_id", conversation_id),
            check.require_uuid("schedule_id", schedule_id),
            {"status": "expired", "next_fire_at": None},
            action="expire",
            extra_where=None,
        )

    async def delete(self, conversation_id: uuid.UUID, schedule_id: uuid.UUID) -> None:
        """Delete the schedule; its fires go with it (ON DELETE CASCADE)."""
        statement = (
            delete(WakeSchedule)
            .where(
                _this_schedule(
                    check.require_uuid("conversation_id", conversation_id),
                    check.require_uuid("schedule_id", schedule_id),
                )
            )
            .returning(WakeSchedule.schedule_id)
        )
        with translate_database_errors():
            deleted = (await self._session.execute(statement)).scalar_one_or_none()
        if deleted is None:
            raise NotFoundError(f"schedule {schedule_id} not found in conversation {conversation_id}")

    async def claim_and_reschedule(
        self,
        *,
        conversation_id: uuid.UUID,
        schedule_id: uuid.UUID,
        expected_next_fire: datetime,
        computed_next_fire: datetime | None,
        new_status: enums.ScheduleStatus,
        now: datetime,
    ) -> bool:
        """Claim one due fire of an active schedule by compare-and-set on ``next_fire_at``.

        Sets ``next_fire_at = computed_next_fire``, ``status = new_status``
        and ``last_fired_at = now`` only if the schedule is still active
        with ``next_fire_at == expected_next_fire``. Returns whether this
        call won: of concurrent claims of one fire, exactly one does (under
        READ COMMITTED the loser waits for the winner's row lock, then sees
        the new ``next_fire_at`` and updates nothing). One UPDATE.
        """
        conversation_id = check.require_uuid("conversation_id", conversation_id)
        schedule_id = check.require_uuid("schedule_id", schedule_id)
        expected_next_fire = check.require_aware("expected_next_fire", expected_next_fire)
        computed_next_fire = check.optional_aware("computed_next_fire", computed_next_fire)
        new_status = check.require_choice("new_status", new_status, enums.SCHEDULE_STATUSES)
        now = check.require_aware("now", now)
        if new_status == "active" and computed_next_fire is None:
            raise InvalidInputError("computed_next_fire", "is required when new_status is 'active'")
        if new_status != "active" and computed_next_fire is not None:
            raise InvalidInputError("computed_next_fire", "must be None unless new_status is 'active'")
        statement = (
            update(WakeSchedule)
            .where(
                _this_schedule(conversation_id, schedule_id),
                WakeSchedule.status == "active",
                WakeSchedule.next_fire_at == expected_next_fire,
            )
            .values(next_fire_at=computed_next_fire, status=new_status, last_fired_at=now)
            .returning(WakeSchedule)
        )
        with translate_database_errors():
            claimed = (await self._session.scalars(statement)).one_or_none()
        return claimed is not None

    async def list_due(self, now: datetime, *, limit: int = 200) -> list[WakeSchedule]:
        """Cross-partition: active schedules due at ``now``, oldest ``next_fire_at`` first.

        The tick's scan over every conversation; served by the partial
        index ``idx_wake_schedules_next_fire``. Takes no locks.
        """
        statement = (
            select(WakeSchedule)
            .where(
                WakeSchedule.status == "active",
                WakeSchedule.next_fire_at <= check.require_aware("now", now),
            )
            .order_by(WakeSchedule.next_fire_at, WakeSchedule.schedule_id)
            .limit(check.require_limit(limit))
            .execution_options(**spans_partitions("tick: scan for due schedules"))
        )
        return list(await self._session.scalars(statement))

    async def claim_due(self, now: datetime, *, limit: int, next_fire: NextFire) -> list[ClaimedFire]:
        """Cross-partition: claim up to ``limit`` due schedules for this tick, in the caller's transaction.

        Takes the active schedules due at ``now`` (any conversation, oldest
        ``next_fire_at`` first) with ``FOR UPDATE SKIP LOCKED``, so
        concurrent ticks never take the same one. For each, writes one
        ``dispatching`` fire whose ``scheduled_fire_at`` is the claimed
        period, stamps ``last_fired_at = now`` and sets ``next_fire_at`` to
        ``next_fire(schedule, now)``; ``None`` marks the schedule expired.
        ``next_fire`` must return an aware instant after the claimed period
        (the next missed one for ``catch_up``, the first after ``now`` for
        ``coalesce``). A schedule for which it raises or returns anything
        else is left out of the batch, unchanged and still due, and logged
        at ERROR, so one broken schedule cannot stop the tick for everyone.
        A period that already has its fire gets no second one: the schedule
        is advanced and not returned.

        Returns the claims that got a new fire. Costs three round trips
        whatever the batch size: the locking SELECT, one
        ``INSERT ... SELECT FROM unnest`` of the fires and one
        ``UPDATE ... FROM unnest``. The locks are held until the caller
        commits; if the caller's process dies first, PostgreSQL releases them
        and nothing was claimed.
        """
        now = check.require_aware("now", now)
        limit = check.require_limit(limit)
        if not callable(next_fire):
            raise InvalidInputError("next_fire", "must be a function (schedule, now) -> datetime | None")
        due = list(await self._session.scalars(_claiming.locking_statement(now, limit)))
        planned = _claiming.plan_claims(due, now, next_fire)
        if not planned:
            return []
        with translate_database_errors():
            fires = {
                fire.schedule_id: fire
                for fire in await self._session.scalars(_claiming.fire_insert_statement(planned, now))
            }
            await self._session.scalars(_claiming.rescheduling_statement(planned, now))
        # populate_existing refreshed the planned schedules in place; keep their oldest-first order.
        return [
            ClaimedFire(claim.schedule, fires[claim.schedule.schedule_id])
            for claim in planned
            if claim.schedule.schedule_id in fires
        ]

    async def _require_context_source(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, source_id: uuid.UUID
    ) -> None:
        if source_id == schedule_id:
            raise InvalidInputError("context_from_schedule_id", "must not be the schedule itself")
        statement = select(WakeSchedule.schedule_id).where(_this_schedule(conversation_id, source_id))
        if (await self._session.execute(statement)).scalar_one_or_none() is None:
            raise InvalidInputError("context_from_schedule_id", "must be a schedule of the same conversation")

    async def _validated_changes(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        validators: dict[str, Callable[[Any], Any]] = {
            "skill_id": lambda v: check.optional_uuid("skill_id", v),
            "task_prompt": lambda v: check.optional_text("task_prompt", v, max_length=_MAX_PROMPT_LENGTH),
            "execution_mode": lambda v: check.require_choice("execution_mode", v, enums.EXECUTION_MODES),
            "name": lambda v: check.optional_text("name", v, max_length=_MAX_NAME_LENGTH),
            "missed_fire_policy": lambda v: check.require_choice("missed_fire_policy", v, enums.MISSED_FIRE_POLICIES),
            "context_from_schedule_id": lambda v: check.optional_uuid("context_from_schedule_id", v),
            "include_conversation_history": lambda v: check.require_bool("include_conversation_history", v),
        }
        for field, validate in validators.items():
            if field in changes:
                values[field] = validate(changes[field])
        if "schedule_type" in changes or "schedule_config" in changes:
            values.update(await self._validated_type_change(conversation_id, schedule_id, changes))
        if values.get("context_from_schedule_id") is not None:
            await self._require_context_source(conversation_id, schedule_id, values["context_from_schedule_id"])
        return values

    async def _validated_type_change(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        if "schedule_type" in changes and "schedule_config" in changes:
            schedule_type = check.require_slug("schedule_type", changes["schedule_type"])
            config = changes["schedule_config"]
        else:
            current = await self.get(conversation_id, schedule_id)
            if current is None:
                raise NotFoundError(f"schedule {schedule_id} not found in conversation {conversation_id}")
            if "schedule_type" in changes:
                raise InvalidInputError("schedule_config", "is required when schedule_type changes")
            schedule_type, config = current.schedule_type, changes["schedule_config"]
        return {
            "schedule_type": schedule_type,
            "schedule_config": validate_schedule_config(schedule_type, config),
        }

    async def _update_one(
        self,
        conversation_id: uuid.UUID,
        schedule_id: uuid.UUID,
        values: Mapping[str, Any],
        *,
        action: str,
        extra_where: ColumnElement[bool] | None,
    ) -> WakeSchedule:
        statement = update(WakeSchedule).where(_this_schedule(conversation_id, schedule_id))
        if extra_where is not None:
            statement = statement.where(extra_where)
        with translate_database_errors():
            updated = (await self._session.scalars(statement.values(**values).returning(WakeSchedule))).one_or_none()
        if updated is not None:
            return updated
        current = await self.get(conversation_id, schedule_id)
        if current is None:
            raise NotFoundError(f"schedule {schedule_id} not found in conversation {conversation_id}")
        raise ConflictError(f"cannot {action} schedule {schedule_id}: its status is {current.status!r}")

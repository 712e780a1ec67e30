"""The statements and the planning behind ``WakeScheduleRepository.claim_due``.

Kept apart from the repository's CRUD: this is the tick's hot path, and
every statement here has a fixed text whatever the batch size (one cached
plan, one partition-guard decision) and costs one round trip.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import uuid_utils.compat as uuid_utils
from sqlalchemy import DateTime, Select, Text, any_, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.sql.dml import Insert, Update

from agent_wake import _validation as check
from agent_wake._batch import unnest_rows
from agent_wake.errors import InvalidInputError
from agent_wake.models import WakeFire, WakeSchedule
from agent_wake.partition_guard import spans_partitions

_logger = logging.getLogger("agent_wake.schedule_repository")


@dataclass(frozen=True)
class PlannedClaim:
    schedule: WakeSchedule
    period: datetime
    following: datetime | None
    fire_id: uuid.UUID


def locking_statement(now: datetime, limit: int) -> Select[Any]:
    """The due schedules of every conversation, oldest first, locked and skipped if already locked."""
    return (
        select(WakeSchedule)
        .where(WakeSchedule.status == "active", WakeSchedule.next_fire_at <= now)
        .order_by(WakeSchedule.next_fire_at, WakeSchedule.schedule_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True, **spans_partitions("tick: claim due schedules"))
    )


def plan_claims(due: list[WakeSchedule], now: datetime, next_fire: Any) -> list[PlannedClaim]:
    """The claims to write; a schedule whose ``next_fire`` fails is left out, logged, and stays due."""
    planned = []
    for schedule in due:
        assert schedule.next_fire_at is not None  # the locking query selects only due schedules
        try:
            following = _checked_next_fire(schedule, next_fire(schedule, now))
        except Exception:
            _logger.exception(
                "claim_due: next_fire failed for schedule %s of conversation %s; it stays due and unclaimed",
                schedule.schedule_id,
                schedule.conversation_id,
            )
            continue
        planned.append(PlannedClaim(schedule, schedule.next_fire_at, following, uuid_utils.uuid7()))
    return planned


def _checked_next_fire(schedule: WakeSchedule, following: object) -> datetime | None:
    if following is None:
        return None
    checked = check.require_aware("next_fire", following)
    assert schedule.next_fire_at is not None
    if checked <= schedule.next_fire_at:
        raise InvalidInputError(
            "next_fire",
            f"returned {checked.isoformat()}, not after the claimed period {schedule.next_fire_at.isoformat()}",
        )
    return checked


def fire_insert_statement(planned: list[PlannedClaim], now: datetime) -> Insert:
    """One ``dispatching`` fire per claim; a period that already has its fire gets none."""
    rows = unnest_rows(
        "claimed_fire",
        {
            "conversation_id": ([claim.schedule.conversation_id for claim in planned], UUID(as_uuid=True)),
            "fire_id": ([claim.fire_id for claim in planned], UUID(as_uuid=True)),
            "schedule_id": ([claim.schedule.schedule_id for claim in planned], UUID(as_uuid=True)),
            "scheduled_fire_at": ([claim.period for claim in planned], DateTime(timezone=True)),
        },
    )
    return (
        insert(WakeFire)
        .from_select(
            ["conversation_id", "fire_id", "schedule_id", "scheduled_fire_at", "actual_fired_at", "status"],
            select(
                rows.c.conversation_id,
                rows.c.fire_id,
                rows.c.schedule_id,
                rows.c.scheduled_fire_at,
                literal(now, DateTime(timezone=True)),
                literal("dispatching", Text()),
            ),
        )
        .on_conflict_do_nothing(
            index_elements=["conversation_id", "schedule_id", "scheduled_fire_at"],
            index_where=WakeFire.schedule_id.is_not(None),
        )
        .returning(WakeFire)
    )


def rescheduling_statement(planned: list[PlannedClaim], now: datetime) -> Update:
    """Advance every claimed schedule in one ``UPDATE ... FROM unnest``; ``None`` expires it."""
    conversation_ids = [claim.schedule.conversation_id for claim in planned]
    claimed = unnest_rows(
        "claimed",
        {
            "conversation_id": (conversation_ids, UUID(as_uuid=True)),
            "schedule_id": ([claim.schedule.schedule_id for claim in planned], UUID(as_uuid=True)),
            "next_fire_at": ([claim.following for claim in planned], DateTime(timezone=True)),
            "status": (["active" if claim.following is not None else "expired" for claim in planned], Text()),
        },
    )
    return (
        update(WakeSchedule)
        .where(
            WakeSchedule.conversation_id == any_(literal(conversation_ids, ARRAY(UUID(as_uuid=True)))),
            WakeSchedule.conversation_id == claimed.c.conversation_id,
            WakeSchedule.schedule_id == claimed.c.schedule_id,
        )
        .values(next_fire_at=claimed.c.next_fire_at, status=claimed.c.status, last_fired_at=now)
        .returning(WakeSchedule)
        .execution_options(synchronize_session=False, populate_existing=True)
    )

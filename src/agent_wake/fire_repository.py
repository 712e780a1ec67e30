"""Partition-scoped access to ``wake_fires``, the fire history."""

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import uuid_utils.compat as uuid_utils
from sqlalchemy import ColumnElement, func, insert, literal, null, select, update
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import _validation as check
from agent_wake import enums
from agent_wake.errors import InvalidInputError, NotFoundError, translate_database_errors
from agent_wake.models import WakeFire, WakeSchedule, WebhookSubscription

__all__ = ["WakeFireRepository"]

_MAX_OUTPUT_LENGTH: Final = 1_000_000
_MAX_LATENCY_MS: Final = 2**31 - 1


def _this_fire(conversation_id: uuid.UUID, fire_id: uuid.UUID) -> ColumnElement[bool]:
    return (WakeFire.conversation_id == conversation_id) & (WakeFire.fire_id == fire_id)


def _uuid_literal(value: uuid.UUID | None) -> ColumnElement[Any]:
    return null() if value is None else literal(value, UUID(as_uuid=True))


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

        source_columns: tuple[Any, Any]  # (schedule_id, webhook_subscription_id)
        if schedule_id is not None:
            source_name = f"schedule {schedule_id}"
            source_columns = (WakeSchedule.schedule_id, null())
            source_in_partition = (WakeSchedule.conversation_id == conversation_id) & (
                WakeSchedule.schedule_id == schedule_id
            )
        elif webhook_subscription_id is not None:
            source_name = f"webhook subscription {webhook_subscription_id}"
            source_columns = (null(), WebhookSubscription.subscription_id)
            source_in_partition = (WebhookSubscription.conversation_id == conversation_id) & (
                WebhookSubscription.subscription_id == webhook_subscription_id
            )
        else:
            raise InvalidInputError(
                "schedule_id", "a fire needs a source: give schedule_id or webhook_subscription_id"
            )
        row = select(
            *source_columns,
            _uuid_literal(conversation_id),
            _uuid_literal(fire_id),
            literal(scheduled_fire_at) if scheduled_fire_at is not None else null(),
            literal(actual_fired_at) if actual_fired_at is not None else func.now(),
            literal("dispatching"),
        ).where(source_in_partition)
        statement = (
            insert(WakeFire)
            .from_select(
                [
                    "schedule_id",
                    "webhook_subscription_id",
                    "conversation_id",
                    "fire_id",
                    "scheduled_fire_at",
                    "actual_fired_at",
                    "status",
                ],
                row,
            )
            .returning(WakeFire)
        )
        with translate_database_errors():
            fire = (await self._session.scalars(statement)).one_or_none()
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
        values = {
            "status": check.require_choice("status", status, enums.FINAL_FIRE_STATUSES),
            "output_text": check.optional_text("output_text", output_text, max_length=_MAX_OUTPUT_LENGTH),
            "latency_ms": check.optional_int("latency_ms", latency_ms, minimum=0, maximum=_MAX_LATENCY_MS),
            "display_suppressed": check.require_bool("display_suppressed", display_suppressed),
        }
        return await self._finalize(conversation_id, fire_id, values)

    async def finalize_failed(
        self,
        conversation_id: uuid.UUID,
        fire_id: uuid.UUID,
        *,
        error: str,
        latency_ms: int | None = None,
    ) -> WakeFire:
        """Move a ``dispatching`` fire to ``failed`` with ``error``; harmless on a final fire."""
        values = {
            "status": "failed",
            "error": check.require_text("error", error, max_length=_MAX_OUTPUT_LENGTH),
            "latency_ms": check.optional_int("latency_ms", latency_ms, minimum=0, maximum=_MAX_LATENCY_MS),
        }
        return await self._finalize(conversation_id, fire_id, values)

    async def get(self, conversation_id: uuid.UUID, fire_id: uuid.UUID) -> WakeFire | None:
        """The fire, or ``None`` when this conversation has no such fire."""
        statement = select(WakeFire).where(
            _this_fire(
                check.require_uuid("conversation_id", conversation_id),
                check.require_uuid("fire_id", fire_id),
            )
        )
        return (await self._session.scalars(statement)).one_or_none()

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
        statement = (
            select(WakeFire)
            .where(WakeFire.conversation_id == check.require_uuid("conversation_id", conversation_id))
            .order_by(WakeFire.actual_fired_at.desc(), WakeFire.fire_id.desc())
            .limit(check.require_limit(limit))
        )
        return list(await self._session.scalars(statement))

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
        statement = (
            select(func.count())
            .select_from(WakeFire)
            .where(
                WakeFire.conversation_id == check.require_uuid("conversation_id", conversation_id),
                WakeFire.actual_fired_at >= check.require_aware("since", since),
            )
        )
        if statuses is not None:
            statement = statement.where(
                WakeFire.status.in_(check.require_choices("statuses", statuses, enums.FIRE_STATUSES))
            )
        return int((await self._session.execute(statement)).scalar_one())

    async def _finalize(self, conversation_id: Any, fire_id: Any, values: dict[str, Any]) -> WakeFire:
        conversation_id = check.require_uuid("conversation_id", conversation_id)
        fire_id = check.require_uuid("fire_id", fire_id)
        statement = (
            update(WakeFire)
            .where(_this_fire(conversation_id, fire_id), WakeFire.status == "dispatching")
            .values(**values)
            .returning(WakeFire)
        )
        with translate_database_errors():
            fire = (await self._session.scalars(statement)).one_or_none()
        if fire is not None:
            return fire
        already_final = await self.get(conversation_id, fire_id)
        if already_final is None:
            raise NotFoundError(f"fire {fire_id} not found in conversation {conversation_id}")
        return already_final

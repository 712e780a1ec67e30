"""Factories of valid, persisted rows for tests, with overrides.

Used through the pytest plugin's ``wake_factory`` fixture::

    schedule = await wake_factory.schedule(schedule_type="cron", schedule_config={"expr": "0 * * * *"})

Every row goes through the public repositories (so it is validated like
application data) and is flushed, not committed.

``conversation()`` and ``skill()`` write the stand-in ``conversations`` and
``agent_skills`` columns unless the factory is given builders of a host's
own rows (:class:`RowBuilder`; the plugin's ``wake_conversation_builder``
and ``wake_skill_builder`` fixtures)::

    async def build_conversation(session, /, **overrides):
        row = MyConversation(**{"agent_id": uuid.uuid4(), "conversation_id": uuid.uuid4(), **overrides})
        session.add(row)
        await session.flush()
        return row
"""

import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake.enums import FireStatus
from agent_wake.errors import AgentWakeError
from agent_wake.fire_repository import WakeFireRepository
from agent_wake.models import WakeFire, WakeSchedule, WebhookSubscription
from agent_wake.schedule_repository import WakeScheduleRepository
from agent_wake.secret_box import SecretBox
from agent_wake.standins import AgentSkill, Conversation
from agent_wake.webhook_repository import WebhookSubscriptionRepository

__all__ = ["RowBuilder", "WakeFactory", "build_standin_conversation", "build_standin_skill"]

DEFAULT_WEBHOOK_SECRET = "whsec_factory_default_secret"


class RowBuilder(Protocol):
    """Writes one row in ``session`` with valid defaults and the given
    ``overrides``, flushes it (never commits) and returns it."""

    def __call__(self, session: AsyncSession, /, **overrides: Any) -> Awaitable[Any]: ...


async def _flush_standin(session: AsyncSession, row: Conversation | AgentSkill, method: str) -> None:
    session.add(row)
    try:
        await session.flush()
    except DBAPIError as exc:
        table = row.__tablename__
        raise AgentWakeError(
            f"wake_factory.{method}() inserts a row of the stand-in {table} table "
            f"({', '.join(column.name for column in row.__table__.columns)}) and the database refused it: "
            f"{exc.orig}. If {table} is your own table, return a builder of its rows from a "
            f"wake_{method}_builder fixture (see agent_wake.testing.factories.RowBuilder)."
        ) from exc


async def build_standin_conversation(session: AsyncSession, /, **overrides: Any) -> Conversation:
    """A row of the stand-in ``conversations`` table; refuses (``AgentWakeError``)
    when the database's ``conversations`` does not take the stand-in's columns."""
    values: dict[str, Any] = {
        "agent_id": uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
    }
    row = Conversation(**{**values, **overrides})
    await _flush_standin(session, row, "conversation")
    return row


async def build_standin_skill(session: AsyncSession, /, **overrides: Any) -> AgentSkill:
    """A row of the stand-in ``agent_skills`` table; refuses (``AgentWakeError``)
    when the database's ``agent_skills`` does not take the stand-in's columns."""
    values: dict[str, Any] = {
        "agent_id": uuid.uuid4(),
        "skill_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "name": "factory skill",
    }
    row = AgentSkill(**{**values, **overrides})
    await _flush_standin(session, row, "skill")
    return row


class WakeFactory:
    """Builds conversations, skills, schedules, fires and subscriptions in ``session``.

    ``conversation_builder`` and ``skill_builder`` write the rows of
    :meth:`conversation` and :meth:`skill`: the stand-in tables' unless a
    host passes builders of its own tables' rows.
    """

    def __init__(
        self,
        session: AsyncSession,
        secrets: SecretBox,
        *,
        conversation_builder: RowBuilder = build_standin_conversation,
        skill_builder: RowBuilder = build_standin_skill,
    ) -> None:
        self.session = session
        self.secrets = secrets
        self.conversation_builder = conversation_builder
        self.skill_builder = skill_builder

    async def conversation(self, **overrides: Any) -> Any:
        """A conversation row from ``conversation_builder`` (a stand-in ``Conversation`` by default)."""
        return await self.conversation_builder(self.session, **overrides)

    async def skill(self, **overrides: Any) -> Any:
        """A skill row from ``skill_builder`` (a stand-in ``AgentSkill`` by default)."""
        return await self.skill_builder(self.session, **overrides)

    async def schedule(self, **overrides: Any) -> WakeSchedule:
        """An active ``interval`` schedule firing in 30 minutes, in a new conversation unless given."""
        values: dict[str, Any] = {
            "conversation_id": uuid.uuid4(),
            "user_id": uuid.uuid4(),
            "agent_id": uuid.uuid4(),
            "schedule_type": "interval",
            "schedule_config": {"seconds": 1800},
            "next_fire_at": datetime.now(UTC) + timedelta(minutes=30),
        }
        return await WakeScheduleRepository(self.session).create(**{**values, **overrides})

    async def subscription(self, **overrides: Any) -> WebhookSubscription:
        """An active webhook subscription with a known secret, in a new conversation unless given."""
        values: dict[str, Any] = {
            "conversation_id": uuid.uuid4(),
            "user_id": uuid.uuid4(),
            "agent_id": uuid.uuid4(),
            "secret": DEFAULT_WEBHOOK_SECRET,
        }
        return await WebhookSubscriptionRepository(self.session, self.secrets).create(**{**values, **overrides})

    async def fire(self, *, status: FireStatus = "dispatching", **overrides: Any) -> WakeFire:
        """A fire of a schedule (made for it unless ``schedule_id`` or
        ``webhook_subscription_id`` is given), finalized to ``status``."""
        if "schedule_id" not in overrides and "webhook_subscription_id" not in overrides:
            schedule_values = (
                {"conversation_id": overrides["conversation_id"]} if "conversation_id" in overrides else {}
            )
            schedule = await self.schedule(**schedule_values)
            overrides = {
                **overrides,
                "conversation_id": schedule.conversation_id,
                "schedule_id": schedule.schedule_id,
            }
        fires = WakeFireRepository(self.session)
        fire = await fires.create_dispatching(**overrides)
        if status == "failed":
            return await fires.finalize_failed(fire.conversation_id, fire.fire_id, error="factory failure")
        if status != "dispatching":
            return await fires.finalize_success(fire.conversation_id, fire.fire_id, status=status)
        return fire

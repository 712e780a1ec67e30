"""Factories of valid, persisted rows for tests, with overrides.

Used through the pytest plugin's ``wake_factory`` fixture::

    schedule = await wake_factory.schedule(schedule_type="cron", schedule_config={"expr": "0 * * * *"})

Every row goes through the public repositories (so it is validated like
application data) and is flushed, not committed.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake.enums import FireStatus
from agent_wake.fire_repository import WakeFireRepository
from agent_wake.models import AgentSkill, Conversation, WakeFire, WakeSchedule, WebhookSubscription
from agent_wake.schedule_repository import WakeScheduleRepository
from agent_wake.secret_box import SecretBox
from agent_wake.webhook_repository import WebhookSubscriptionRepository

__all__ = ["WakeFactory"]

DEFAULT_WEBHOOK_SECRET = "whsec_factory_default_secret"


class WakeFactory:
    """Builds conversations, skills, schedules, fires and subscriptions in ``session``."""

    def __init__(self, session: AsyncSession, secrets: SecretBox) -> None:
        self.session = session
        self.secrets = secrets

    async def conversation(self, **overrides: Any) -> Conversation:
        """A row of the stand-in ``conversations`` table."""
        values: dict[str, Any] = {
            "agent_id": uuid.uuid4(),
            "conversation_id": uuid.uuid4(),
            "user_id": uuid.uuid4(),
        }
        row = Conversation(**{**values, **overrides})
        self.session.add(row)
        await self.session.flush()
        return row

    async def skill(self, **overrides: Any) -> AgentSkill:
        """A row of the stand-in ``agent_skills`` table."""
        values: dict[str, Any] = {
            "agent_id": uuid.uuid4(),
            "skill_id": uuid.uuid4(),
            "user_id": uuid.uuid4(),
            "name": "factory skill",
        }
        row = AgentSkill(**{**values, **overrides})
        self.session.add(row)
        await self.session.flush()
        return row

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

"""Small builders of valid rows for the tests, through the public repositories."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import (
    AgentSkill,
    SecretBox,
    WakeSchedule,
    WakeScheduleRepository,
    WebhookSubscription,
    WebhookSubscriptionRepository,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def in_minutes(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


async def schedule(session: AsyncSession, conversation_id: uuid.UUID, **overrides: Any) -> WakeSchedule:
    values: dict[str, Any] = {
        "conversation_id": conversation_id,
        "user_id": uuid.uuid4(),
        "agent_id": uuid.uuid4(),
        "schedule_type": "interval",
        "schedule_config": {"seconds": 1800},
        "next_fire_at": in_minutes(30),
    }
    values.update(overrides)
    return await WakeScheduleRepository(session).create(**values)


async def subscription(
    session: AsyncSession, secrets: SecretBox, conversation_id: uuid.UUID, **overrides: Any
) -> WebhookSubscription:
    values: dict[str, Any] = {
        "conversation_id": conversation_id,
        "user_id": uuid.uuid4(),
        "agent_id": uuid.uuid4(),
        "secret": "whsec_test_secret_value",
    }
    values.update(overrides)
    return await WebhookSubscriptionRepository(session, secrets).create(**values)


async def skill(session: AsyncSession) -> AgentSkill:
    row = AgentSkill(agent_id=uuid.uuid4(), skill_id=uuid.uuid4(), user_id=uuid.uuid4(), name="triage")
    session.add(row)
    await session.flush()
    return row

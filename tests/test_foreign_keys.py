"""What the foreign keys do when their target goes away."""

import uuid

from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import (
    AgentSkill,
    SecretBox,
    WakeFireRepository,
    WakeScheduleRepository,
    WebhookSubscriptionRepository,
)
from tests import factories


async def test_deleting_a_skill_nulls_skill_id_and_default_skill_id(
    session: AsyncSession, secret_box: SecretBox
) -> None:
    skill = await factories.skill(session)
    conversation_id = uuid.uuid4()
    schedule = await factories.schedule(session, conversation_id, skill_id=skill.skill_id)
    subscription = await factories.subscription(
        session, secret_box, conversation_id, default_skill_id=skill.skill_id
    )
    await session.execute(delete(AgentSkill).where(AgentSkill.skill_id == skill.skill_id))
    session.expunge_all()
    reloaded = await WakeScheduleRepository(session).get(conversation_id, schedule.schedule_id)
    assert reloaded is not None
    assert reloaded.skill_id is None
    reloaded_subscription = await WebhookSubscriptionRepository(session, secret_box).get(
        conversation_id, subscription.subscription_id
    )
    assert reloaded_subscription is not None
    assert reloaded_subscription.default_skill_id is None


async def test_deleting_a_schedule_removes_its_fires(session: AsyncSession) -> None:
    schedule = await factories.schedule(session, uuid.uuid4())
    fires = WakeFireRepository(session)
    fire = await fires.create_dispatching(
        conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id
    )
    await WakeScheduleRepository(session).delete(schedule.conversation_id, schedule.schedule_id)
    remaining = await session.execute(
        text("SELECT count(*) FROM wake_fires WHERE conversation_id = :c AND fire_id = :f"),
        {"c": schedule.conversation_id, "f": fire.fire_id},
    )
    assert remaining.scalar_one() == 0


async def test_deleting_a_subscription_keeps_its_fires_without_a_source(
    session: AsyncSession, secret_box: SecretBox
) -> None:
    subscription = await factories.subscription(session, secret_box, uuid.uuid4())
    fires = WakeFireRepository(session)
    fire = await fires.create_dispatching(
        conversation_id=subscription.conversation_id, webhook_subscription_id=subscription.subscription_id
    )
    await WebhookSubscriptionRepository(session, secret_box).delete(
        subscription.conversation_id, subscription.subscription_id
    )
    session.expunge_all()
    kept = await fires.get(subscription.conversation_id, fire.fire_id)
    assert kept is not None
    assert (kept.schedule_id, kept.webhook_subscription_id) == (None, None)


async def test_deleting_a_context_source_nulls_the_readers_link(session: AsyncSession) -> None:
    conversation_id = uuid.uuid4()
    source = await factories.schedule(session, conversation_id)
    reader = await factories.schedule(session, conversation_id, context_from_schedule_id=source.schedule_id)
    schedules = WakeScheduleRepository(session)
    await schedules.delete(conversation_id, source.schedule_id)
    session.expunge_all()
    reloaded = await schedules.get(conversation_id, reader.schedule_id)
    assert reloaded is not None
    assert reloaded.context_from_schedule_id is None

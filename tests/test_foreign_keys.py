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
from agent_wake.testing.factories import WakeFactory


async def test_deleting_a_skill_nulls_skill_id_and_default_skill_id(
    wake_factory: WakeFactory, wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    skill = await wake_factory.skill()
    conversation_id = uuid.uuid4()
    schedule = await wake_factory.schedule(conversation_id=conversation_id, skill_id=skill.skill_id)
    subscription = await wake_factory.subscription(conversation_id=conversation_id, default_skill_id=skill.skill_id)
    await wake_session.execute(delete(AgentSkill).where(AgentSkill.skill_id == skill.skill_id))
    wake_session.expunge_all()
    reloaded = await WakeScheduleRepository(wake_session).get(conversation_id, schedule.schedule_id)
    assert reloaded is not None
    assert reloaded.skill_id is None
    reloaded_subscription = await WebhookSubscriptionRepository(wake_session, wake_secrets).get(
        conversation_id, subscription.subscription_id
    )
    assert reloaded_subscription is not None
    assert reloaded_subscription.default_skill_id is None


async def test_deleting_a_schedule_removes_its_fires(wake_factory: WakeFactory, wake_session: AsyncSession) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    fires = WakeFireRepository(wake_session)
    fire = await fires.create_dispatching(conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id)
    await WakeScheduleRepository(wake_session).delete(schedule.conversation_id, schedule.schedule_id)
    remaining = await wake_session.execute(
        text("SELECT count(*) FROM wake_fires WHERE conversation_id = :c AND fire_id = :f"),
        {"c": schedule.conversation_id, "f": fire.fire_id},
    )
    assert remaining.scalar_one() == 0


async def test_deleting_a_subscription_keeps_its_fires_without_a_source(
    wake_factory: WakeFactory, wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    subscription = await wake_factory.subscription(conversation_id=uuid.uuid4())
    fires = WakeFireRepository(wake_session)
    fire = await fires.create_dispatching(
        conversation_id=subscription.conversation_id, webhook_subscription_id=subscription.subscription_id
    )
    await WebhookSubscriptionRepository(wake_session, wake_secrets).delete(
        subscription.conversation_id, subscription.subscription_id
    )
    wake_session.expunge_all()
    kept = await fires.get(subscription.conversation_id, fire.fire_id)
    assert kept is not None
    assert (kept.schedule_id, kept.webhook_subscription_id) == (None, None)


async def test_deleting_a_context_source_nulls_the_readers_link(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    conversation_id = uuid.uuid4()
    source = await wake_factory.schedule(conversation_id=conversation_id)
    reader = await wake_factory.schedule(conversation_id=conversation_id, context_from_schedule_id=source.schedule_id)
    schedules = WakeScheduleRepository(wake_session)
    await schedules.delete(conversation_id, source.schedule_id)
    wake_session.expunge_all()
    reloaded = await schedules.get(conversation_id, reader.schedule_id)
    assert reloaded is not None
    assert reloaded.context_from_schedule_id is None

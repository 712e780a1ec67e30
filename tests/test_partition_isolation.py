"""Two conversations side by side: nothing done through conversation A ever
returns or changes a row of conversation B, even when A's calls name B's ids."""

import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import (
    InvalidInputError,
    NotFoundError,
    SecretBox,
    WakeFire,
    WakeFireRepository,
    WakeSchedule,
    WakeScheduleRepository,
    WebhookSubscription,
    WebhookSubscriptionRepository,
)
from agent_wake.testing.factories import WakeFactory
from tests.clock import NOW, in_minutes


async def snapshot(wake_session: AsyncSession, conversation_id: uuid.UUID) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {}
    for table, key in (
        ("agent_wake_schedules", "schedule_id"),
        ("wake_fires", "fire_id"),
        ("webhook_subscriptions", "subscription_id"),
    ):
        result = await wake_session.execute(
            text(f"SELECT row_to_json(t)::text FROM {table} t WHERE conversation_id = :c ORDER BY {key}"),
            {"c": conversation_id},
        )
        rows[table] = list(result.scalars())
    return rows


def conversations_of(returned: Any) -> set[uuid.UUID]:
    items = returned if isinstance(returned, list) else [returned]
    return {item.conversation_id for item in items if isinstance(item, WakeSchedule | WakeFire | WebhookSubscription)}


async def test_calls_for_one_conversation_never_touch_another(
    wake_factory: WakeFactory, wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    schedules = WakeScheduleRepository(wake_session)
    fires = WakeFireRepository(wake_session)
    webhooks = WebhookSubscriptionRepository(wake_session, wake_secrets)

    a_schedule = await wake_factory.schedule(conversation_id=a, next_fire_at=NOW)
    a_subscription = await wake_factory.subscription(conversation_id=a)
    a_fire = await fires.create_dispatching(conversation_id=a, schedule_id=a_schedule.schedule_id)
    b_schedule = await wake_factory.schedule(conversation_id=b, next_fire_at=NOW)
    b_subscription = await wake_factory.subscription(conversation_id=b, secret="b-secret-value")
    b_fire = await fires.create_dispatching(conversation_id=b, schedule_id=b_schedule.schedule_id)
    before = await snapshot(wake_session, b)

    own_calls = [
        schedules.get(a, a_schedule.schedule_id),
        schedules.list_for_conversation(a),
        schedules.list_active_for_conversation(a),
        schedules.update(a, a_schedule.schedule_id, name="renamed"),
        schedules.update_next_fire_at(a, a_schedule.schedule_id, in_minutes(1)),
        schedules.pause(a, a_schedule.schedule_id),
        schedules.resume(a, a_schedule.schedule_id, next_fire_at=NOW),
        fires.get(a, a_fire.fire_id),
        fires.list_for_schedule(a, a_schedule.schedule_id),
        fires.list_for_conversation(a),
        fires.latest_for_schedule(a, a_schedule.schedule_id),
        fires.finalize_success(a, a_fire.fire_id, status="fired"),
        webhooks.get(a, a_subscription.subscription_id),
        webhooks.list_for_conversation(a),
        webhooks.pause(a, a_subscription.subscription_id),
        webhooks.resume(a, a_subscription.subscription_id),
        webhooks.record_fire(a, a_subscription.subscription_id, fired_at=NOW),
    ]
    for call in own_calls:
        assert conversations_of(await call) <= {a}
    assert await schedules.count_active_for_conversation(a) == 1
    assert await fires.count_in_window(a, in_minutes(-60 * 24 * 365 * 10)) == 1
    assert await webhooks.rotate_secret(a, a_subscription.subscription_id) != "b-secret-value"

    # A's conversation id with B's row ids: refused or empty, never B's row.
    assert await schedules.get(a, b_schedule.schedule_id) is None
    assert await fires.get(a, b_fire.fire_id) is None
    assert await webhooks.get(a, b_subscription.subscription_id) is None
    assert await fires.list_for_schedule(a, b_schedule.schedule_id) == []
    assert await fires.latest_for_schedule(a, b_schedule.schedule_id) is None
    intrusions = [
        schedules.update(a, b_schedule.schedule_id, name="hijacked"),
        schedules.update_next_fire_at(a, b_schedule.schedule_id, in_minutes(1)),
        schedules.pause(a, b_schedule.schedule_id),
        schedules.resume(a, b_schedule.schedule_id, next_fire_at=NOW),
        schedules.mark_expired(a, b_schedule.schedule_id),
        schedules.delete(a, b_schedule.schedule_id),
        fires.create_dispatching(conversation_id=a, schedule_id=b_schedule.schedule_id),
        fires.create_dispatching(conversation_id=a, webhook_subscription_id=b_subscription.subscription_id),
        fires.finalize_success(a, b_fire.fire_id, status="fired"),
        fires.finalize_failed(a, b_fire.fire_id, error="x"),
        webhooks.reveal_secret(a, b_subscription.subscription_id),
        webhooks.rotate_secret(a, b_subscription.subscription_id, new_secret="stolen"),
        webhooks.pause(a, b_subscription.subscription_id),
        webhooks.resume(a, b_subscription.subscription_id),
        webhooks.record_fire(a, b_subscription.subscription_id, fired_at=NOW),
        webhooks.delete(a, b_subscription.subscription_id),
        schedules.update(a, a_schedule.schedule_id, context_from_schedule_id=b_schedule.schedule_id),
    ]
    for intrusion in intrusions:
        # Another conversation's row is simply not found (the context-from
        # link is refused as invalid input: not a schedule of this conversation).
        with pytest.raises((NotFoundError, InvalidInputError)):
            await intrusion
    claimed = await schedules.claim_and_reschedule(
        conversation_id=a,
        schedule_id=b_schedule.schedule_id,
        expected_next_fire=NOW,
        computed_next_fire=in_minutes(30),
        new_status="active",
        now=NOW,
    )
    assert claimed is False

    await schedules.mark_expired(a, a_schedule.schedule_id)
    await schedules.delete(a, a_schedule.schedule_id)
    await webhooks.delete(a, a_subscription.subscription_id)
    assert await snapshot(wake_session, b) == before

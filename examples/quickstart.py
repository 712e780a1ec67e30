"""A service's view of agent-wake: create a schedule, claim its fire, record it.

Run after `alembic upgrade head`, on the same database. Like a deployed
service, it needs AGENT_WAKE_DATABASE_URL, or AGENT_WAKE_EMBEDDED=1 to use
the checkout's embedded PostgreSQL:

    AGENT_WAKE_EMBEDDED=1 python examples/quickstart.py
"""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from agent_wake import (
    OUTPUT_FIRE_STATUSES,
    SecretBox,
    WakeFireRepository,
    WakeScheduleRepository,
    WebhookSubscriptionRepository,
    create_engine_and_session_factory,
)


async def main() -> None:
    engine, sessions = create_engine_and_session_factory()
    conversation_id, user_id, agent_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)

    async with sessions.begin() as session:  # one transaction, committed at the end
        schedule = await WakeScheduleRepository(session).create(
            conversation_id=conversation_id,
            user_id=user_id,
            agent_id=agent_id,
            schedule_type="daily_at",
            schedule_config={"hour": 14, "minute": 0, "tz": "America/Los_Angeles"},
            task_prompt="Summarize what changed since yesterday.",
            next_fire_at=now,
        )

    async with sessions.begin() as session:  # what a tick does for one due schedule
        schedules, fires = WakeScheduleRepository(session), WakeFireRepository(session)
        won = await schedules.claim_and_reschedule(
            conversation_id=conversation_id,
            schedule_id=schedule.schedule_id,
            expected_next_fire=now,
            computed_next_fire=now + timedelta(days=1),
            new_status="active",
            now=now,
        )
        if won:
            fire = await fires.create_dispatching(
                conversation_id=conversation_id, schedule_id=schedule.schedule_id, scheduled_fire_at=now
            )
            await fires.finalize_success(
                conversation_id, fire.fire_id, status="fired", output_text="3 new issues", latency_ms=850
            )

    async with sessions() as session:
        latest = await WakeFireRepository(session).latest_for_schedule(
            conversation_id, schedule.schedule_id, statuses=OUTPUT_FIRE_STATUSES
        )
        print(f"claimed: {won}; last output: {latest.output_text if latest else None!r}")

    secrets = SecretBox.from_keys(SecretBox.generate_key())  # in production: keys from a secret store
    async with sessions.begin() as session:
        webhooks = WebhookSubscriptionRepository(session, secrets)
        subscription = await webhooks.create(
            conversation_id=conversation_id, user_id=user_id, agent_id=agent_id, secret="whsec_example"
        )
        found = await webhooks.find_by_id(subscription.subscription_id)  # a receiver has only the id
        assert found is not None
        print(
            "webhook secret ok:",
            await webhooks.reveal_secret(found.conversation_id, found.subscription_id) == "whsec_example",
        )

    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())

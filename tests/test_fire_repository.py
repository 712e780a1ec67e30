"""WakeFireRepository against the migrated database."""

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import (
    OUTPUT_FIRE_STATUSES,
    InvalidInputError,
    NotFoundError,
    SecretBox,
    WakeFireRepository,
)
from agent_wake.testing.factories import WakeFactory
from tests.clock import NOW


@pytest.fixture
def repo(wake_session: AsyncSession) -> WakeFireRepository:
    return WakeFireRepository(wake_session)


async def count_fires(wake_session: AsyncSession, conversation_id: uuid.UUID) -> int:
    result = await wake_session.execute(
        text("SELECT count(*) FROM wake_fires WHERE conversation_id = :c"), {"c": conversation_id}
    )
    return int(result.scalar_one())


@pytest.mark.not_on_citus(
    "Citus runs the INSERT ... SELECT on the shard's worker, whose now() is its own transaction's start there"
)
async def test_create_dispatching_writes_an_in_flight_fire(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    fire = await repo.create_dispatching(
        conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id, scheduled_fire_at=NOW
    )
    assert fire.status == "dispatching"
    assert fire.fire_id.version == 7
    assert (fire.schedule_id, fire.webhook_subscription_id) == (schedule.schedule_id, None)
    assert fire.scheduled_fire_at == NOW
    now = (await wake_session.execute(text("SELECT now()"))).scalar_one()
    assert fire.actual_fired_at == now


async def test_create_dispatching_from_a_webhook(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    subscription = await wake_factory.subscription(conversation_id=uuid.uuid4())
    fire = await repo.create_dispatching(
        conversation_id=subscription.conversation_id,
        webhook_subscription_id=subscription.subscription_id,
        actual_fired_at=NOW,
    )
    assert (fire.schedule_id, fire.webhook_subscription_id) == (None, subscription.subscription_id)
    assert fire.actual_fired_at == NOW
    assert fire.scheduled_fire_at is None


async def test_create_dispatching_refuses_both_sources(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    conversation_id = uuid.uuid4()
    schedule = await wake_factory.schedule(conversation_id=conversation_id)
    subscription = await wake_factory.subscription(conversation_id=conversation_id)
    with pytest.raises(InvalidInputError, match="one source") as caught:
        await repo.create_dispatching(
            conversation_id=conversation_id,
            schedule_id=schedule.schedule_id,
            webhook_subscription_id=subscription.subscription_id,
        )
    assert caught.value.field == "webhook_subscription_id"
    assert await count_fires(wake_session, conversation_id) == 0


async def test_create_dispatching_refuses_no_source(repo: WakeFireRepository) -> None:
    with pytest.raises(InvalidInputError, match="needs a source"):
        await repo.create_dispatching(conversation_id=uuid.uuid4())


async def test_create_dispatching_refuses_a_schedule_of_another_conversation(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    intruder = uuid.uuid4()
    with pytest.raises(NotFoundError, match="not found in conversation"):
        await repo.create_dispatching(conversation_id=intruder, schedule_id=schedule.schedule_id)
    assert await count_fires(wake_session, intruder) == 0


async def test_create_dispatching_refuses_a_naive_scheduled_time(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    with pytest.raises(InvalidInputError) as caught:
        await repo.create_dispatching(
            conversation_id=schedule.conversation_id,
            schedule_id=schedule.schedule_id,
            scheduled_fire_at=datetime(2026, 1, 1, 14),
        )
    assert caught.value.field == "scheduled_fire_at"


async def test_finalize_success_records_the_output(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    fire = await repo.create_dispatching(conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id)
    done = await repo.finalize_success(
        fire.conversation_id,
        fire.fire_id,
        status="fired_silent",
        output_text="[SILENT] ok",
        latency_ms=1200,
        display_suppressed=True,
    )
    assert (done.status, done.output_text, done.latency_ms, done.display_suppressed) == (
        "fired_silent",
        "[SILENT] ok",
        1200,
        True,
    )


async def test_finalizing_twice_keeps_the_first_result(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    fire = await repo.create_dispatching(conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id)
    await repo.finalize_success(fire.conversation_id, fire.fire_id, status="fired", output_text="first")
    again = await repo.finalize_failed(fire.conversation_id, fire.fire_id, error="late retry")
    assert (again.status, again.output_text, again.error) == ("fired", "first", None)


@pytest.mark.parametrize("status", ["dispatching", "failed", "done"])
async def test_finalize_success_refuses_a_status_that_is_not_a_success(repo: WakeFireRepository, status: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await repo.finalize_success(uuid.uuid4(), uuid.uuid4(), status=status)  # type: ignore[arg-type]
    assert caught.value.field == "status"


async def test_finalize_failed_records_the_error(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    fire = await repo.create_dispatching(conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id)
    failed = await repo.finalize_failed(fire.conversation_id, fire.fire_id, error="model timeout", latency_ms=30000)
    assert (failed.status, failed.error, failed.latency_ms) == ("failed", "model timeout", 30000)


async def test_finalize_refuses_a_negative_latency(repo: WakeFireRepository) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await repo.finalize_failed(uuid.uuid4(), uuid.uuid4(), error="x", latency_ms=-1)
    assert caught.value.field == "latency_ms"


async def test_finalize_of_another_conversations_fire_is_not_found(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    fire = await repo.create_dispatching(conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id)
    with pytest.raises(NotFoundError):
        await repo.finalize_success(uuid.uuid4(), fire.fire_id, status="fired")
    stored = await repo.get(fire.conversation_id, fire.fire_id)
    assert stored is not None
    assert stored.status == "dispatching"


async def test_lists_are_newest_first_and_limited(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    conversation_id = uuid.uuid4()
    schedule = await wake_factory.schedule(conversation_id=conversation_id)
    other = await wake_factory.schedule(conversation_id=conversation_id)
    fires = [
        await repo.create_dispatching(
            conversation_id=conversation_id,
            schedule_id=schedule.schedule_id,
            actual_fired_at=NOW + timedelta(minutes=minute),
        )
        for minute in range(3)
    ]
    other_fire = await repo.create_dispatching(
        conversation_id=conversation_id,
        schedule_id=other.schedule_id,
        actual_fired_at=NOW + timedelta(minutes=10),
    )
    for_schedule = await repo.list_for_schedule(conversation_id, schedule.schedule_id, limit=2)
    assert [f.fire_id for f in for_schedule] == [fires[2].fire_id, fires[1].fire_id]
    for_conversation = await repo.list_for_conversation(conversation_id)
    assert [f.fire_id for f in for_conversation] == [other_fire.fire_id] + [f.fire_id for f in reversed(fires)]


async def test_latest_for_schedule_can_ask_only_for_output(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    conversation_id = schedule.conversation_id
    with_output = await repo.create_dispatching(
        conversation_id=conversation_id, schedule_id=schedule.schedule_id, actual_fired_at=NOW
    )
    await repo.finalize_success(conversation_id, with_output.fire_id, status="fired", output_text="summary")
    skipped = await repo.create_dispatching(
        conversation_id=conversation_id,
        schedule_id=schedule.schedule_id,
        actual_fired_at=NOW + timedelta(minutes=1),
    )
    await repo.finalize_success(conversation_id, skipped.fire_id, status="skipped_busy")
    latest = await repo.latest_for_schedule(conversation_id, schedule.schedule_id)
    assert latest is not None
    assert latest.fire_id == skipped.fire_id
    latest_output = await repo.latest_for_schedule(conversation_id, schedule.schedule_id, statuses=OUTPUT_FIRE_STATUSES)
    assert latest_output is not None
    assert latest_output.fire_id == with_output.fire_id
    assert await repo.latest_for_schedule(uuid.uuid4(), schedule.schedule_id) is None


async def test_latest_for_schedule_refuses_an_unknown_status(repo: WakeFireRepository) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await repo.latest_for_schedule(uuid.uuid4(), uuid.uuid4(), statuses=["fired", "done"])  # type: ignore[list-item]
    assert caught.value.field == "statuses"


async def test_count_in_window_counts_from_since(
    wake_factory: WakeFactory, repo: WakeFireRepository, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(conversation_id=uuid.uuid4())
    for minute in (0, 10, 20):
        await repo.create_dispatching(
            conversation_id=schedule.conversation_id,
            schedule_id=schedule.schedule_id,
            actual_fired_at=NOW + timedelta(minutes=minute),
        )
    assert await repo.count_in_window(schedule.conversation_id, NOW + timedelta(minutes=10)) == 2
    assert await repo.count_in_window(schedule.conversation_id, NOW + timedelta(minutes=10), statuses=["fired"]) == 0
    assert await repo.count_in_window(uuid.uuid4(), NOW) == 0
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        await repo.count_in_window(schedule.conversation_id, datetime(2026, 1, 1))

"""Claims racing on separate connections, with committed data (wake_engine
empties the tables afterwards)."""

import asyncio
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_wake import SecretBox, WakeSchedule, WakeScheduleRepository
from agent_wake.testing.factories import WakeFactory
from tests.clock import NOW


async def committed_due_schedule(wake_engine: AsyncEngine, secrets: SecretBox) -> WakeSchedule:
    async with AsyncSession(wake_engine, expire_on_commit=False) as session, session.begin():
        return await WakeFactory(session, secrets).schedule(next_fire_at=NOW)


async def claim_next_fire(session: AsyncSession, schedule: WakeSchedule) -> bool:
    """Claim the fire due at NOW, rescheduling to 30 minutes later."""
    return await WakeScheduleRepository(session).claim_and_reschedule(
        conversation_id=schedule.conversation_id,
        schedule_id=schedule.schedule_id,
        expected_next_fire=NOW,
        computed_next_fire=NOW + timedelta(minutes=30),
        new_status="active",
        now=NOW,
    )


async def test_two_concurrent_claims_of_one_fire_have_exactly_one_winner(
    wake_secrets: SecretBox, wake_engine: AsyncEngine
) -> None:
    sessions = async_sessionmaker(wake_engine, expire_on_commit=False)
    schedule = await committed_due_schedule(wake_engine, wake_secrets)
    first_claimed = asyncio.Event()

    async def claim(session: AsyncSession, *, wait_for_first: bool) -> bool:
        if wait_for_first:
            await first_claimed.wait()
        won = await claim_next_fire(session, schedule)
        if not wait_for_first:
            first_claimed.set()
            # Hold the row lock while the other claim blocks on it.
            await asyncio.sleep(0.3)
        await session.commit()
        return won

    async with sessions() as one, sessions() as two:
        results = await asyncio.gather(claim(one, wait_for_first=False), claim(two, wait_for_first=True))
    assert sorted(results) == [False, True]
    async with sessions() as session:
        stored = await WakeScheduleRepository(session).get(schedule.conversation_id, schedule.schedule_id)
    assert stored is not None
    assert stored.next_fire_at == NOW + timedelta(minutes=30)


async def test_many_concurrent_claims_have_exactly_one_winner(
    wake_secrets: SecretBox, wake_engine: AsyncEngine
) -> None:
    sessions = async_sessionmaker(wake_engine, expire_on_commit=False)
    schedule = await committed_due_schedule(wake_engine, wake_secrets)

    async def claim() -> bool:
        async with sessions.begin() as session:
            return await claim_next_fire(session, schedule)

    results = await asyncio.gather(*(claim() for _ in range(5)))
    assert results.count(True) == 1

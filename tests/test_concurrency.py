"""Claims racing on separate connections, with committed data."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_wake import WakeScheduleRepository
from tests import factories
from tests.factories import NOW


@pytest.fixture
async def committed_conversation(engine: AsyncEngine) -> AsyncIterator[uuid.UUID]:
    conversation_id = uuid.uuid4()
    yield conversation_id
    async with engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM agent_wake_schedules WHERE conversation_id = :c"), {"c": conversation_id}
        )


async def test_two_concurrent_claims_of_one_fire_have_exactly_one_winner(
    engine: AsyncEngine, committed_conversation: uuid.UUID
) -> None:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions.begin() as session:
        schedule = await factories.schedule(session, committed_conversation, next_fire_at=NOW)
    first_claimed = asyncio.Event()

    async def claim(session: AsyncSession, *, wait_for_first: bool) -> bool:
        if wait_for_first:
            await first_claimed.wait()
        won = await WakeScheduleRepository(session).claim_and_reschedule(
            conversation_id=committed_conversation,
            schedule_id=schedule.schedule_id,
            expected_next_fire=NOW,
            computed_next_fire=NOW + timedelta(minutes=30),
            new_status="active",
            now=NOW,
        )
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
        stored = await WakeScheduleRepository(session).get(committed_conversation, schedule.schedule_id)
    assert stored is not None
    assert stored.next_fire_at == NOW + timedelta(minutes=30)


async def test_many_concurrent_claims_have_exactly_one_winner(
    engine: AsyncEngine, committed_conversation: uuid.UUID
) -> None:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions.begin() as session:
        schedule = await factories.schedule(session, committed_conversation, next_fire_at=NOW)

    async def claim() -> bool:
        async with sessions.begin() as session:
            return await WakeScheduleRepository(session).claim_and_reschedule(
                conversation_id=committed_conversation,
                schedule_id=schedule.schedule_id,
                expected_next_fire=NOW,
                computed_next_fire=NOW + timedelta(minutes=30),
                new_status="active",
                now=NOW,
            )

    results = await asyncio.gather(*(claim() for _ in range(5)))
    assert results.count(True) == 1

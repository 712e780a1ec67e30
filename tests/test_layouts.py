"""The repositories and the operator's jobs on both layouts: the reference one (as migrated, with
``ON DELETE SET NULL`` and standalone unique ids) and the re-keyed one that
``agent_wake.distribution.distribute_schema`` gives (composite keys, ``NO ACTION``, ids unique
per conversation; distributed too when the test server is a Citus coordinator).

Each layout gets a database of its own for the module, built by ``ScratchDatabase(layout=...)``.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from agent_wake import (
    AmbiguousIdError,
    OrphanCounts,
    PurgedConversation,
    SecretBox,
    WakeFireRepository,
    WakeScheduleRepository,
    WebhookSubscriptionRepository,
    delete_orphans,
    install_partition_guard,
    purge_conversation,
    spans_partitions,
)
from agent_wake.distribution import is_rekeyed
from agent_wake.testing import ScratchDatabase, WakeFactory
from agent_wake.testing.databases import LAYOUTS
from agent_wake.testing.pytest_plugin import TestServer

ONLY_REKEYED = "the reference layout's standalone unique refuses a second row with the same id"
ORPHANS_NOT_ON_CITUS = (
    "delete_orphans reads conversations, a local table of the coordinator, in a correlated subquery over the "
    "distributed wake tables: Citus refuses direct joins between distributed and local tables"
)
# A job that waits for a held row instead of skipping it runs into this.
PROMPTLY_SECONDS = 10


@pytest.fixture(scope="module", params=LAYOUTS)
async def layout_database(request: pytest.FixtureRequest, wake_server: TestServer) -> AsyncIterator[tuple[str, str]]:
    """(layout, URL) of a database of that layout, for the module."""
    database = ScratchDatabase(wake_server.url, prefix="agent_wake_layout", layout=request.param)
    url = await database.create()
    try:
        yield request.param, url
    finally:
        await database.drop()


@pytest.fixture
async def sessions(layout_database: tuple[str, str]) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions whose commits stay until the test ends; the tables are emptied then."""
    engine = create_async_engine(layout_database[1], poolclass=pool.NullPool)
    install_partition_guard(engine, mode="raise")
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
        async with engine.begin() as connection:
            with spans_partitions("test teardown: empty the tables"):
                await connection.execute(
                    text("TRUNCATE wake_fires, agent_wake_schedules, webhook_subscriptions, conversations")
                )
    finally:
        await engine.dispose()


@pytest.fixture
async def session(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose work is rolled back after the test."""
    async with sessions() as session:
        try:
            yield session
        finally:
            await session.rollback()


@pytest.fixture
async def rekeyed(sessions: async_sessionmaker[AsyncSession]) -> bool:
    async with sessions() as session:
        schema = (await session.execute(text("SELECT current_schema()"))).scalar_one()
        return await (await session.connection()).run_sync(is_rekeyed, schema)


@pytest.fixture
async def on_citus(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """Whether the layout's database is distributed on Citus (the distributed layout, on a coordinator)."""
    async with sessions() as session:
        with spans_partitions("test: is this database distributed"):
            found = await session.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'citus'"))
        return found.first() is not None


def make(session: AsyncSession, secrets: SecretBox) -> WakeFactory:
    return WakeFactory(session, secrets)


async def test_the_distributed_layout_is_rekeyed_and_the_reference_one_is_not(
    layout_database: tuple[str, str], rekeyed: bool
) -> None:
    assert rekeyed == (layout_database[0] == "distributed")


async def test_deleting_a_context_source_clears_its_readers_reference_on_both_layouts(
    session: AsyncSession, wake_secrets: SecretBox
) -> None:
    source = await make(session, wake_secrets).schedule()
    reader = await make(session, wake_secrets).schedule(
        conversation_id=source.conversation_id, context_from_schedule_id=source.schedule_id
    )
    schedules = WakeScheduleRepository(session)
    await schedules.delete(source.conversation_id, source.schedule_id)
    session.expunge_all()
    reloaded = await schedules.get(reader.conversation_id, reader.schedule_id)
    assert reloaded is not None
    assert reloaded.context_from_schedule_id is None


async def test_a_held_reader_shows_the_cleared_reference_once_its_source_is_deleted_on_both_layouts(
    session: AsyncSession, wake_secrets: SecretBox
) -> None:
    source = await make(session, wake_secrets).schedule()
    reader = await make(session, wake_secrets).schedule(
        conversation_id=source.conversation_id, context_from_schedule_id=source.schedule_id
    )
    await WakeScheduleRepository(session).delete(source.conversation_id, source.schedule_id)
    assert reader in session
    assert reader.context_from_schedule_id is None
    assert source not in session


async def test_deleting_a_schedule_that_takes_context_from_itself_deletes_it_on_both_layouts(
    session: AsyncSession, wake_secrets: SecretBox
) -> None:
    # The repository refuses such a schedule; one written by hand still goes.
    schedule = await make(session, wake_secrets).schedule()
    await session.execute(
        text(
            "UPDATE agent_wake_schedules SET context_from_schedule_id = :s "
            "WHERE conversation_id = :c AND schedule_id = :s"
        ),
        {"c": schedule.conversation_id, "s": schedule.schedule_id},
    )
    schedules = WakeScheduleRepository(session)
    await schedules.delete(schedule.conversation_id, schedule.schedule_id)
    assert await schedules.get(schedule.conversation_id, schedule.schedule_id) is None


async def test_deleting_a_webhook_subscription_keeps_its_fires_without_a_source_on_both_layouts(
    session: AsyncSession, wake_secrets: SecretBox
) -> None:
    subscription = await make(session, wake_secrets).subscription()
    fires = WakeFireRepository(session)
    fire = await fires.create_dispatching(
        conversation_id=subscription.conversation_id, webhook_subscription_id=subscription.subscription_id
    )
    await WebhookSubscriptionRepository(session, wake_secrets).delete(
        subscription.conversation_id, subscription.subscription_id
    )
    assert fire.webhook_subscription_id is None  # the held fire, without a read
    session.expunge_all()
    kept = await fires.get(subscription.conversation_id, fire.fire_id)
    assert kept is not None
    assert (kept.schedule_id, kept.webhook_subscription_id) == (None, None)


async def test_deleting_a_schedule_leaves_another_conversations_reader_of_the_same_id_alone(
    session: AsyncSession, wake_secrets: SecretBox, rekeyed: bool
) -> None:
    if not rekeyed:
        pytest.skip(ONLY_REKEYED)
    deleted = await make(session, wake_secrets).schedule()
    namesake = await make(session, wake_secrets).schedule(schedule_id=deleted.schedule_id)
    reader = await make(session, wake_secrets).schedule(
        conversation_id=namesake.conversation_id, context_from_schedule_id=namesake.schedule_id
    )
    schedules = WakeScheduleRepository(session)
    await schedules.delete(deleted.conversation_id, deleted.schedule_id)
    assert reader.context_from_schedule_id == namesake.schedule_id  # the held object
    session.expunge_all()
    reloaded = await schedules.get(reader.conversation_id, reader.schedule_id)
    assert reloaded is not None
    assert reloaded.context_from_schedule_id == namesake.schedule_id
    assert await schedules.get(namesake.conversation_id, namesake.schedule_id) is not None


async def test_find_by_id_refuses_a_subscription_id_two_conversations_hold(
    session: AsyncSession, wake_secrets: SecretBox, rekeyed: bool
) -> None:
    if not rekeyed:
        pytest.skip(ONLY_REKEYED)
    first = await make(session, wake_secrets).subscription()
    second = await make(session, wake_secrets).subscription(subscription_id=first.subscription_id)
    with pytest.raises(AmbiguousIdError) as refused:
        await WebhookSubscriptionRepository(session, wake_secrets).find_by_id(first.subscription_id)
    assert (refused.value.entity, refused.value.entity_id) == ("webhook subscription", first.subscription_id)
    assert set(refused.value.conversation_ids) == {first.conversation_id, second.conversation_id}


async def test_purge_conversation_deletes_schedules_that_take_context_from_one_another_on_both_layouts(
    session: AsyncSession, wake_secrets: SecretBox
) -> None:
    first = await make(session, wake_secrets).schedule()
    second = await make(session, wake_secrets).schedule(
        conversation_id=first.conversation_id, context_from_schedule_id=first.schedule_id
    )
    await WakeScheduleRepository(session).update(
        first.conversation_id, first.schedule_id, context_from_schedule_id=second.schedule_id
    )
    purged = await purge_conversation(session, first.conversation_id)
    assert purged == PurgedConversation(fires=0, schedules=2, subscriptions=0)


async def orphan_readers(sessions: async_sessionmaker[AsyncSession], secrets: SecretBox, count: int) -> uuid.UUID:
    """``count`` schedules of a conversation missing from ``conversations``, each taking context
    from the next, the last from the first; returns the conversation."""
    conversation_id = uuid.uuid4()
    async with sessions.begin() as session:
        schedules = [await make(session, secrets).schedule(conversation_id=conversation_id) for _ in range(count)]
        repository = WakeScheduleRepository(session)
        for reader, source in zip(schedules, schedules[1:] + schedules[:1], strict=True):
            await repository.update(conversation_id, reader.schedule_id, context_from_schedule_id=source.schedule_id)
    return conversation_id


async def test_delete_orphans_deletes_schedules_that_take_context_from_one_another_across_batches_on_both_layouts(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox, on_citus: bool
) -> None:
    if on_citus:
        pytest.skip(ORPHANS_NOT_ON_CITUS)
    await orphan_readers(sessions, wake_secrets, 4)
    async with sessions.begin() as session:
        kept = await make(session, wake_secrets).conversation()
        source = await make(session, wake_secrets).schedule(conversation_id=kept.conversation_id)
        reader = await make(session, wake_secrets).schedule(
            conversation_id=kept.conversation_id, context_from_schedule_id=source.schedule_id
        )

    assert await delete_orphans(sessions, batch_size=1) == OrphanCounts(fires=0, schedules=4, subscriptions=0)

    async with sessions() as session:
        untouched = await WakeScheduleRepository(session).get(kept.conversation_id, reader.schedule_id)
    assert untouched is not None
    assert untouched.context_from_schedule_id == source.schedule_id


async def test_delete_orphans_leaves_a_source_whose_reader_another_transaction_holds_for_a_later_run(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox, on_citus: bool
) -> None:
    if on_citus:
        pytest.skip(ORPHANS_NOT_ON_CITUS)
    conversation_id = await orphan_readers(sessions, wake_secrets, 2)
    async with sessions() as holder:
        with spans_partitions("test: hold one orphan schedule"):
            held = await holder.execute(
                text(
                    "SELECT schedule_id FROM agent_wake_schedules WHERE conversation_id = :c "
                    "ORDER BY schedule_id LIMIT 1 FOR UPDATE"
                ),
                {"c": conversation_id},
            )
        assert held.scalar_one() is not None
        # Neither goes: the held one is skipped, and the other is its source.
        done = await asyncio.wait_for(delete_orphans(sessions, batch_size=1), PROMPTLY_SECONDS)
        assert done == OrphanCounts(fires=0, schedules=0, subscriptions=0)
        await holder.rollback()

    assert await delete_orphans(sessions, batch_size=1) == OrphanCounts(fires=0, schedules=2, subscriptions=0)

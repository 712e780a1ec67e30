"""Every failure reaches the caller as an AgentWakeError it can branch on:
retry (RetryableError), conflict (ConflictError) or bad input
(InvalidInputError), with the attributes to act on, and nothing written.

Each test checks the type, the attributes, and that nothing was written,
reading back on a new connection.
"""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_wake import (
    ConnectionLostError,
    ConstraintViolationError,
    DatabaseTimeoutError,
    DuplicateError,
    InvalidInputError,
    RetryableError,
    SecretBox,
    SerializationError,
    WakeFireRepository,
    WakeScheduleRepository,
    WebhookSubscriptionRepository,
)
from agent_wake._validation import require_aware
from agent_wake.errors import translate_database_errors
from agent_wake.testing import capture_sql
from agent_wake.testing.factories import WakeFactory
from tests.clock import NOW

HOUR = timedelta(hours=1)
# Aware instants that exist in Python but overflow once converted to UTC.
OVERFLOWING = [
    datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-14))),
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
]


async def committed_schedule(
    engine: AsyncEngine, secrets: SecretBox, **overrides: object
) -> tuple[uuid.UUID, uuid.UUID]:
    async with async_sessionmaker(engine).begin() as session:
        schedule = await WakeFactory(session, secrets).schedule(**overrides)
        return schedule.conversation_id, schedule.schedule_id


async def stored_schedule(engine: AsyncEngine, conversation_id: uuid.UUID) -> list[dict[str, object]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT * FROM agent_wake_schedules WHERE conversation_id = :c ORDER BY schedule_id"),
            {"c": conversation_id},
        )
        return [dict(row) for row in rows.mappings()]


async def fire_count(engine: AsyncEngine, conversation_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        found = await connection.execute(
            text("SELECT count(*) FROM wake_fires WHERE conversation_id = :c"), {"c": conversation_id}
        )
        return int(found.scalar_one())


def overflowing_calls(
    session: AsyncSession, secrets: SecretBox, conversation_id: uuid.UUID, schedule_id: uuid.UUID, instant: datetime
) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each method that takes an instant, called with ``instant``, by the field it must name."""
    schedules = WakeScheduleRepository(session)
    fires = WakeFireRepository(session)
    subscriptions = WebhookSubscriptionRepository(session, secrets)
    return {
        "create": lambda: schedules.create(
            conversation_id=conversation_id,
            user_id=uuid.uuid4(),
            agent_id=uuid.uuid4(),
            schedule_type="interval",
            schedule_config={"seconds": 60},
            next_fire_at=instant,
        ),
        "update_next_fire_at": lambda: schedules.update_next_fire_at(conversation_id, schedule_id, instant),
        "list_due": lambda: schedules.list_due(instant),
        "count_in_window": lambda: fires.count_in_window(conversation_id, instant),
        "claim_due": lambda: schedules.claim_due(instant, limit=5, next_fire=lambda s, now: None),
        "claim_and_reschedule": lambda: schedules.claim_and_reschedule(
            conversation_id=conversation_id,
            schedule_id=schedule_id,
            expected_next_fire=instant,
            computed_next_fire=None,
            new_status="expired",
            now=NOW,
        ),
        "create_dispatching": lambda: fires.create_dispatching(
            conversation_id=conversation_id, schedule_id=schedule_id, scheduled_fire_at=instant
        ),
        "record_fire": lambda: subscriptions.record_fire(conversation_id, uuid.uuid4(), fired_at=instant),
    }


FIELD_OF = {
    "create": "next_fire_at",
    "update_next_fire_at": "next_fire_at",
    "list_due": "now",
    "count_in_window": "since",
    "claim_due": "now",
    "claim_and_reschedule": "expected_next_fire",
    "create_dispatching": "scheduled_fire_at",
    "record_fire": "fired_at",
}


@pytest.mark.parametrize("method", sorted(FIELD_OF))
@pytest.mark.parametrize("instant", OVERFLOWING, ids=["9999-12-31T23-14", "0001-01-01T00+14"])
async def test_an_instant_that_overflows_in_utc_is_refused_before_any_sql(
    wake_engine: AsyncEngine, wake_secrets: SecretBox, instant: datetime, method: str
) -> None:
    conversation_id, schedule_id = await committed_schedule(wake_engine, wake_secrets, next_fire_at=NOW)
    before = await stored_schedule(wake_engine, conversation_id)
    async with async_sessionmaker(wake_engine)() as session:
        call = overflowing_calls(session, wake_secrets, conversation_id, schedule_id, instant)[method]
        with capture_sql(session) as captured, pytest.raises(InvalidInputError) as refused:
            await call()
        assert (refused.value.field, "UTC" in refused.value.rule) == (FIELD_OF[method], True)
        assert captured == []
    assert await stored_schedule(wake_engine, conversation_id) == before
    assert await fire_count(wake_engine, conversation_id) == 0


async def test_a_next_fire_that_overflows_leaves_only_that_schedule_unclaimed(
    wake_engine: AsyncEngine, wake_secrets: SecretBox
) -> None:
    broken = await committed_schedule(wake_engine, wake_secrets, next_fire_at=NOW - HOUR)
    healthy = await committed_schedule(wake_engine, wake_secrets, next_fire_at=NOW - HOUR)

    def next_fire(schedule: object, now: datetime) -> datetime:
        return OVERFLOWING[0] if getattr(schedule, "schedule_id", None) == broken[1] else now + HOUR

    async with async_sessionmaker(wake_engine).begin() as session:
        claims = await WakeScheduleRepository(session).claim_due(NOW, limit=10, next_fire=next_fire)

    assert [(claim.conversation_id, claim.schedule_id) for claim in claims] == [healthy]
    (still_due,) = await stored_schedule(wake_engine, broken[0])
    assert (still_due["next_fire_at"], still_due["last_fired_at"]) == (NOW - HOUR, None)
    assert await fire_count(wake_engine, broken[0]) == 0


async def test_a_lock_timeout_is_a_retryable_timeout(wake_engine: AsyncEngine, wake_secrets: SecretBox) -> None:
    conversation_id, schedule_id = await committed_schedule(wake_engine, wake_secrets)
    before = await stored_schedule(wake_engine, conversation_id)
    sessions = async_sessionmaker(wake_engine)
    async with sessions() as holder, sessions() as waiter:
        await WakeScheduleRepository(holder).update(conversation_id, schedule_id, name="holds the row lock")
        await waiter.execute(text("SET LOCAL lock_timeout = '100ms'"))
        with pytest.raises(DatabaseTimeoutError) as refused:
            await WakeScheduleRepository(waiter).pause(conversation_id, schedule_id)
        assert isinstance(refused.value, RetryableError)
        assert refused.value.sqlstate == "55P03"
        await holder.rollback()
    assert await stored_schedule(wake_engine, conversation_id) == before


async def test_a_statement_timeout_is_a_retryable_timeout(wake_engine: AsyncEngine, wake_secrets: SecretBox) -> None:
    conversation_id, schedule_id = await committed_schedule(wake_engine, wake_secrets)
    sessions = async_sessionmaker(wake_engine)
    async with sessions() as holder, sessions() as waiter:
        await WakeScheduleRepository(holder).update(conversation_id, schedule_id, name="holds the row lock")
        await waiter.execute(text("SET LOCAL statement_timeout = '100ms'"))
        with pytest.raises(DatabaseTimeoutError) as refused:
            await WakeScheduleRepository(waiter).mark_expired(conversation_id, schedule_id)
        assert refused.value.sqlstate == "57014"
        await holder.rollback()
    (row,) = await stored_schedule(wake_engine, conversation_id)
    assert row["status"] == "active"


async def test_a_lost_connection_is_retryable_even_on_a_read(wake_engine: AsyncEngine, wake_secrets: SecretBox) -> None:
    conversation_id, schedule_id = await committed_schedule(wake_engine, wake_secrets)
    async with async_sessionmaker(wake_engine)() as session:
        backend = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with wake_engine.connect() as killer:
            await killer.execute(text("SELECT pg_terminate_backend(CAST(:pid AS integer))"), {"pid": backend})
        with pytest.raises(ConnectionLostError) as lost:
            await WakeScheduleRepository(session).get(conversation_id, schedule_id)
        assert isinstance(lost.value, RetryableError)


async def test_a_deadlock_is_a_retryable_serialization_error(wake_engine: AsyncEngine, wake_secrets: SecretBox) -> None:
    first = await committed_schedule(wake_engine, wake_secrets)
    second = await committed_schedule(wake_engine, wake_secrets)
    sessions = async_sessionmaker(wake_engine)
    async with sessions() as one, sessions() as two:
        await WakeScheduleRepository(one).pause(*first)
        await WakeScheduleRepository(two).pause(*second)
        outcomes = await asyncio.gather(
            WakeScheduleRepository(one).pause(*second),
            WakeScheduleRepository(two).pause(*first),
            return_exceptions=True,
        )
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        assert len(errors) == 1, outcomes
        assert isinstance(errors[0], SerializationError)
        assert errors[0].sqlstate == "40P01"
        await one.rollback()
        await two.rollback()
    for conversation_id, _ in (first, second):
        (row,) = await stored_schedule(wake_engine, conversation_id)
        assert row["status"] == "active"


async def test_a_serialization_failure_is_retryable(wake_engine: AsyncEngine, wake_secrets: SecretBox) -> None:
    conversation_id, schedule_id = await committed_schedule(wake_engine, wake_secrets)
    sessions = async_sessionmaker(wake_engine)
    async with sessions() as reader:
        await reader.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        await WakeScheduleRepository(reader).get(conversation_id, schedule_id)  # the snapshot
        async with sessions.begin() as writer:
            await WakeScheduleRepository(writer).update(conversation_id, schedule_id, name="first")
        with pytest.raises(SerializationError) as refused:
            await WakeScheduleRepository(reader).update(conversation_id, schedule_id, name="second")
        assert refused.value.sqlstate == "40001"
    (row,) = await stored_schedule(wake_engine, conversation_id)
    assert row["name"] == "first"


async def test_a_duplicate_id_is_a_conflict_naming_table_and_constraint(
    wake_engine: AsyncEngine, wake_secrets: SecretBox
) -> None:
    conversation_id, schedule_id = await committed_schedule(wake_engine, wake_secrets)
    async with async_sessionmaker(wake_engine)() as session:
        with pytest.raises(DuplicateError) as refused:
            await WakeFactory(session, wake_secrets).schedule(conversation_id=conversation_id, schedule_id=schedule_id)
    assert (refused.value.table, refused.value.constraint, refused.value.sqlstate) == (
        "agent_wake_schedules",
        "agent_wake_schedules_pkey",
        "23505",
    )
    assert len(await stored_schedule(wake_engine, conversation_id)) == 1


async def test_a_missing_skill_names_the_column_and_the_foreign_key(
    wake_engine: AsyncEngine, wake_secrets: SecretBox
) -> None:
    conversation_id = uuid.uuid4()
    async with async_sessionmaker(wake_engine)() as session:
        with pytest.raises(ConstraintViolationError) as refused:
            await WakeFactory(session, wake_secrets).schedule(conversation_id=conversation_id, skill_id=uuid.uuid4())
    assert (refused.value.field, refused.value.rule) == ("skill_id", "agent_wake_schedules_skill_fk")
    assert (refused.value.table, refused.value.sqlstate) == ("agent_wake_schedules", "23503")
    assert await stored_schedule(wake_engine, conversation_id) == []


async def test_a_check_violation_names_the_column_and_the_constraint(wake_session: AsyncSession) -> None:
    conversation_id = uuid.uuid4()
    with pytest.raises(ConstraintViolationError) as refused, translate_database_errors():
        await wake_session.execute(
            text(
                "INSERT INTO agent_wake_schedules (conversation_id, schedule_id, user_id, agent_id, schedule_type, "
                "status) VALUES (:c, :s, :u, :a, 'interval', 'bogus')"
            ),
            {"c": conversation_id, "s": uuid.uuid4(), "u": uuid.uuid4(), "a": uuid.uuid4()},
        )
    assert (refused.value.field, refused.value.rule) == ("status", "agent_wake_schedules_status_check")
    assert "bogus" not in str(refused.value)


async def test_a_check_over_two_columns_names_both(wake_session: AsyncSession) -> None:
    with pytest.raises(ConstraintViolationError) as refused, translate_database_errors():
        await wake_session.execute(
            text(
                "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, webhook_subscription_id, status) "
                "VALUES (:c, :f, NULL, NULL, 'fired'), (:c, :g, :s, :w, 'fired')"
            ),
            {"c": uuid.uuid4(), "f": uuid.uuid4(), "g": uuid.uuid4(), "s": uuid.uuid4(), "w": uuid.uuid4()},
        )
    assert refused.value.field == "schedule_id, webhook_subscription_id"
    assert refused.value.rule == "wake_fires_one_source_check"


async def test_a_refused_statement_keeps_its_values_out_of_the_message(
    wake_engine: AsyncEngine, wake_secrets: SecretBox
) -> None:
    secret_name = "a value the caller sent " + uuid.uuid4().hex
    conversation_id, schedule_id = await committed_schedule(wake_engine, wake_secrets, name=secret_name)
    async with async_sessionmaker(wake_engine)() as session:
        with pytest.raises(DuplicateError) as refused:
            await WakeFactory(session, wake_secrets).schedule(
                conversation_id=conversation_id, schedule_id=schedule_id, name=secret_name
            )
    assert secret_name not in str(refused.value)
    assert secret_name not in repr(refused.value)


def test_an_aware_instant_is_accepted_as_the_same_instant_in_utc() -> None:
    local = datetime(2026, 5, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert require_aware("at", local) == datetime(2026, 5, 1, 10, tzinfo=UTC)

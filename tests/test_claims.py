"""claim_due, one fire per period, crash recovery and batch finalization."""

import asyncio
import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_wake import (
    ConflictError,
    DueSchedule,
    FireFailure,
    FireSuccess,
    InvalidInputError,
    SecretBox,
    TransactionAbortedError,
    WakeFireRepository,
    WakeSchedule,
    WakeScheduleRepository,
)
from agent_wake._statements import PREBUILT, for_driver
from agent_wake.testing import capture_sql
from agent_wake.testing.factories import WakeFactory
from tests.clock import NOW, in_minutes

HOUR = timedelta(hours=1)
LONG_AGO = NOW - 10_000 * HOUR  # before every schedule the tests make

# On Citus, claim_due takes another path (an unlocked scan, then per shard), which
# tests/test_citus_claims.py covers; these tests pin the single server's.
PLAIN_SQL_ON_CITUS = pytest.mark.not_on_citus(
    "pins the statements of the single-server claim; on Citus claim_due sends others (tests/test_citus_claims.py)"
)
ORDER_ON_CITUS = pytest.mark.not_on_citus(
    "on Citus a batch takes each shard's oldest due schedules, not the oldest overall (README, The tick)"
)


def hourly_catch_up(schedule: WakeSchedule, now: datetime) -> datetime | None:
    """The next missed period: one hour after the claimed one."""
    assert schedule.next_fire_at is not None
    return schedule.next_fire_at + HOUR


def hourly_coalesce(schedule: WakeSchedule, now: datetime) -> datetime | None:
    """The first whole hour after now, skipping missed periods."""
    return now.replace(minute=0, second=0, microsecond=0) + HOUR


def one_shot(schedule: WakeSchedule, now: datetime) -> datetime | None:
    return None


async def claim_once_on_the_connection(session: AsyncSession) -> None:
    """A claim that finds nothing due: the session's connection has asked, once, whether the schedules
    are distributed (see the last test), and a claim after this one sends only the tick's statements."""
    assert await WakeScheduleRepository(session).claim_due(LONG_AGO, limit=1, next_fire=hourly_coalesce) == []


async def count_fires(session: AsyncSession, schedule: WakeSchedule) -> int:
    result = await session.execute(
        text("SELECT count(*) FROM wake_fires WHERE conversation_id = :c AND schedule_id = :s"),
        {"c": schedule.conversation_id, "s": schedule.schedule_id},
    )
    return int(result.scalar_one())


async def test_claim_due_writes_a_fire_per_schedule_and_reschedules(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    first = await wake_factory.schedule(next_fire_at=NOW - 2 * HOUR)
    second = await wake_factory.schedule(next_fire_at=NOW - HOUR)
    await wake_factory.schedule(next_fire_at=NOW + HOUR)  # not due
    paused = await wake_factory.schedule(next_fire_at=NOW - HOUR)
    await WakeScheduleRepository(wake_session).pause(paused.conversation_id, paused.schedule_id)

    claims = await WakeScheduleRepository(wake_session).claim_due(NOW, limit=10, next_fire=hourly_coalesce)

    assert [claim.schedule_id for claim in claims] == [first.schedule_id, second.schedule_id]
    for claim, period in zip(claims, [NOW - 2 * HOUR, NOW - HOUR], strict=True):
        fire = await WakeFireRepository(wake_session).get(claim.conversation_id, claim.fire_id)
        assert fire is not None
        assert (fire.status, fire.schedule_id) == ("dispatching", claim.schedule_id)
        assert fire.scheduled_fire_at == claim.scheduled_fire_at == period
        assert fire.actual_fired_at == claim.fired_at == NOW
        schedule = await WakeScheduleRepository(wake_session).get(claim.conversation_id, claim.schedule_id)
        assert schedule is not None
        assert schedule.next_fire_at == claim.next_fire_at == NOW + HOUR
        assert schedule.last_fired_at == NOW
        assert schedule.status == claim.schedule_status == "active"
    assert await WakeScheduleRepository(wake_session).claim_due(NOW, limit=10, next_fire=hourly_coalesce) == []


async def test_claimed_schedules_show_what_was_stored_with_nothing_left_to_flush(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    held = [
        await wake_factory.schedule(next_fire_at=NOW - HOUR),
        await wake_factory.schedule(
            schedule_type="one_shot_at", schedule_config={"fire_at_iso": NOW.isoformat()}, next_fire_at=NOW
        ),
    ]
    claims = await WakeScheduleRepository(wake_session).claim_due(
        NOW, limit=10, next_fire=lambda schedule, now: None if schedule.schedule_type == "one_shot_at" else now + HOUR
    )
    assert len(claims) == 2
    assert not wake_session.dirty
    for schedule, claim in zip(held, claims, strict=True):
        stored = (
            await wake_session.execute(
                text(
                    "SELECT status, next_fire_at, last_fired_at, date_updated FROM agent_wake_schedules "
                    "WHERE conversation_id = :c AND schedule_id = :s"
                ),
                {"c": claim.conversation_id, "s": claim.schedule_id},
            )
        ).one()
        # The objects the factory returned, refreshed in place by the claim.
        assert (schedule.status, schedule.next_fire_at, schedule.last_fired_at, schedule.date_updated) == tuple(stored)
        assert (claim.schedule_status, claim.next_fire_at) == (schedule.status, schedule.next_fire_at)
    assert {claim.schedule_status for claim in claims} == {"active", "expired"}


@ORDER_ON_CITUS
async def test_claim_due_takes_the_oldest_first_up_to_the_limit(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    schedules = [await wake_factory.schedule(next_fire_at=NOW - minutes * HOUR) for minutes in (1, 3, 2)]
    claims = await WakeScheduleRepository(wake_session).claim_due(NOW, limit=2, next_fire=hourly_coalesce)
    assert [claim.schedule_id for claim in claims] == [
        schedules[1].schedule_id,
        schedules[2].schedule_id,
    ]


async def test_a_finished_one_shot_is_expired(wake_factory: WakeFactory, wake_session: AsyncSession) -> None:
    schedule = await wake_factory.schedule(
        schedule_type="one_shot_at", schedule_config={"fire_at_iso": NOW.isoformat()}, next_fire_at=NOW
    )
    (claim,) = await WakeScheduleRepository(wake_session).claim_due(NOW, limit=10, next_fire=one_shot)
    assert claim.schedule_id == schedule.schedule_id
    assert (claim.schedule_status, claim.next_fire_at) == ("expired", None)


async def test_catch_up_claims_each_missed_period_in_turn(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule(next_fire_at=NOW - 2 * HOUR, missed_fire_policy="catch_up")
    repo = WakeScheduleRepository(wake_session)
    periods = []
    while claims := await repo.claim_due(NOW, limit=10, next_fire=hourly_catch_up):
        periods.extend(claim.scheduled_fire_at for claim in claims)
    assert periods == [NOW - 2 * HOUR, NOW - HOUR, NOW]
    assert await count_fires(wake_session, schedule) == 3


async def test_coalesce_claims_missed_periods_once(wake_factory: WakeFactory, wake_session: AsyncSession) -> None:
    schedule = await wake_factory.schedule(next_fire_at=NOW - 5 * HOUR)
    repo = WakeScheduleRepository(wake_session)
    assert len(await repo.claim_due(NOW, limit=10, next_fire=hourly_coalesce)) == 1
    assert await repo.claim_due(NOW, limit=10, next_fire=hourly_coalesce) == []
    assert await count_fires(wake_session, schedule) == 1


@pytest.mark.parametrize(
    ("bad_next_fire", "logged"),
    [
        (lambda schedule, now: schedule.next_fire_at, "not after the claimed period"),
        (lambda schedule, now: datetime(2030, 1, 1), "timezone-aware"),
        (lambda schedule, now: "tomorrow", "must be a datetime"),
        (lambda schedule, now: 1 / 0, "ZeroDivisionError"),
    ],
    ids=["same period", "naive", "not a datetime", "raises"],
)
async def test_a_schedule_whose_next_fire_fails_is_left_due_and_the_rest_are_claimed(
    wake_factory: WakeFactory,
    wake_session: AsyncSession,
    caplog: pytest.LogCaptureFixture,
    bad_next_fire: Any,
    logged: str,
) -> None:
    broken = await wake_factory.schedule(next_fire_at=NOW - 2 * HOUR)
    healthy = await wake_factory.schedule(next_fire_at=NOW - HOUR)

    def next_fire(schedule: WakeSchedule, now: datetime) -> datetime | None:
        if schedule.schedule_id == broken.schedule_id:
            return bad_next_fire(schedule, now)  # type: ignore[no-any-return]
        return hourly_coalesce(schedule, now)

    claims = await WakeScheduleRepository(wake_session).claim_due(NOW, limit=10, next_fire=next_fire)

    assert [claim.schedule_id for claim in claims] == [healthy.schedule_id]
    assert await count_fires(wake_session, broken) == 0
    stored = await WakeScheduleRepository(wake_session).get(broken.conversation_id, broken.schedule_id)
    assert stored is not None
    assert (stored.status, stored.next_fire_at, stored.last_fired_at) == ("active", NOW - 2 * HOUR, None)
    assert str(broken.schedule_id) in caplog.text
    assert logged in caplog.text


@PLAIN_SQL_ON_CITUS
async def test_broken_schedules_that_fill_the_batch_do_not_starve_a_healthy_one(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    broken = {(await wake_factory.schedule(next_fire_at=NOW - 3 * HOUR)).schedule_id for _ in range(3)}
    healthy = await wake_factory.schedule(next_fire_at=NOW - HOUR)

    def next_fire(schedule: WakeSchedule, now: datetime) -> datetime | None:
        if schedule.schedule_id in broken:
            raise RuntimeError("broken schedule arithmetic")
        return hourly_coalesce(schedule, now)

    await claim_once_on_the_connection(wake_session)
    with capture_sql(wake_session) as captured:
        claims = await WakeScheduleRepository(wake_session).claim_due(NOW, limit=3, next_fire=next_fire)

    assert [claim.schedule_id for claim in claims] == [healthy.schedule_id]
    locking = [PREBUILT[name] for name in ("schedules.claim_lock", "schedules.claim_lock_excluding")]
    assert [statement.sql for statement in captured][:2] == [
        str(statement.compile(dialect=wake_session.bind.dialect)) for statement in locking
    ]


async def test_an_advanced_period_that_already_fired_keeps_its_last_fired_at(
    wake_factory: WakeFactory, wake_session: AsyncSession, caplog: pytest.LogCaptureFixture
) -> None:
    schedule = await wake_factory.schedule(next_fire_at=NOW - HOUR)
    await WakeFireRepository(wake_session).create_dispatching(
        conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id, scheduled_fire_at=NOW - HOUR
    )

    claims = await WakeScheduleRepository(wake_session).claim_due(NOW, limit=10, next_fire=hourly_coalesce)

    assert claims == []
    assert (schedule.next_fire_at, schedule.last_fired_at) == (NOW + HOUR, None)
    assert "already has its fire" in caplog.text


async def test_a_period_that_already_has_its_fire_gets_no_second_one(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    rearmed = await wake_factory.schedule(next_fire_at=NOW - HOUR)
    other = await wake_factory.schedule(next_fire_at=NOW - HOUR)
    repo = WakeScheduleRepository(wake_session)
    await repo.claim_due(NOW, limit=10, next_fire=hourly_coalesce)
    # Re-armed at the instant it already fired for, as a user may do:
    await repo.update_next_fire_at(rearmed.conversation_id, rearmed.schedule_id, NOW - HOUR)
    await repo.update_next_fire_at(other.conversation_id, other.schedule_id, NOW - HOUR / 2)

    claims = await repo.claim_due(NOW, limit=10, next_fire=hourly_coalesce)

    assert [claim.schedule_id for claim in claims] == [other.schedule_id]
    assert await count_fires(wake_session, rearmed) == 1
    stored = await repo.get(rearmed.conversation_id, rearmed.schedule_id)
    assert stored is not None
    assert stored.next_fire_at == NOW + HOUR


async def test_claim_due_refuses_bad_arguments(wake_session: AsyncSession) -> None:
    repo = WakeScheduleRepository(wake_session)
    with pytest.raises(InvalidInputError) as caught:
        await repo.claim_due(datetime(2026, 1, 1), limit=10, next_fire=hourly_coalesce)
    assert caught.value.field == "now"
    with pytest.raises(InvalidInputError) as caught:
        await repo.claim_due(NOW, limit=0, next_fire=hourly_coalesce)
    assert caught.value.field == "limit"
    with pytest.raises(InvalidInputError) as caught:
        await repo.claim_due(NOW, limit=10, next_fire=None)  # type: ignore[arg-type]
    assert caught.value.field == "next_fire"


@PLAIN_SQL_ON_CITUS
@pytest.mark.parametrize("batch", [3, 1_500])
async def test_a_batch_costs_three_statements_whatever_its_size(
    wake_engine: AsyncEngine, wake_secrets: Any, batch: int
) -> None:
    await seed_due_schedules(wake_engine, count=batch, conversations=10)
    async with AsyncSession(wake_engine) as session, session.begin():
        await claim_once_on_the_connection(session)
        with capture_sql(wake_engine) as captured:
            claims = await WakeScheduleRepository(session).claim_due(NOW, limit=batch, next_fire=hourly_coalesce)
    sent = [statement.sql for statement in captured]
    assert len(claims) == batch
    # The texts are the prebuilt ones, whatever the batch size: one plan, one guard decision.
    names = ["schedules.claim_lock", "schedules.claim_fires", "schedules.claim_reschedule"]
    assert sent == [str(PREBUILT[name].compile(dialect=wake_engine.dialect)) for name in names]


@pytest.mark.not_on_citus(
    "Citus relays a worker's error without its table and constraint fields (the message names the shard's)"
)
async def test_a_second_fire_for_the_same_period_is_a_conflict(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule()
    fires = WakeFireRepository(wake_session)
    await fires.create_dispatching(
        conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id, scheduled_fire_at=NOW
    )
    with pytest.raises(ConflictError, match="idx_wake_fires_schedule_period"):
        await fires.create_dispatching(
            conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id, scheduled_fire_at=NOW
        )


async def test_list_stale_dispatching_finds_fires_left_in_flight(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    fires = WakeFireRepository(wake_session)
    old = await wake_factory.fire(actual_fired_at=in_minutes(-30))
    older = await wake_factory.fire(actual_fired_at=in_minutes(-60))
    await wake_factory.fire(actual_fired_at=in_minutes(-90), status="fired")
    await wake_factory.fire(actual_fired_at=in_minutes(-1))
    stale = await fires.list_stale_dispatching(in_minutes(-10), limit=10)
    assert [fire.fire_id for fire in stale] == [older.fire_id, old.fire_id]
    assert [fire.fire_id for fire in await fires.list_stale_dispatching(in_minutes(-10), limit=1)] == [older.fire_id]
    recovered = await fires.finalize_failed(older.conversation_id, older.fire_id, error="worker died")
    assert recovered.status == "failed"
    again = await fires.finalize_failed(older.conversation_id, older.fire_id, error="worker died")
    assert again.error == "worker died"


async def test_batch_finalization_in_one_statement(wake_factory: WakeFactory, wake_session: AsyncSession) -> None:
    in_flight = [await wake_factory.fire() for _ in range(3)]
    already_final = await wake_factory.fire(status="fired")
    fires = WakeFireRepository(wake_session)
    connection = await wake_session.connection()
    outcomes = [
        FireSuccess(in_flight[0].conversation_id, in_flight[0].fire_id, "fired", "done", 120, False),
        FireSuccess(in_flight[1].conversation_id, in_flight[1].fire_id, "fired_silent", "[SILENT]", 80, True),
        FireSuccess(already_final.conversation_id, already_final.fire_id, "skipped_busy"),
        FireSuccess(uuid.uuid4(), uuid.uuid4(), "fired"),
    ]
    sent: list[str] = []
    event.listen(connection.sync_connection, "before_cursor_execute", lambda *args: sent.append(args[2]))
    finalized = await fires.finalize_success_batch(outcomes)
    assert len(sent) == 1
    assert {fire.fire_id: fire.status for fire in finalized} == {
        in_flight[0].fire_id: "fired",
        in_flight[1].fire_id: "fired_silent",
    }
    assert finalized[0].output_text in {"done", "[SILENT]"}
    failed = await fires.finalize_failed_batch(
        [FireFailure(in_flight[2].conversation_id, in_flight[2].fire_id, "timeout", 30_000)]
    )
    assert [(fire.status, fire.error, fire.latency_ms) for fire in failed] == [("failed", "timeout", 30_000)]
    stored = await fires.get(already_final.conversation_id, already_final.fire_id)
    assert stored is not None
    assert stored.status == "fired"


async def test_batch_finalization_refuses_bad_outcomes_naming_them(wake_session: AsyncSession) -> None:
    fires = WakeFireRepository(wake_session)
    fire_id, conversation_id = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(InvalidInputError) as caught:
        await fires.finalize_success_batch(
            [
                FireSuccess(conversation_id, fire_id, "fired"),
                FireSuccess(conversation_id, uuid.uuid4(), "failed"),
            ]
        )
    assert caught.value.field == "outcomes[1].status"
    with pytest.raises(InvalidInputError) as caught:
        await fires.finalize_failed_batch([FireFailure(conversation_id, fire_id, "x")] * 2)
    assert caught.value.field == "outcomes"
    with pytest.raises(InvalidInputError) as caught:
        await fires.finalize_success_batch(None)  # type: ignore[arg-type]
    assert caught.value.field == "outcomes"
    with pytest.raises(InvalidInputError) as caught:
        await fires.finalize_success_batch([FireFailure(conversation_id, fire_id, "x")])  # type: ignore[list-item]
    assert caught.value.field == "outcomes[0]"
    assert await fires.finalize_success_batch([]) == []


async def test_an_empty_output_is_a_real_output(wake_factory: WakeFactory, wake_session: AsyncSession) -> None:
    fire = await wake_factory.fire()
    silent = await WakeFireRepository(wake_session).finalize_success(
        fire.conversation_id, fire.fire_id, status="fired_silent", output_text="", display_suppressed=True
    )
    assert (silent.status, silent.output_text) == ("fired_silent", "")


async def seed_due_schedules(engine: AsyncEngine, count: int, conversations: int) -> None:
    conversation_ids = [uuid.uuid4() for _ in range(conversations)]
    rows = [
        {
            "conversation_id": conversation_ids[index % conversations],
            "schedule_id": uuid.uuid4(),
            "user_id": uuid.uuid4(),
            "agent_id": uuid.uuid4(),
            "schedule_type": "interval",
            "schedule_config": {"seconds": 3600},
            "next_fire_at": NOW - timedelta(seconds=index),
        }
        for index in range(count)
    ]
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(insert(WakeSchedule), rows)


async def test_recovery_reports_a_fire_finalized_meanwhile_as_stored(
    wake_engine: AsyncEngine, wake_secrets: SecretBox
) -> None:
    sessions = async_sessionmaker(wake_engine, expire_on_commit=False)
    async with sessions.begin() as setup:
        left = await WakeFactory(setup, wake_secrets).fire(actual_fired_at=in_minutes(-60))
    async with sessions() as recovery:
        async with recovery.begin():
            stale = await WakeFireRepository(recovery).list_stale_dispatching(in_minutes(-10), limit=10)
        (held,) = [fire for fire in stale if fire.fire_id == left.fire_id]
        async with sessions.begin() as worker:  # the worker was slow, not dead
            await WakeFireRepository(worker).finalize_success(
                left.conversation_id, left.fire_id, status="fired", output_text="done"
            )
        async with recovery.begin():
            reported = await WakeFireRepository(recovery).finalize_failed(
                left.conversation_id, left.fire_id, error="worker died"
            )
    assert reported is held
    assert (reported.status, reported.output_text, reported.error) == ("fired", "done", None)


async def test_eight_workers_claim_every_due_period_exactly_once(wake_engine: AsyncEngine) -> None:
    await seed_due_schedules(wake_engine, count=5_000, conversations=500)
    sessions = async_sessionmaker(wake_engine, expire_on_commit=False)

    async def worker() -> list[uuid.UUID]:
        claimed: list[uuid.UUID] = []
        while True:
            async with sessions.begin() as session:
                claims = await WakeScheduleRepository(session).claim_due(NOW, limit=100, next_fire=hourly_coalesce)
            if not claims:
                return claimed
            claimed.extend(claim.schedule_id for claim in claims)

    per_worker = await asyncio.gather(*(worker() for _ in range(8)))
    claimed = [schedule_id for batch in per_worker for schedule_id in batch]
    assert len(claimed) == 5_000
    assert len(set(claimed)) == 5_000
    assert sum(1 for batch in per_worker if batch) > 1, "the workers did not share the work"
    async with wake_engine.connect() as connection:
        from agent_wake import spans_partitions

        with spans_partitions("test: check every schedule and fire"):
            fires = await connection.execute(
                text(
                    "SELECT count(*), count(DISTINCT schedule_id), count(*) FILTER (WHERE status <> 'dispatching') "
                    "FROM wake_fires"
                )
            )
            left_due = await connection.execute(
                text("SELECT count(*) FROM agent_wake_schedules WHERE status = 'active' AND next_fire_at <= :now"),
                {"now": NOW},
            )
    assert tuple(fires.one()) == (5_000, 5_000, 0)
    assert left_due.scalar_one() == 0


async def test_a_claim_that_dies_before_commit_leaves_the_schedules_claimable(
    wake_engine: AsyncEngine,
) -> None:
    await seed_due_schedules(wake_engine, count=20, conversations=4)
    sessions = async_sessionmaker(wake_engine, expire_on_commit=False)
    doomed = sessions()
    await doomed.begin()
    doomed_claims = await WakeScheduleRepository(doomed).claim_due(NOW, limit=20, next_fire=hourly_coalesce)
    assert len(doomed_claims) == 20
    backend = (await doomed.execute(text("SELECT pg_backend_pid()"))).scalar_one()

    async with sessions.begin() as rival:  # while the doomed tick holds the locks, they are skipped
        assert await WakeScheduleRepository(rival).claim_due(NOW, limit=20, next_fire=hourly_coalesce) == []

    async with wake_engine.connect() as admin:
        await admin.execute(text("SELECT pg_terminate_backend(CAST(:pid AS integer))"), {"pid": backend})
    with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's error for a terminated connection
        await doomed.commit()
    await doomed.close()

    async with sessions.begin() as next_tick:
        claims = await WakeScheduleRepository(next_tick).claim_due(NOW, limit=50, next_fire=hourly_coalesce)
    assert {claim.schedule_id for claim in claims} == {claim.schedule_id for claim in doomed_claims}
    assert all(claim.scheduled_fire_at <= NOW for claim in claims)


async def test_a_failure_on_the_driver_connection_is_an_agent_wake_error(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    await wake_factory.schedule(next_fire_at=NOW - HOUR)  # the transaction has begun: the claim runs on the driver
    driver = (await (await wake_session.connection()).get_raw_connection()).driver_connection
    with pytest.raises(asyncpg.DivisionByZeroError):
        await driver.execute("SELECT 1 / 0")  # fails the transaction behind SQLAlchemy's back
    with pytest.raises(TransactionAbortedError):
        await WakeScheduleRepository(wake_session).claim_due(NOW, limit=10, next_fire=hourly_coalesce)


async def _claim_watching_the_driver(session: AsyncSession, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """claim_due in a transaction that has begun; the SQL it sent with asyncpg's ``Connection.fetch``
    (which SQLAlchemy's dialect never calls: it runs its own prepared statements)."""
    await session.execute(text("SELECT 1"))
    sent_on_driver: list[str] = []
    fetch = asyncpg.Connection.fetch

    async def watched_fetch(driver: asyncpg.Connection, sql: str, *arguments: Any) -> Any:
        sent_on_driver.append(sql)
        return await fetch(driver, sql, *arguments)

    monkeypatch.setattr(asyncpg.Connection, "fetch", watched_fetch)
    await WakeScheduleRepository(session).claim_due(NOW, limit=10, next_fire=hourly_coalesce)
    monkeypatch.undo()
    return sent_on_driver


@PLAIN_SQL_ON_CITUS
async def test_the_claim_runs_on_the_driver_connection_when_only_agent_wake_listens(
    wake_factory: WakeFactory, wake_session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    await wake_factory.schedule(next_fire_at=NOW - HOUR)
    await claim_once_on_the_connection(wake_session)
    with capture_sql(wake_session) as captured:
        sent_on_driver = await _claim_watching_the_driver(wake_session, monkeypatch)
    tick = ("schedules.claim_lock", "schedules.claim_fires", "schedules.claim_reschedule")
    assert sent_on_driver == [for_driver(name).sql for name in tick]
    assert [statement.sql for statement in captured][1:] == sent_on_driver  # the guard and capture_sql saw them


@PLAIN_SQL_ON_CITUS
async def test_the_claim_goes_through_sqlalchemy_when_others_listen_to_the_engine(
    wake_factory: WakeFactory, wake_session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    await wake_factory.schedule(next_fire_at=NOW - HOUR)
    await claim_once_on_the_connection(wake_session)
    contexts: list[object] = []

    def tracing(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        contexts.append(context.execution_options)  # what a tracer does: it needs the context

    connection = (await wake_session.connection()).sync_connection
    event.listen(connection, "before_cursor_execute", tracing)
    try:
        sent_on_driver = await _claim_watching_the_driver(wake_session, monkeypatch)
    finally:
        event.remove(connection, "before_cursor_execute", tracing)
    assert sent_on_driver == []
    assert len(contexts) == 4  # SELECT 1 and the claim's three statements


def test_a_due_schedule_has_the_table_columns_in_their_order() -> None:
    assert tuple(field.name for field in dataclasses.fields(DueSchedule)) == tuple(
        column.name for column in WakeSchedule.__table__.columns
    )


@PLAIN_SQL_ON_CITUS
async def test_the_first_claim_on_a_connection_asks_once_whether_the_schedules_are_distributed(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    await wake_factory.schedule(next_fire_at=NOW - HOUR)
    await wake_factory.schedule(next_fire_at=NOW - HOUR / 2)
    repo = WakeScheduleRepository(wake_session)
    with capture_sql(wake_session) as captured:
        first = await repo.claim_due(NOW, limit=1, next_fire=hourly_coalesce)
        second = await repo.claim_due(NOW, limit=1, next_fire=hourly_coalesce)
    assert (len(first), len(second)) == (1, 1)
    # Without the citus extension, one question (the second, whether Citus distributes the table, is not asked).
    tick = ["schedules.claim_lock", "schedules.claim_fires", "schedules.claim_reschedule"]
    expected = ["schedules.citus_installed", *tick, *tick]
    assert [statement.sql for statement in captured] == [for_driver(name).sql for name in expected]

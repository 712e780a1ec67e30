"""What a session holds is what the database holds.

Each test holds an object in one session, lets a second session change the
row and commit, then runs a write (or a read) in the first session: the held
object must show the row as stored afterwards, whether the write won or
lost. Every test runs with both settings of ``expire_on_commit``: the
package's own factory (False) and SQLAlchemy's default (True), which a
service's own ``async_sessionmaker`` has.
"""

import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_wake import (
    ConnectionLostError,
    DuplicateError,
    FireSuccess,
    SecretBox,
    StatusConflictError,
    TransactionAbortedError,
    WakeFire,
    WakeFireRepository,
    WakeSchedule,
    WakeScheduleRepository,
    WebhookSubscription,
    WebhookSubscriptionRepository,
)
from agent_wake.testing.factories import WakeFactory
from tests.clock import NOW

HOUR = timedelta(hours=1)
NO_ID = uuid.UUID(int=0)


async def _none(secret: Awaitable[str]) -> None:
    """rotate_secret returns the new secret; the held object is what this test checks."""
    await secret


@pytest.fixture(params=[False, True], ids=["expire_on_commit=False", "expire_on_commit=True"])
def sessions(request: pytest.FixtureRequest, wake_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(wake_engine, expire_on_commit=request.param)


@pytest.fixture
async def mine(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """The long-lived session under test."""
    async with sessions() as session:
        yield session


@dataclass(frozen=True)
class Made:
    """The key of a committed row, read inside its transaction (with expire_on_commit=True
    nothing of the returned object can be read after it)."""

    conversation_id: uuid.UUID
    schedule_id: uuid.UUID = NO_ID
    fire_id: uuid.UUID = NO_ID
    subscription_id: uuid.UUID = NO_ID


async def committed_schedule(sessions: async_sessionmaker[AsyncSession], secrets: SecretBox) -> Made:
    async with sessions.begin() as session:
        schedule = await WakeFactory(session, secrets).schedule(next_fire_at=NOW)
        return Made(schedule.conversation_id, schedule_id=schedule.schedule_id)


async def committed_fire(sessions: async_sessionmaker[AsyncSession], secrets: SecretBox, **overrides: Any) -> Made:
    async with sessions.begin() as session:
        fire = await WakeFactory(session, secrets).fire(**overrides)
        return Made(fire.conversation_id, schedule_id=fire.schedule_id or NO_ID, fire_id=fire.fire_id)


async def committed_subscription(sessions: async_sessionmaker[AsyncSession], secrets: SecretBox) -> Made:
    async with sessions.begin() as session:
        subscription = await WakeFactory(session, secrets).subscription()
        return Made(subscription.conversation_id, subscription_id=subscription.subscription_id)


async def held_schedule(mine: AsyncSession, made: Made) -> WakeSchedule:
    held = await WakeScheduleRepository(mine).get(made.conversation_id, made.schedule_id)
    assert held is not None
    await mine.commit()  # the held object outlives this transaction, as in a long-lived service session
    return held


async def stored(sessions: async_sessionmaker[AsyncSession], table: str, key: str, row: Made) -> dict[str, object]:
    """The row as another session reads it now."""
    async with sessions() as session:
        found = await session.execute(
            text(f"SELECT * FROM {table} WHERE conversation_id = :c AND {key} = :k"),
            {"c": row.conversation_id, "k": getattr(row, key)},
        )
        return dict(found.mappings().one())


async def test_get_refreshes_a_held_schedule_that_changed_elsewhere(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await held_schedule(mine, made)
    async with sessions.begin() as other:
        await WakeScheduleRepository(other).mark_expired(made.conversation_id, made.schedule_id)

    again = await WakeScheduleRepository(mine).get(made.conversation_id, made.schedule_id)

    assert again is held
    assert (held.status, held.next_fire_at) == ("expired", None)


async def test_a_list_refreshes_the_held_schedules_it_returns(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await held_schedule(mine, made)
    async with sessions.begin() as other:
        await WakeScheduleRepository(other).update(made.conversation_id, made.schedule_id, name="renamed")

    (listed,) = await WakeScheduleRepository(mine).list_for_conversation(made.conversation_id)

    assert listed is held
    assert held.name == "renamed"


async def test_a_pause_refused_for_a_schedule_expired_elsewhere_reports_and_shows_the_stored_status(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await held_schedule(mine, made)
    async with sessions.begin() as other:
        await WakeScheduleRepository(other).mark_expired(made.conversation_id, made.schedule_id)

    with pytest.raises(StatusConflictError) as refused:
        await WakeScheduleRepository(mine).pause(made.conversation_id, made.schedule_id)

    assert refused.value.status == "expired"
    assert held.status == "expired"
    assert (await stored(sessions, "agent_wake_schedules", "schedule_id", made))["status"] == "expired"


@pytest.mark.parametrize("write", ["update", "update_next_fire_at", "pause", "resume", "mark_expired"])
async def test_a_schedule_write_returns_the_held_object_as_stored(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox, write: str
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await held_schedule(mine, made)
    async with sessions.begin() as other:  # a change the held copy has not seen
        await WakeScheduleRepository(other).update(made.conversation_id, made.schedule_id, task_prompt="elsewhere")
    repository = WakeScheduleRepository(mine)
    key = (made.conversation_id, made.schedule_id)
    calls = {
        "update": lambda: repository.update(*key, name="mine"),
        "update_next_fire_at": lambda: repository.update_next_fire_at(*key, NOW + HOUR),
        "pause": lambda: repository.pause(*key),
        "resume": lambda: repository.resume(*key, next_fire_at=NOW + HOUR),
        "mark_expired": lambda: repository.mark_expired(*key),
    }

    written = await calls[write]()
    seen = (held.task_prompt, held.name, held.status, held.next_fire_at, held.date_updated)
    await mine.commit()

    row = await stored(sessions, "agent_wake_schedules", "schedule_id", made)
    assert written is held
    assert seen == (row["task_prompt"], row["name"], row["status"], row["next_fire_at"], row["date_updated"])
    assert row["task_prompt"] == "elsewhere"


async def test_a_lost_claim_leaves_the_held_schedule_showing_the_winners_values(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await held_schedule(mine, made)
    claim = {
        "conversation_id": made.conversation_id,
        "schedule_id": made.schedule_id,
        "expected_next_fire": NOW,
        "new_status": "active",
        "now": NOW,
    }
    async with sessions.begin() as winner:
        assert await WakeScheduleRepository(winner).claim_and_reschedule(**claim, computed_next_fire=NOW + HOUR)  # type: ignore[arg-type]

    lost = await WakeScheduleRepository(mine).claim_and_reschedule(**claim, computed_next_fire=NOW + 5 * HOUR)  # type: ignore[arg-type]

    assert lost is False
    assert held.next_fire_at == NOW + HOUR
    assert held.last_fired_at == NOW


async def test_a_won_claim_shows_its_own_values_in_the_held_schedule(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await held_schedule(mine, made)

    won = await WakeScheduleRepository(mine).claim_and_reschedule(
        conversation_id=made.conversation_id,
        schedule_id=made.schedule_id,
        expected_next_fire=NOW,
        computed_next_fire=NOW + HOUR,
        new_status="active",
        now=NOW,
    )

    assert won is True
    assert (held.next_fire_at, held.last_fired_at) == (NOW + HOUR, NOW)


async def test_claims_stay_readable_after_the_claims_transaction(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    async with sessions.begin() as session:  # the README's tick pattern
        claims = await WakeScheduleRepository(session).claim_due(
            NOW, limit=10, next_fire=lambda schedule, now: now + HOUR
        )
    (claim,) = claims
    assert (claim.conversation_id, claim.schedule_id, claim.scheduled_fire_at) == (
        made.conversation_id,
        made.schedule_id,
        NOW,
    )
    async with sessions.begin() as session:
        (finalized,) = await WakeFireRepository(session).finalize_success_batch(
            [FireSuccess(claim.conversation_id, claim.fire_id, "fired", "done")]
        )
        assert finalized.output_text == "done"


async def test_claim_due_refreshes_a_held_schedule(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await held_schedule(mine, made)

    (claim,) = await WakeScheduleRepository(mine).claim_due(NOW, limit=10, next_fire=lambda schedule, now: None)

    assert (held.status, held.next_fire_at, held.last_fired_at) == ("expired", None, NOW)
    assert (claim.schedule_status, claim.next_fire_at) == ("expired", None)


async def test_claim_due_refreshes_what_another_session_changed_in_a_held_schedule(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await held_schedule(mine, made)
    async with sessions.begin() as other:
        await WakeScheduleRepository(other).update(made.conversation_id, made.schedule_id, name="renamed elsewhere")

    await WakeScheduleRepository(mine).claim_due(NOW, limit=10, next_fire=lambda schedule, now: None)

    assert held.name == "renamed elsewhere"


async def test_finalize_refreshes_a_held_fire_finalized_elsewhere(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    fire = await committed_fire(sessions, wake_secrets)
    held = await WakeFireRepository(mine).get(fire.conversation_id, fire.fire_id)
    assert held is not None
    assert held.status == "dispatching"
    async with sessions.begin() as other:
        await WakeFireRepository(other).finalize_success(fire.conversation_id, fire.fire_id, status="fired")

    result = await WakeFireRepository(mine).finalize_failed(fire.conversation_id, fire.fire_id, error="late")

    assert result is held
    assert (held.status, held.error) == ("fired", None)


async def test_a_batch_finalize_refreshes_held_fires_and_leaves_unmatched_ones_alone(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    pending = await committed_fire(sessions, wake_secrets)
    done = await committed_fire(sessions, wake_secrets, status="fired")
    held_pending = await WakeFireRepository(mine).get(pending.conversation_id, pending.fire_id)
    held_done = await WakeFireRepository(mine).get(done.conversation_id, done.fire_id)
    assert held_pending is not None
    assert held_done is not None

    finalized = await WakeFireRepository(mine).finalize_success_batch(
        [
            FireSuccess(pending.conversation_id, pending.fire_id, "fired_silent", "quiet"),
            FireSuccess(done.conversation_id, done.fire_id, "skipped_busy"),
        ]
    )

    assert finalized == [held_pending]
    assert (held_pending.status, held_pending.output_text) == ("fired_silent", "quiet")
    assert held_done.status == "fired"


@pytest.mark.parametrize("write", ["pause", "resume", "record_fire", "rotate_secret"])
async def test_a_subscription_write_returns_the_held_object_as_stored(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox, write: str
) -> None:
    made = await committed_subscription(sessions, wake_secrets)
    repository = WebhookSubscriptionRepository(mine, wake_secrets)
    held = await repository.get(made.conversation_id, made.subscription_id)
    assert held is not None
    await mine.commit()
    async with sessions.begin() as other:
        await WebhookSubscriptionRepository(other, wake_secrets).rotate_secret(
            made.conversation_id, made.subscription_id, "changed elsewhere"
        )
    key = (made.conversation_id, made.subscription_id)
    calls = {
        "pause": lambda: repository.pause(*key),
        "resume": lambda: repository.resume(*key),
        "record_fire": lambda: repository.record_fire(*key, fired_at=NOW),
        "rotate_secret": lambda: _none(repository.rotate_secret(*key, "mine")),
    }

    written = await calls[write]()
    seen = (held.status, held.secret_ciphertext, held.last_fired_at, held.date_updated)
    await mine.commit()

    row = await stored(sessions, "webhook_subscriptions", "subscription_id", made)
    assert written is None or written is held
    assert seen == (row["status"], row["secret_ciphertext"], row["last_fired_at"], row["date_updated"])
    assert await repository.reveal_secret(*key) == ("mine" if write == "rotate_secret" else "changed elsewhere")


async def test_a_refused_record_fire_shows_the_stored_status(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_subscription(sessions, wake_secrets)
    repository = WebhookSubscriptionRepository(mine, wake_secrets)
    held = await repository.get(made.conversation_id, made.subscription_id)
    assert held is not None
    await mine.commit()
    async with sessions.begin() as other:
        await WebhookSubscriptionRepository(other, wake_secrets).pause(made.conversation_id, made.subscription_id)

    with pytest.raises(StatusConflictError) as refused:
        await repository.record_fire(made.conversation_id, made.subscription_id, fired_at=NOW)

    assert refused.value.status == held.status == "paused"


async def test_deleting_a_schedule_drops_it_and_its_held_fires_from_the_session(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    fire = await committed_fire(sessions, wake_secrets)
    schedule = await WakeScheduleRepository(mine).get(fire.conversation_id, fire.schedule_id)
    held_fire = await WakeFireRepository(mine).get(fire.conversation_id, fire.fire_id)

    await WakeScheduleRepository(mine).delete(fire.conversation_id, fire.schedule_id)

    assert schedule not in mine
    assert held_fire not in mine  # ON DELETE CASCADE took its row
    assert await WakeFireRepository(mine).get(fire.conversation_id, fire.fire_id) is None


async def test_deleting_a_subscription_clears_the_source_of_its_held_fires(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    subscription = await committed_subscription(sessions, wake_secrets)
    fire = await committed_fire(
        sessions,
        wake_secrets,
        conversation_id=subscription.conversation_id,
        webhook_subscription_id=subscription.subscription_id,
    )
    held_fire = await WakeFireRepository(mine).get(fire.conversation_id, fire.fire_id)
    assert held_fire is not None

    await WebhookSubscriptionRepository(mine, wake_secrets).delete(
        subscription.conversation_id, subscription.subscription_id
    )

    assert held_fire.webhook_subscription_id is None  # ON DELETE SET NULL, without a round trip
    assert held_fire not in mine.dirty
    await mine.commit()
    assert (await stored(sessions, "wake_fires", "fire_id", fire))["webhook_subscription_id"] is None


@pytest.mark.parametrize("model", [WakeSchedule, WakeFire, WebhookSubscription])
async def test_repr_of_an_expired_or_detached_object_does_no_io(
    wake_engine: AsyncEngine, wake_secrets: SecretBox, model: type
) -> None:
    sessions = async_sessionmaker(wake_engine, expire_on_commit=True)
    async with sessions() as session:
        factory = WakeFactory(session, wake_secrets)
        made = {
            WakeSchedule: factory.schedule,
            WakeFire: factory.fire,
            WebhookSubscription: factory.subscription,
        }
        row = await made[model]()
        key = repr(row)
        await session.commit()  # every attribute expired
        assert repr(row) == key
    assert repr(row) == key  # detached and expired: still no load
    assert key.startswith(f"{model.__name__}(conversation_id=UUID(")


async def test_deleting_a_schedule_forgets_its_expired_held_objects_too(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    fire = await committed_fire(sessions, wake_secrets)
    schedule = await WakeScheduleRepository(mine).get(fire.conversation_id, fire.schedule_id)
    held_fire = await WakeFireRepository(mine).get(fire.conversation_id, fire.fire_id)
    mine.expire_all()  # what commit() does with expire_on_commit=True, and rollback() always

    await WakeScheduleRepository(mine).delete(fire.conversation_id, fire.schedule_id)

    assert schedule not in mine
    assert held_fire not in mine


async def test_a_lost_connection_on_a_write_leaves_the_row_and_a_usable_session_after_rollback(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    held = await WakeScheduleRepository(mine).get(made.conversation_id, made.schedule_id)
    assert held is not None
    backend = (await mine.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    async with sessions() as killer:
        await killer.execute(text("SELECT pg_terminate_backend(CAST(:pid AS integer))"), {"pid": backend})

    with pytest.raises(ConnectionLostError):
        await WakeScheduleRepository(mine).pause(made.conversation_id, made.schedule_id)
    await mine.rollback()

    again = await WakeScheduleRepository(mine).get(made.conversation_id, made.schedule_id)
    assert again is held
    assert held.status == "active"
    assert (await stored(sessions, "agent_wake_schedules", "schedule_id", made))["status"] == "active"


async def test_after_a_refused_insert_the_next_call_says_roll_back_and_then_works(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    made = await committed_schedule(sessions, wake_secrets)
    with pytest.raises(DuplicateError):
        await WakeFactory(mine, wake_secrets).schedule(
            conversation_id=made.conversation_id, schedule_id=made.schedule_id
        )

    with pytest.raises(TransactionAbortedError):
        await WakeScheduleRepository(mine).get(made.conversation_id, made.schedule_id)
    await mine.rollback()

    assert await WakeScheduleRepository(mine).get(made.conversation_id, made.schedule_id) is not None


async def test_after_a_refused_statement_the_next_call_says_roll_back(
    sessions: async_sessionmaker[AsyncSession], mine: AsyncSession, wake_secrets: SecretBox
) -> None:
    fire = await committed_fire(sessions, wake_secrets)
    fires = WakeFireRepository(mine)
    await fires.create_dispatching(
        conversation_id=fire.conversation_id, schedule_id=fire.schedule_id, scheduled_fire_at=NOW
    )
    with pytest.raises(DuplicateError):  # one fire per period
        await fires.create_dispatching(
            conversation_id=fire.conversation_id, schedule_id=fire.schedule_id, scheduled_fire_at=NOW
        )

    with pytest.raises(TransactionAbortedError) as aborted:
        await fires.get(fire.conversation_id, fire.fire_id)
    assert aborted.value.sqlstate == "25P02"
    await mine.rollback()
    assert await fires.get(fire.conversation_id, fire.fire_id) is not None

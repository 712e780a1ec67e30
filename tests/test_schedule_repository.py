"""WakeScheduleRepository against the migrated database."""

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_wake import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SecretBox,
    SerializationError,
    WakeSchedule,
    WakeScheduleRepository,
)
from agent_wake.testing.factories import WakeFactory
from tests.clock import NOW, in_minutes


@pytest.fixture
def repo(wake_session: AsyncSession) -> WakeScheduleRepository:
    return WakeScheduleRepository(wake_session)


async def count_schedules(wake_session: AsyncSession, conversation_id: uuid.UUID) -> int:
    result = await wake_session.execute(
        text("SELECT count(*) FROM agent_wake_schedules WHERE conversation_id = :c"), {"c": conversation_id}
    )
    return int(result.scalar_one())


async def test_create_returns_the_stored_row_with_server_defaults(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    conversation_id = uuid.uuid4()
    created = await wake_factory.schedule(
        conversation_id=conversation_id, schedule_type="cron", schedule_config={"expr": "0 */3 * * *"}
    )
    assert created.schedule_id.version == 7
    assert created.status == "active"
    assert created.execution_mode == "inline"
    assert created.missed_fire_policy == "coalesce"
    assert created.include_conversation_history is True
    assert created.date_created.tzinfo is not None
    row = (
        await wake_session.execute(
            text("SELECT schedule_config FROM agent_wake_schedules WHERE conversation_id = :c AND schedule_id = :s"),
            {"c": created.conversation_id, "s": created.schedule_id},
        )
    ).one()
    assert row.schedule_config == {"expr": "0 */3 * * *"}


async def test_create_keeps_a_given_schedule_id(wake_factory: WakeFactory, wake_session: AsyncSession) -> None:
    given = uuid.uuid4()
    created = await wake_factory.schedule(conversation_id=uuid.uuid4(), schedule_id=given)
    assert created.schedule_id == given


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"schedule_type": "fortnightly"}, "schedule_type"),
        ({"schedule_type": "cron", "schedule_config": {"expr": "61 * * * *"}}, "schedule_config.expr"),
        ({"schedule_config": {"seconds": 0}}, "schedule_config.seconds"),
        ({"execution_mode": "forked"}, "execution_mode"),
        ({"status": "expired", "next_fire_at": None}, "status"),
        ({"missed_fire_policy": "skip"}, "missed_fire_policy"),
        ({"next_fire_at": datetime(2026, 1, 1, 12)}, "next_fire_at"),
        ({"conversation_id": "not-a-uuid"}, "conversation_id"),
        ({"include_conversation_history": "yes"}, "include_conversation_history"),
        ({"status": "paused"}, "next_fire_at"),
        ({"context_from_schedule_id": uuid.uuid4()}, "context_from_schedule_id"),
        ({"name": "bad\ud800"}, "name"),
        ({"task_prompt": "nul\x00"}, "task_prompt"),
    ],
)
async def test_create_refuses_bad_input_and_writes_nothing(
    wake_factory: WakeFactory, wake_session: AsyncSession, overrides: dict[str, object], field: str
) -> None:
    conversation_id = uuid.uuid4()
    overrides = {"conversation_id": conversation_id, **overrides}
    with pytest.raises(InvalidInputError) as caught:
        await wake_factory.schedule(**overrides)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert await count_schedules(wake_session, conversation_id) == 0


async def test_create_refuses_a_context_source_of_another_conversation(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    other = await wake_factory.schedule(conversation_id=uuid.uuid4())
    conversation_id = uuid.uuid4()
    with pytest.raises(InvalidInputError, match="same conversation") as caught:
        await wake_factory.schedule(conversation_id=conversation_id, context_from_schedule_id=other.schedule_id)
    assert caught.value.field == "context_from_schedule_id"
    assert await count_schedules(wake_session, conversation_id) == 0


async def test_create_accepts_a_context_source_of_the_same_conversation(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    conversation_id = uuid.uuid4()
    source = await wake_factory.schedule(conversation_id=conversation_id)
    reader = await wake_factory.schedule(conversation_id=conversation_id, context_from_schedule_id=source.schedule_id)
    assert reader.context_from_schedule_id == source.schedule_id


@pytest.mark.not_on_citus(
    "Citus relays a worker's error without its table and constraint fields (the message names the shard's)"
)
async def test_create_with_a_missing_skill_is_refused_naming_the_foreign_key(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await wake_factory.schedule(conversation_id=uuid.uuid4(), skill_id=uuid.uuid4())
    assert (caught.value.field, caught.value.rule) == ("skill_id", "agent_wake_schedules_skill_fk")


@pytest.mark.reference_layout_only("the re-keyed layout keeps schedule ids unique per conversation, not on their own")
async def test_create_with_a_taken_schedule_id_is_a_conflict(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    taken = await wake_factory.schedule(conversation_id=uuid.uuid4())
    with pytest.raises(ConflictError, match="agent_wake_schedules_schedule_id_key"):
        await wake_factory.schedule(conversation_id=uuid.uuid4(), schedule_id=taken.schedule_id)


async def test_get_returns_none_for_another_conversations_schedule(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    assert await repo.get(created.conversation_id, created.schedule_id) is created
    assert await repo.get(uuid.uuid4(), created.schedule_id) is None


async def test_list_for_conversation_is_newest_first(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    conversation_id = uuid.uuid4()
    first = await wake_factory.schedule(conversation_id=conversation_id)
    second = await wake_factory.schedule(conversation_id=conversation_id)
    await wake_session.execute(
        text("UPDATE agent_wake_schedules SET date_created = :earlier WHERE conversation_id = :c AND schedule_id = :s"),
        {"earlier": first.date_created - timedelta(hours=1), "c": conversation_id, "s": first.schedule_id},
    )
    listed = await repo.list_for_conversation(conversation_id)
    assert [s.schedule_id for s in listed] == [second.schedule_id, first.schedule_id]


async def test_list_active_orders_by_next_fire_with_unset_last(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    conversation_id = uuid.uuid4()
    unset = await wake_factory.schedule(conversation_id=conversation_id, next_fire_at=None)
    later = await wake_factory.schedule(conversation_id=conversation_id, next_fire_at=in_minutes(60))
    sooner = await wake_factory.schedule(conversation_id=conversation_id, next_fire_at=in_minutes(5))
    paused = await wake_factory.schedule(conversation_id=conversation_id)
    await repo.pause(conversation_id, paused.schedule_id)
    listed = await repo.list_active_for_conversation(conversation_id)
    assert [s.schedule_id for s in listed] == [sooner.schedule_id, later.schedule_id, unset.schedule_id]
    assert await repo.count_active_for_conversation(conversation_id) == 3


async def test_update_changes_named_fields_and_bumps_date_updated(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    await wake_session.execute(
        text(
            "UPDATE agent_wake_schedules SET date_updated = now() - interval '1 day' "
            "WHERE conversation_id = :c AND schedule_id = :s"
        ),
        {"c": created.conversation_id, "s": created.schedule_id},
    )
    updated = await repo.update(
        created.conversation_id, created.schedule_id, name="morning check", task_prompt="Check the inbox"
    )
    assert (updated.name, updated.task_prompt) == ("morning check", "Check the inbox")
    stored = (
        await wake_session.execute(
            text(
                "SELECT name, date_updated > now() - interval '1 minute' AS fresh "
                "FROM agent_wake_schedules WHERE conversation_id = :c AND schedule_id = :s"
            ),
            {"c": created.conversation_id, "s": created.schedule_id},
        )
    ).one()
    assert stored.name == "morning check"
    assert stored.fresh


async def test_update_validates_a_new_config_against_the_stored_type(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    with pytest.raises(InvalidInputError) as caught:
        await repo.update(created.conversation_id, created.schedule_id, schedule_config={"expr": "* * * * *"})
    assert caught.value.field == "schedule_config.seconds"
    changed = await repo.update(
        created.conversation_id,
        created.schedule_id,
        schedule_type="daily_at",
        schedule_config={"hour": 14, "minute": 0, "tz": "America/Los_Angeles"},
    )
    assert changed.schedule_type == "daily_at"


@pytest.mark.parametrize("field", ["status", "next_fire_at", "conversation_id", "schedule_id", "date_created", "bogus"])
async def test_update_refuses_fields_it_does_not_own(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession, field: str
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    with pytest.raises(InvalidInputError) as caught:
        await repo.update(created.conversation_id, created.schedule_id, **{field: "x"})
    assert caught.value.field == field


async def test_update_of_a_missing_schedule_is_not_found(repo: WakeScheduleRepository) -> None:
    with pytest.raises(NotFoundError):
        await repo.update(uuid.uuid4(), uuid.uuid4(), name="x")


async def test_update_next_fire_at_refuses_a_paused_schedule(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    moved = await repo.update_next_fire_at(created.conversation_id, created.schedule_id, in_minutes(90))
    assert moved.next_fire_at == in_minutes(90)
    await repo.pause(created.conversation_id, created.schedule_id)
    with pytest.raises(ConflictError, match="paused"):
        await repo.update_next_fire_at(created.conversation_id, created.schedule_id, in_minutes(5))


async def test_pause_clears_next_fire_at(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    paused = await repo.pause(created.conversation_id, created.schedule_id)
    assert (paused.status, paused.next_fire_at) == ("paused", None)


async def test_a_write_refreshes_the_object_the_session_already_holds(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    held = await wake_factory.schedule(conversation_id=uuid.uuid4())
    paused = await repo.pause(held.conversation_id, held.schedule_id)
    assert paused is held
    assert (held.status, held.next_fire_at) == ("paused", None)
    stored_updated = (
        await wake_session.execute(
            text("SELECT date_updated FROM agent_wake_schedules WHERE conversation_id = :c AND schedule_id = :s"),
            {"c": held.conversation_id, "s": held.schedule_id},
        )
    ).scalar_one()
    assert held.date_updated == stored_updated
    assert not wake_session.dirty


async def test_resume_sets_the_next_fire(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    await repo.pause(created.conversation_id, created.schedule_id)
    resumed = await repo.resume(created.conversation_id, created.schedule_id, next_fire_at=in_minutes(10))
    assert (resumed.status, resumed.next_fire_at) == ("active", in_minutes(10))


async def test_resume_never_revives_an_expired_schedule(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    expired = await repo.mark_expired(created.conversation_id, created.schedule_id)
    assert (expired.status, expired.next_fire_at) == ("expired", None)
    with pytest.raises(ConflictError, match="expired"):
        await repo.resume(created.conversation_id, created.schedule_id, next_fire_at=in_minutes(10))
    with pytest.raises(ConflictError, match="expired"):
        await repo.pause(created.conversation_id, created.schedule_id)
    stored = await repo.get(created.conversation_id, created.schedule_id)
    assert stored is not None
    assert stored.status == "expired"


async def test_resume_refuses_a_naive_next_fire(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        await repo.resume(created.conversation_id, created.schedule_id, next_fire_at=datetime(2026, 1, 1))


async def test_delete_removes_the_schedule(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    await repo.delete(created.conversation_id, created.schedule_id)
    assert await count_schedules(wake_session, created.conversation_id) == 0
    with pytest.raises(NotFoundError):
        await repo.delete(created.conversation_id, created.schedule_id)


async def test_claim_and_reschedule_is_a_compare_and_set(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4(), next_fire_at=NOW)
    claim = {
        "conversation_id": created.conversation_id,
        "schedule_id": created.schedule_id,
        "expected_next_fire": NOW,
        "computed_next_fire": NOW + timedelta(minutes=30),
        "new_status": "active",
        "now": NOW,
    }
    assert await repo.claim_and_reschedule(**claim) is True  # type: ignore[arg-type]
    assert await repo.claim_and_reschedule(**claim) is False  # type: ignore[arg-type]
    stored = await repo.get(created.conversation_id, created.schedule_id)
    assert stored is not None
    assert (stored.next_fire_at, stored.last_fired_at) == (NOW + timedelta(minutes=30), NOW)


async def test_claim_and_reschedule_can_expire_a_one_shot(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    created = await wake_factory.schedule(
        conversation_id=uuid.uuid4(),
        schedule_type="one_shot_at",
        schedule_config={"fire_at_iso": NOW.isoformat()},
        next_fire_at=NOW,
    )
    won = await repo.claim_and_reschedule(
        conversation_id=created.conversation_id,
        schedule_id=created.schedule_id,
        expected_next_fire=NOW,
        computed_next_fire=None,
        new_status="expired",
        now=NOW,
    )
    assert won
    stored = await repo.get(created.conversation_id, created.schedule_id)
    assert stored is not None
    assert (stored.status, stored.next_fire_at) == ("expired", None)


async def test_claim_and_reschedule_refuses_an_active_schedule_without_a_next_fire(
    repo: WakeScheduleRepository,
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await repo.claim_and_reschedule(
            conversation_id=uuid.uuid4(),
            schedule_id=uuid.uuid4(),
            expected_next_fire=NOW,
            computed_next_fire=None,
            new_status="active",
            now=NOW,
        )
    assert caught.value.field == "computed_next_fire"


async def test_list_due_spans_conversations_oldest_first_and_skips_inactive(
    wake_factory: WakeFactory, repo: WakeScheduleRepository, wake_session: AsyncSession
) -> None:
    far_past = NOW - timedelta(days=3650)
    older = await wake_factory.schedule(conversation_id=uuid.uuid4(), next_fire_at=far_past)
    newer = await wake_factory.schedule(conversation_id=uuid.uuid4(), next_fire_at=far_past + timedelta(seconds=1))
    paused = await wake_factory.schedule(conversation_id=uuid.uuid4(), next_fire_at=far_past)
    await repo.pause(paused.conversation_id, paused.schedule_id)
    await wake_factory.schedule(conversation_id=uuid.uuid4(), next_fire_at=far_past + timedelta(days=1))
    due = await repo.list_due(far_past + timedelta(seconds=1), limit=10)
    assert [s.schedule_id for s in due] == [older.schedule_id, newer.schedule_id]
    assert [s.schedule_id for s in await repo.list_due(far_past + timedelta(seconds=1), limit=1)] == [older.schedule_id]


@pytest.mark.parametrize("limit", [0, -1, 10_001, "10", True])
async def test_list_methods_refuse_a_bad_limit(repo: WakeScheduleRepository, limit: object) -> None:
    conversation_id = uuid.uuid4()
    calls = [
        lambda: repo.list_due(NOW, limit=limit),  # type: ignore[arg-type]
        lambda: repo.list_for_conversation(conversation_id, limit=limit),  # type: ignore[arg-type]
        lambda: repo.list_active_for_conversation(conversation_id, limit=limit),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidInputError) as caught:
            await call()
        assert caught.value.field == "limit"


async def test_a_lost_race_under_repeatable_read_is_a_conflict(
    wake_engine: AsyncEngine, wake_secrets: SecretBox
) -> None:
    sessions = async_sessionmaker(wake_engine, expire_on_commit=False)
    async with sessions.begin() as session:
        schedule = await WakeFactory(session, wake_secrets).schedule(next_fire_at=NOW)
    claim = {
        "conversation_id": schedule.conversation_id,
        "schedule_id": schedule.schedule_id,
        "expected_next_fire": NOW,
        "computed_next_fire": in_minutes(30),
        "new_status": "active",
        "now": NOW,
    }
    async with sessions() as first, sessions() as second:
        await first.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        await second.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        await second.execute(
            select(WakeSchedule.schedule_id).where(WakeSchedule.conversation_id == schedule.conversation_id)
        )  # the snapshot is taken before the first claim commits
        assert await WakeScheduleRepository(first).claim_and_reschedule(**claim) is True  # type: ignore[arg-type]
        await first.commit()
        with pytest.raises(SerializationError, match="retry"):
            await WakeScheduleRepository(second).claim_and_reschedule(**claim)  # type: ignore[arg-type]

"""The operator's day-2 jobs against the migrated database: purge_conversation in
the caller's session, and the batch jobs (prune_fires, delete_orphans,
rotate_secrets) on committing sessions of ``wake_engine``, whose guard is in
"raise" mode, and on the plugin's row-level-security session factories."""

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_wake import (
    InvalidInputError,
    OrphanCounts,
    PurgedConversation,
    SecretBox,
    SecretDecryptionError,
    WakeFire,
    WakeSchedule,
    WakeScheduleRepository,
    WebhookSubscription,
    WebhookSubscriptionRepository,
    delete_orphans,
    prune_fires,
    purge_conversation,
    rotate_secrets,
    spans_partitions,
)
from agent_wake._statements import PREBUILT
from agent_wake.testing import capture_sql
from agent_wake.testing.factories import WakeFactory

MONTH = timedelta(days=30)
# A job that waits for a held row instead of skipping it runs into this.
PROMPTLY_SECONDS = 10
OLD_KEY, NEW_KEY = SecretBox.generate_key(), SecretBox.generate_key()
OLD_BOX = SecretBox.from_keys(OLD_KEY)
ROTATING = SecretBox.from_keys(NEW_KEY, OLD_KEY)


# What Citus refuses of these jobs, by design (the distributed layout on a Citus cluster).
ROW_SECURITY_NOT_ON_CITUS = pytest.mark.not_on_citus(
    "install_row_security sets per-column statistics targets (ALTER TABLE ... ALTER COLUMN ... SET STATISTICS), "
    "which Citus refuses on distributed tables"
)
PRUNE_NOT_ON_CITUS = pytest.mark.not_on_citus(
    "prune_fires's count and batches check the later output by a join of fires that is no equality on the "
    "distribution column (IS NOT DISTINCT FROM, kept for plain PostgreSQL's index choice), and the batch locks "
    "its candidates across shards (FOR UPDATE SKIP LOCKED in a subquery): Citus refuses both"
)
ORPHANS_NOT_ON_CITUS = pytest.mark.not_on_citus(
    "delete_orphans reads conversations, a local table of the coordinator, in a correlated subquery over the "
    "distributed wake tables: Citus refuses direct joins between distributed and local tables"
)
ROTATION_NOT_ON_CITUS = pytest.mark.not_on_citus(
    "rotate_secrets locks the page's rows across shards with FOR UPDATE SKIP LOCKED in a subquery of its UPDATE, "
    "which Citus refuses"
)


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


@pytest.fixture
def wake_cleanup_tables() -> Sequence[str]:
    # The orphan tests write conversations rows; wake_engine empties the table with the wake tables.
    return ["conversations"]


@pytest.fixture
def sessions(wake_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(wake_engine, expire_on_commit=False)


async def rows_of(sessions: async_sessionmaker[AsyncSession], sql: str) -> set[Any]:
    async with sessions() as session:
        with spans_partitions("test: read what a job left"):
            return set((await session.execute(text(sql))).scalars())


async def fire_ids(sessions: async_sessionmaker[AsyncSession]) -> set[uuid.UUID]:
    return await rows_of(sessions, "SELECT fire_id FROM wake_fires")


async def stored_secrets(sessions: async_sessionmaker[AsyncSession]) -> dict[uuid.UUID, bytes]:
    async with sessions() as session:
        with spans_partitions("test: read the stored ciphertexts"):
            rows = await session.execute(text("SELECT subscription_id, secret_ciphertext FROM webhook_subscriptions"))
        return {subscription_id: ciphertext for subscription_id, ciphertext in rows.all()}


async def old_failed_fires(
    sessions: async_sessionmaker[AsyncSession], secrets: SecretBox, count: int
) -> list[WakeFire]:
    """``count`` failed fires of one schedule, 40 days old: every one is prunable."""
    async with sessions.begin() as session:
        make = WakeFactory(session, secrets)
        schedule = await make.schedule()
        return [
            await make.fire(
                status="failed",
                actual_fired_at=days_ago(40),
                conversation_id=schedule.conversation_id,
                schedule_id=schedule.schedule_id,
            )
            for _ in range(count)
        ]


# purge_conversation


async def test_purge_conversation_deletes_every_row_of_that_conversation_and_counts_them(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule()
    conversation_id = schedule.conversation_id
    await wake_factory.fire(status="fired", conversation_id=conversation_id, schedule_id=schedule.schedule_id)
    await wake_factory.fire(status="failed", conversation_id=conversation_id, schedule_id=schedule.schedule_id)
    await wake_factory.schedule(conversation_id=conversation_id)
    subscription = await wake_factory.subscription(conversation_id=conversation_id)
    await wake_factory.fire(conversation_id=conversation_id, webhook_subscription_id=subscription.subscription_id)

    purged = await purge_conversation(wake_session, conversation_id)

    assert purged == PurgedConversation(fires=3, schedules=2, subscriptions=1)
    for table in ("wake_fires", "agent_wake_schedules", "webhook_subscriptions"):
        left = await wake_session.execute(
            text(f"SELECT count(*) FROM {table} WHERE conversation_id = :c"), {"c": conversation_id}
        )
        assert left.scalar_one() == 0, table


async def test_purge_conversation_leaves_another_conversations_rows(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    purged = await wake_factory.fire(status="fired")
    other = await wake_factory.fire(status="fired")
    other_subscription = await wake_factory.subscription(conversation_id=other.conversation_id)

    await purge_conversation(wake_session, purged.conversation_id)

    left = await wake_session.execute(
        text(
            "SELECT (SELECT count(*) FROM wake_fires WHERE conversation_id = :c),"
            " (SELECT count(*) FROM agent_wake_schedules WHERE conversation_id = :c),"
            " (SELECT count(*) FROM webhook_subscriptions WHERE conversation_id = :c)"
        ),
        {"c": other.conversation_id},
    )
    assert tuple(left.one()) == (1, 1, 1)
    assert other_subscription in wake_session


async def test_purge_conversation_leaves_the_session_holding_no_object_of_the_conversation(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    fire = await wake_factory.fire(status="fired")
    schedule = await WakeScheduleRepository(wake_session).get(fire.conversation_id, fire.schedule_id)  # type: ignore[arg-type]
    subscription = await wake_factory.subscription(conversation_id=fire.conversation_id)
    other = await wake_factory.schedule()

    await purge_conversation(wake_session, fire.conversation_id)

    held = [
        instance
        for instance in wake_session.identity_map.values()
        if isinstance(instance, WakeFire | WakeSchedule | WebhookSubscription)
    ]
    assert held == [other]
    assert [fire in wake_session, schedule in wake_session, subscription in wake_session] == [False, False, False]


async def test_purge_conversation_deletes_a_pending_row_of_the_conversation_too(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule()
    pending = WakeSchedule(
        conversation_id=schedule.conversation_id,
        schedule_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        schedule_type="interval",
        schedule_config={"seconds": 60},
    )
    wake_session.add(pending)

    purged = await purge_conversation(wake_session, schedule.conversation_id)

    assert purged.schedules == 2
    assert pending not in wake_session


async def test_purge_conversation_costs_three_deletes(wake_factory: WakeFactory, wake_session: AsyncSession) -> None:
    fire = await wake_factory.fire(status="fired")
    await wake_session.execute(text("SELECT 1"))  # the fixture's savepoint, sent before the call

    with capture_sql(wake_session) as sent:
        await purge_conversation(wake_session, fire.conversation_id)

    assert [statement.sql for statement in sent] == [
        str(PREBUILT[name].compile(dialect=wake_session.bind.dialect))
        for name in ("fires.purge_conversation", "schedules.purge_conversation", "subscriptions.purge_conversation")
    ]


@ROW_SECURITY_NOT_ON_CITUS
async def test_purge_conversation_declares_the_conversation_on_an_application_session(
    wake_application_sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    # Under row-level security an undeclared conversation's rows are invisible: nothing would be deleted.
    async with wake_application_sessions.begin() as session:
        fire = await WakeFactory(session, wake_secrets).fire(status="fired")

    async with wake_application_sessions.begin() as session:
        purged = await purge_conversation(session, fire.conversation_id)

    assert purged == PurgedConversation(fires=1, schedules=1, subscriptions=0)


async def test_purge_conversation_refuses_a_conversation_id_that_is_not_a_uuid_before_any_statement(
    wake_session: AsyncSession,
) -> None:
    with capture_sql(wake_session) as sent, pytest.raises(InvalidInputError) as caught:
        await purge_conversation(wake_session, "conversation 7")  # type: ignore[arg-type]
    assert caught.value.field == "conversation_id"
    assert sent == []


async def test_purge_conversation_refuses_a_session_factory_for_a_session() -> None:
    with pytest.raises(InvalidInputError) as caught:
        await purge_conversation(async_sessionmaker(), uuid.uuid4())  # type: ignore[arg-type]
    assert caught.value.field == "session"


# prune_fires


@PRUNE_NOT_ON_CITUS
async def test_prune_keeps_the_latest_output_of_a_schedule_and_every_dispatching_fire(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    async with sessions.begin() as session:
        make = WakeFactory(session, wake_secrets)
        schedule = await make.schedule()
        of_schedule: dict[str, Any] = {"conversation_id": schedule.conversation_id, "schedule_id": schedule.schedule_id}
        await make.fire(status="fired", actual_fired_at=days_ago(40), **of_schedule)
        latest_output = await make.fire(status="fired_silent", actual_fired_at=days_ago(35), **of_schedule)
        await make.fire(status="skipped_busy", actual_fired_at=days_ago(32), **of_schedule)
        dispatching = await make.fire(status="dispatching", actual_fired_at=days_ago(50), **of_schedule)
        recent = await make.fire(status="fired", actual_fired_at=days_ago(1))

    deleted = await prune_fires(sessions, older_than=MONTH)

    assert deleted == 2
    assert await fire_ids(sessions) == {latest_output.fire_id, dispatching.fire_id, recent.fire_id}


@PRUNE_NOT_ON_CITUS
async def test_prune_keeps_no_old_output_of_a_schedule_whose_latest_output_is_recent(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    async with sessions.begin() as session:
        make = WakeFactory(session, wake_secrets)
        old = await make.fire(status="fired", actual_fired_at=days_ago(40))
        recent = await make.fire(
            status="fired",
            actual_fired_at=days_ago(1),
            conversation_id=old.conversation_id,
            schedule_id=old.schedule_id,
        )

    assert await prune_fires(sessions, older_than=MONTH) == 1
    assert await fire_ids(sessions) == {recent.fire_id}


@PRUNE_NOT_ON_CITUS
async def test_prune_breaks_a_tie_between_latest_outputs_by_fire_id(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    lower, higher = sorted([uuid.uuid4(), uuid.uuid4()])
    fired_at = days_ago(40)
    async with sessions.begin() as session:
        make = WakeFactory(session, wake_secrets)
        schedule = await make.schedule()
        for fire_id in (higher, lower):
            await make.fire(
                status="fired",
                fire_id=fire_id,
                actual_fired_at=fired_at,
                conversation_id=schedule.conversation_id,
                schedule_id=schedule.schedule_id,
            )

    assert await prune_fires(sessions, older_than=MONTH) == 1
    assert await fire_ids(sessions) == {higher}


@PRUNE_NOT_ON_CITUS
async def test_prune_deletes_webhook_fires_with_no_keeper(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    async with sessions.begin() as session:
        make = WakeFactory(session, wake_secrets)
        subscription = await make.subscription()
        await make.fire(
            status="fired",
            actual_fired_at=days_ago(40),
            conversation_id=subscription.conversation_id,
            webhook_subscription_id=subscription.subscription_id,
        )

    assert await prune_fires(sessions, older_than=MONTH) == 1
    assert await fire_ids(sessions) == set()


@PRUNE_NOT_ON_CITUS
async def test_prune_deletes_in_batches_of_at_most_batch_size_reporting_each(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    # Two conversations of five fires: batches stop inside a conversation and across one.
    await old_failed_fires(sessions, wake_secrets, 5)
    await old_failed_fires(sessions, wake_secrets, 5)
    reported: list[tuple[int, int]] = []

    deleted = await prune_fires(
        sessions, older_than=MONTH, batch_size=3, progress=lambda done, total: reported.append((done, total))
    )

    assert deleted == 10
    assert reported == [(3, 10), (6, 10), (9, 10), (10, 10)]
    assert await fire_ids(sessions) == set()


@PRUNE_NOT_ON_CITUS
async def test_prune_dry_run_returns_what_a_run_deletes_and_writes_nothing(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    fires = await old_failed_fires(sessions, wake_secrets, 3)
    reported: list[tuple[int, int]] = []

    would_delete = await prune_fires(
        sessions, older_than=MONTH, dry_run=True, progress=lambda done, total: reported.append((done, total))
    )

    assert await fire_ids(sessions) == {fire.fire_id for fire in fires}
    assert reported == []
    assert would_delete == await prune_fires(sessions, older_than=MONTH) == 3


@PRUNE_NOT_ON_CITUS
async def test_prune_skips_a_fire_another_transaction_holds_instead_of_waiting(
    sessions: async_sessionmaker[AsyncSession], wake_engine: AsyncEngine, wake_secrets: SecretBox
) -> None:
    held, *others = await old_failed_fires(sessions, wake_secrets, 3)
    async with wake_engine.connect() as application:
        await application.execute(
            text("SELECT 1 FROM wake_fires WHERE conversation_id = :c AND fire_id = :f FOR UPDATE"),
            {"c": held.conversation_id, "f": held.fire_id},
        )
        deleted = await asyncio.wait_for(prune_fires(sessions, older_than=MONTH), PROMPTLY_SECONDS)
        await application.rollback()

    assert deleted == len(others)
    assert await fire_ids(sessions) == {held.fire_id}
    assert await prune_fires(sessions, older_than=MONTH) == 1  # a later run takes it


@ROW_SECURITY_NOT_ON_CITUS
async def test_prune_runs_on_the_maintenance_roles_sessions(
    wake_maintenance_sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    await old_failed_fires(wake_maintenance_sessions, wake_secrets, 2)
    assert await prune_fires(wake_maintenance_sessions, older_than=MONTH) == 2


@pytest.mark.not_on_citus("the plan asserted is plain PostgreSQL's: Citus plans the statement itself (and refuses it)")
async def test_a_prune_batch_walks_the_conversation_time_index_at_a_realistic_size(wake_session: AsyncSession) -> None:
    # 40,000 fires of 2,000 schedules in 500 conversations over 120 days, unanalyzed (the plan a
    # fresh table gets); under the generic plan that a repeated batch ends up with.
    with spans_partitions("test: seed fires for a plan"):
        await wake_session.execute(
            text(
                "INSERT INTO agent_wake_schedules (conversation_id, schedule_id, user_id, agent_id, schedule_type)"
                " SELECT md5('c' || i % 500)::uuid, gen_random_uuid(), gen_random_uuid(), gen_random_uuid(),"
                " 'interval' FROM generate_series(1, 2000) AS i"
            )
        )
        await wake_session.execute(
            text(
                "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, actual_fired_at, status)"
                " SELECT s.conversation_id, gen_random_uuid(), s.schedule_id, now() - random() * interval '120 days',"
                " (ARRAY['fired', 'fired_silent', 'failed', 'skipped_busy'])[1 + g % 4]"
                " FROM agent_wake_schedules AS s, generate_series(1, 20) AS g"
            )
        )
    await wake_session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
    sql = str(PREBUILT["fires.prune"].compile(dialect=wake_session.bind.dialect))
    connection = await wake_session.connection()
    with spans_partitions("test: plan of a prune batch"):
        await connection.exec_driver_sql(f"PREPARE prune_batch AS {sql}")
        plan = "\n".join(
            (
                await connection.exec_driver_sql(
                    "EXPLAIN EXECUTE prune_batch("
                    "'00000000-0000-0000-0000-000000000000', now() - interval '30 days', 1000)"
                )
            ).scalars()
        )
        await connection.exec_driver_sql("DEALLOCATE prune_batch")

    assert "Index Scan using idx_wake_fires_conv_time on wake_fires candidate" in plan, plan
    assert "Index Cond: ((conversation_id >= $1) AND (actual_fired_at < $2))" in plan, plan
    assert "Index Scan on idx_wake_fires_schedule_time" in plan or "using idx_wake_fires_schedule_time" in plan, plan
    # Each chosen fire through a key index: the primary key, or (reference layout) the fire_id's own.
    assert re.search(r"Index Scan using (wake_fires_pkey|wake_fires_fire_id_key) on wake_fires ", plan), plan
    assert "Seq Scan" not in plan, plan


# delete_orphans


async def orphaned_and_kept(
    sessions: async_sessionmaker[AsyncSession], secrets: SecretBox
) -> tuple[uuid.UUID, uuid.UUID]:
    """Two conversations with a schedule, its fire, a subscription and its fire each: one in
    ``conversations``, the other not. Returns (the orphaned one, the kept one)."""
    async with sessions.begin() as session:
        make = WakeFactory(session, secrets)
        kept = (await make.conversation()).conversation_id
        orphaned = uuid.uuid4()
        for conversation_id in (orphaned, kept):
            await make.fire(status="fired", conversation_id=conversation_id)
            subscription = await make.subscription(conversation_id=conversation_id)
            await make.fire(
                status="fired", conversation_id=conversation_id, webhook_subscription_id=subscription.subscription_id
            )
    return orphaned, kept


CONVERSATIONS_WITH_ROWS = (
    "SELECT conversation_id FROM wake_fires UNION SELECT conversation_id FROM agent_wake_schedules"
    " UNION SELECT conversation_id FROM webhook_subscriptions"
)


@ORPHANS_NOT_ON_CITUS
async def test_delete_orphans_deletes_only_the_rows_of_conversations_missing_from_conversations(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    _, kept = await orphaned_and_kept(sessions, wake_secrets)

    deleted = await delete_orphans(sessions)

    assert deleted == OrphanCounts(fires=2, schedules=1, subscriptions=1)
    assert deleted.total == 4
    assert await rows_of(sessions, CONVERSATIONS_WITH_ROWS) == {kept}
    assert len(await fire_ids(sessions)) == 2


@ORPHANS_NOT_ON_CITUS
async def test_delete_orphans_dry_run_counts_and_writes_nothing(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    orphaned, kept = await orphaned_and_kept(sessions, wake_secrets)

    found = await delete_orphans(sessions, dry_run=True)

    assert found == OrphanCounts(fires=2, schedules=1, subscriptions=1)
    assert await rows_of(sessions, CONVERSATIONS_WITH_ROWS) == {orphaned, kept}


@ORPHANS_NOT_ON_CITUS
async def test_delete_orphans_reports_progress_over_the_three_tables(
    sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    await orphaned_and_kept(sessions, wake_secrets)
    reported: list[tuple[int, int]] = []

    await delete_orphans(sessions, batch_size=1, progress=lambda done, total: reported.append((done, total)))

    assert reported == [(1, 4), (2, 4), (3, 4), (4, 4)]


@ORPHANS_NOT_ON_CITUS
async def test_delete_orphans_leaves_a_schedule_whose_fire_another_transaction_holds(
    sessions: async_sessionmaker[AsyncSession], wake_engine: AsyncEngine, wake_secrets: SecretBox
) -> None:
    # Deleting the schedule would cascade into the held fire, and wait for it.
    async with sessions.begin() as session:
        make = WakeFactory(session, wake_secrets)
        held = await make.fire(status="fired")
        await make.schedule(conversation_id=held.conversation_id)
    async with wake_engine.connect() as application:
        await application.execute(
            text("SELECT 1 FROM wake_fires WHERE conversation_id = :c AND fire_id = :f FOR UPDATE"),
            {"c": held.conversation_id, "f": held.fire_id},
        )
        deleted = await asyncio.wait_for(delete_orphans(sessions), PROMPTLY_SECONDS)
        await application.rollback()

    assert deleted == OrphanCounts(fires=0, schedules=1, subscriptions=0)
    assert await rows_of(sessions, "SELECT schedule_id FROM agent_wake_schedules") == {held.schedule_id}
    assert await delete_orphans(sessions) == OrphanCounts(fires=1, schedules=1, subscriptions=0)


# rotate_secrets


async def subscriptions_with(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, *secrets: str
) -> list[WebhookSubscription]:
    """A subscription per secret, encrypted by ``box``, in primary-key order (conversations 1, 2, ...)."""
    async with sessions.begin() as session:
        make = WakeFactory(session, box)
        return [
            await make.subscription(conversation_id=uuid.UUID(int=position), secret=secret)
            for position, secret in enumerate(secrets, start=1)
        ]


@ROTATION_NOT_ON_CITUS
async def test_rotate_secrets_reencrypts_every_secret_under_the_new_first_key(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    subscriptions = await subscriptions_with(sessions, OLD_BOX, "first-secret", "second-secret", "third-secret")

    rotated = await rotate_secrets(sessions, ROTATING, batch_size=2)

    assert rotated == 3
    stored = await stored_secrets(sessions)
    new_key_alone = SecretBox.from_keys(NEW_KEY)
    assert [new_key_alone.decrypt(stored[each.subscription_id]) for each in subscriptions] == [
        "first-secret",
        "second-secret",
        "third-secret",
    ]


@ROTATION_NOT_ON_CITUS
async def test_after_rotate_secrets_the_old_key_alone_opens_no_secret(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await subscriptions_with(sessions, OLD_BOX, "first-secret", "second-secret")

    await rotate_secrets(sessions, ROTATING)

    for ciphertext in (await stored_secrets(sessions)).values():
        with pytest.raises(SecretDecryptionError):
            OLD_BOX.decrypt(ciphertext)


@ROTATION_NOT_ON_CITUS
async def test_a_second_rotate_secrets_reencrypts_nothing(sessions: async_sessionmaker[AsyncSession]) -> None:
    await subscriptions_with(sessions, OLD_BOX, "first-secret", "second-secret")
    await rotate_secrets(sessions, ROTATING)
    after_first = await stored_secrets(sessions)

    assert await rotate_secrets(sessions, ROTATING) == 0
    assert await stored_secrets(sessions) == after_first


async def test_rotate_secrets_leaves_a_secret_already_under_the_first_key_as_it_is(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    current, old = await subscriptions_with(sessions, ROTATING, "current-secret", "old-secret")
    async with sessions.begin() as session:
        await WebhookSubscriptionRepository(session, OLD_BOX).rotate_secret(
            old.conversation_id, old.subscription_id, "old-secret"
        )
    before = await stored_secrets(sessions)

    assert await rotate_secrets(sessions, ROTATING) == 1
    assert (await stored_secrets(sessions))[current.subscription_id] == before[current.subscription_id]


class _ApplicationRotatesMeanwhile(SecretBox):
    """Commits a rotation of ``target``'s secret through another connection as the job
    re-encrypts it: between the job's read of the row and its write."""

    database_url: str
    target: WebhookSubscription
    written: bytes

    def reencrypt(self, ciphertext: bytes) -> bytes:
        self.written = OLD_BOX.encrypt("rotated-by-the-application")
        with psycopg.connect(self.database_url) as application:
            application.execute(
                "UPDATE webhook_subscriptions SET secret_ciphertext = %s"
                " WHERE conversation_id = %s AND subscription_id = %s",
                (self.written, self.target.conversation_id, self.target.subscription_id),
            )
        return super().reencrypt(ciphertext)


async def test_rotate_secrets_does_not_overwrite_a_secret_the_application_changed_meanwhile(
    sessions: async_sessionmaker[AsyncSession], wake_database_url: str
) -> None:
    (target,) = await subscriptions_with(sessions, OLD_BOX, "first-secret")
    box = _ApplicationRotatesMeanwhile.from_keys(NEW_KEY, OLD_KEY)
    box.database_url = make_url(wake_database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    box.target = target

    assert await rotate_secrets(sessions, box) == 0
    assert (await stored_secrets(sessions))[target.subscription_id] == box.written


async def test_rotate_secrets_stops_at_a_secret_no_key_opens_after_committing_the_pages_before(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    first, second, broken = await subscriptions_with(sessions, OLD_BOX, "first-secret", "second-secret", "x")
    async with sessions.begin() as session:
        await WebhookSubscriptionRepository(session, SecretBox.from_keys(SecretBox.generate_key())).rotate_secret(
            broken.conversation_id, broken.subscription_id, "unopenable-secret"
        )
    broken_ciphertext = (await stored_secrets(sessions))[broken.subscription_id]

    with pytest.raises(SecretDecryptionError) as caught:
        await rotate_secrets(sessions, ROTATING, batch_size=1)

    assert (caught.value.conversation_id, caught.value.subscription_id) == (
        broken.conversation_id,
        broken.subscription_id,
    )
    assert str(broken.subscription_id) in str(caught.value)
    assert "unopenable-secret" not in str(caught.value)
    stored = await stored_secrets(sessions)
    assert ROTATING.is_current(stored[first.subscription_id])
    assert ROTATING.is_current(stored[second.subscription_id])
    assert stored[broken.subscription_id] == broken_ciphertext


async def test_rotate_secrets_dry_run_counts_and_writes_nothing(sessions: async_sessionmaker[AsyncSession]) -> None:
    await subscriptions_with(sessions, OLD_BOX, "first-secret", "second-secret")
    before = await stored_secrets(sessions)
    reported: list[tuple[int, int]] = []

    would_rotate = await rotate_secrets(
        sessions, ROTATING, batch_size=1, dry_run=True, progress=lambda done, total: reported.append((done, total))
    )

    assert would_rotate == 2
    assert await stored_secrets(sessions) == before
    assert reported == [(1, 2), (2, 2)]


# What every batch job refuses


Job = Callable[[async_sessionmaker[AsyncSession]], Awaitable[object]]

REFUSALS: list[tuple[str, Job]] = [
    ("older_than", lambda sessions: prune_fires(sessions, older_than=timedelta(0))),
    ("older_than", lambda sessions: prune_fires(sessions, older_than=-MONTH)),
    ("older_than", lambda sessions: prune_fires(sessions, older_than=timedelta(days=36_501))),
    ("older_than", lambda sessions: prune_fires(sessions, older_than=30)),  # type: ignore[arg-type]
    ("batch_size", lambda sessions: prune_fires(sessions, older_than=MONTH, batch_size=0)),
    ("batch_size", lambda sessions: prune_fires(sessions, older_than=MONTH, batch_size=100_001)),
    ("batch_size", lambda sessions: prune_fires(sessions, older_than=MONTH, batch_size=True)),
    ("dry_run", lambda sessions: prune_fires(sessions, older_than=MONTH, dry_run="yes")),  # type: ignore[arg-type]
    ("progress", lambda sessions: prune_fires(sessions, older_than=MONTH, progress=5)),  # type: ignore[arg-type]
    ("sessions", lambda sessions: prune_fires(sessions.kw["bind"], older_than=MONTH)),
    ("batch_size", lambda sessions: delete_orphans(sessions, batch_size=0)),
    ("dry_run", lambda sessions: delete_orphans(sessions, dry_run=1)),  # type: ignore[arg-type]
    ("sessions", lambda sessions: delete_orphans(None)),  # type: ignore[arg-type]
    ("box", lambda sessions: rotate_secrets(sessions, NEW_KEY)),  # type: ignore[arg-type]
    ("batch_size", lambda sessions: rotate_secrets(sessions, ROTATING, batch_size=100_001)),
    ("progress", lambda sessions: rotate_secrets(sessions, ROTATING, progress="print")),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("field", "job"), REFUSALS, ids=[f"{field}-{index}" for index, (field, _) in enumerate(REFUSALS)]
)
async def test_a_batch_job_refuses_a_bad_argument_naming_it_before_any_statement(
    sessions: async_sessionmaker[AsyncSession], wake_engine: AsyncEngine, field: str, job: Job
) -> None:
    with capture_sql(wake_engine) as sent, pytest.raises(InvalidInputError) as caught:
        await job(sessions)
    assert caught.value.field == field
    assert sent == []


@ROW_SECURITY_NOT_ON_CITUS
@pytest.mark.parametrize(
    "job",
    [
        lambda sessions: prune_fires(sessions, older_than=MONTH),
        lambda sessions: delete_orphans(sessions),
        lambda sessions: rotate_secrets(sessions, ROTATING),
    ],
    ids=["prune_fires", "delete_orphans", "rotate_secrets"],
)
async def test_a_batch_job_refuses_sessions_that_declare_conversations(
    wake_application_sessions: async_sessionmaker[AsyncSession], job: Job
) -> None:
    with pytest.raises(InvalidInputError, match="maintenance role") as caught:
        await job(wake_application_sessions)
    assert caught.value.field == "sessions"

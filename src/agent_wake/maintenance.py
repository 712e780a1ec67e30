"""The operator's day-2 jobs: purge a deleted conversation, prune old fires,
delete the rows of conversations that no longer exist, re-encrypt webhook
secrets under a new key.

:func:`purge_conversation` works in the caller's transaction, like the
repositories. The three batch jobs (:func:`prune_fires`,
:func:`delete_orphans`, :func:`rotate_secrets`) take a session factory and
commit each batch in a short transaction of its own: a run stopped midway
keeps the batches it committed, and running it again does what is left. A
batch touches only rows it could lock at once: a row the application holds
is skipped, never waited for, and taken by a later run. After each batch
they call ``progress(done, total)`` when given one (``total`` counted once,
at the start); what it raises stops the run, the batches before it staying
committed. They span
conversations (each statement that does is a prebuilt one under
``spans_partitions``), so they run as the maintenance role: a factory
configured by ``use_row_security()`` is refused. Every function checks all
its arguments before any statement (:class:`~agent_wake.errors.InvalidInputError`
naming the field), and raises database failures as
:class:`~agent_wake.errors.AgentWakeError`.
"""

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, NamedTuple, cast

from sqlalchemy import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import attributes

from agent_wake import _statements, row_security
from agent_wake import _validation as check
from agent_wake._repository import forget_deleted
from agent_wake.errors import InvalidInputError, SecretDecryptionError, translate_database_errors
from agent_wake.models import PARTITION_COLUMN, WakeFire, WakeSchedule, WebhookSubscription
from agent_wake.secret_box import SecretBox

__all__ = [
    "OrphanCounts",
    "PurgedConversation",
    "delete_orphans",
    "prune_fires",
    "purge_conversation",
    "rotate_secrets",
]

_MAX_BATCH_SIZE: Final = 100_000
# Past any fire, and well inside what now() minus it can give: a larger timedelta can leave the
# range of a timestamp, an error the database would raise after the arguments were accepted.
_MAX_AGE: Final = timedelta(days=36_500)
# Sorts before every conversation_id: where the first batch starts.
_FIRST_CONVERSATION: Final = uuid.UUID(int=0)
_WAKE_MODELS: Final = (WakeFire, WakeSchedule, WebhookSubscription)


@dataclass(frozen=True, slots=True)
class PurgedConversation:
    """The rows :func:`purge_conversation` deleted, per table."""

    fires: int
    schedules: int
    subscriptions: int


@dataclass(frozen=True, slots=True)
class OrphanCounts:
    """Rows of conversations missing from ``conversations``, per table: deleted by
    :func:`delete_orphans`, or found by its dry run."""

    fires: int
    schedules: int
    subscriptions: int

    @property
    def total(self) -> int:
        return self.fires + self.schedules + self.subscriptions


async def purge_conversation(session: AsyncSession, conversation_id: uuid.UUID) -> PurgedConversation:
    """Delete every fire, schedule and webhook subscription of ``conversation_id``, in the caller's transaction.

    For an application that deletes a conversation: the wake tables have no
    foreign key to ``conversations``, so nothing else removes its rows.
    Fires go first, then schedules, then subscriptions, so that no delete
    cascades into rows it did not count, and no key is left naming a deleted
    row: on the re-keyed layout, whose keys are ``NO ACTION``, the schedules
    that take context from one another go in one statement, checked at its end. Flushes the session's pending
    changes first (a pending row of the conversation is deleted with the
    rest) and never commits. Afterwards the session holds no object of the
    conversation's rows, and the database's ON DELETE actions are applied to
    its objects of other rows that referred to them, as the repositories'
    ``delete`` does. A session configured by ``use_row_security()`` declares
    the conversation first.

    Refuses a ``session`` that is not an ``AsyncSession`` and a
    ``conversation_id`` that is not a UUID, before any statement. Costs three
    DELETEs, one round trip each whatever the number of rows; the deleted
    rows stay locked until the caller's transaction ends. Plus the flush,
    when the session holds pending changes, and on a declaring session the
    declaration (once per transaction).
    """
    if not isinstance(session, AsyncSession):
        raise InvalidInputError("session", "must be an AsyncSession")
    parameters = {PARTITION_COLUMN: check.require_uuid(PARTITION_COLUMN, conversation_id)}
    with translate_database_errors():
        await session.flush()
    await row_security.declare_for_repository(session, [parameters[PARTITION_COLUMN]])
    with translate_database_errors():
        fires = cast(
            CursorResult[Any], await session.execute(_statements.PREBUILT["fires.purge_conversation"], parameters)
        )
        schedule_ids = frozenset(
            (await session.execute(_statements.PREBUILT["schedules.purge_conversation"], parameters)).scalars()
        )
        subscription_ids = frozenset(
            (await session.execute(_statements.PREBUILT["subscriptions.purge_conversation"], parameters)).scalars()
        )
    _forget_conversation(session, parameters[PARTITION_COLUMN], schedule_ids, subscription_ids)
    return PurgedConversation(fires=fires.rowcount, schedules=len(schedule_ids), subscriptions=len(subscription_ids))


async def prune_fires(
    sessions: async_sessionmaker[AsyncSession],
    *,
    older_than: timedelta,
    batch_size: int = 1000,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete the fires whose ``actual_fired_at`` is before ``now() - older_than``, in batches; returns how many.

    Always kept, however old: every ``dispatching`` fire (in flight, or
    evidence for the recovery job), and each schedule's latest fire with
    output (``fired`` or ``fired_silent``, latest by ``actual_fired_at``,
    then ``fire_id``), which a context-from reader asks for. Webhook fires
    and fires whose source was deleted have no such keeper.

    The cutoff is taken once, from the database's clock, with the count of
    the fires to delete (``total``). Then each batch deletes at most
    ``batch_size`` of them in a transaction of its own, committed, and calls
    ``progress(done, total)``; a fire another transaction holds is skipped
    (taken by a later run), so ``done`` may end below ``total``, or above it
    when fires become deletable during the run. ``dry_run`` returns the
    count and writes nothing (and calls no ``progress``).

    Refuses ``older_than`` that is not a ``timedelta`` or not between zero
    (excluded) and 36,500 days, ``batch_size`` outside 1 to 100,000,
    ``sessions`` that is not an ``async_sessionmaker`` or whose sessions
    declare conversations. Costs one round trip for the count (a scan of the
    old fires), then one per batch plus its commit. A batch walks
    ``idx_wake_fires_conv_time`` (the cutoff is checked in the index) from
    the conversation where the last batch stopped, finds the later
    output through ``idx_wake_fires_schedule_time``, and deletes its fires
    through the primary key.
    """
    sessions = _require_sessions(sessions)
    older_than = _require_age(older_than)
    batch_size = _require_batch_size(batch_size)
    dry_run = check.require_bool("dry_run", dry_run)
    report = _require_progress(progress)
    async with sessions() as session:
        _refuse_declaring(session)
        with translate_database_errors():
            counted = await session.execute(_statements.PREBUILT["fires.count_prunable"], {"older_than": older_than})
            cutoff, total = counted.one()
    if dry_run:
        return int(total)
    tally = _Tally(report, total)
    return await _run_in_batches(sessions, "fires.prune", {"cutoff": cutoff}, batch_size, tally)


async def delete_orphans(
    sessions: async_sessionmaker[AsyncSession],
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> OrphanCounts:
    """Delete the rows of the wake tables whose ``conversation_id`` is in no row of ``conversations``.

    ``conversations`` is the table of that name on the connection's
    ``search_path``: the host application's own, or the stand-in. Its rows
    are counted first (``total``, the three tables together), then deleted
    in batches of at most ``batch_size`` rows, each in a transaction of its
    own, committed, followed by ``progress(done, total)``: all the fires,
    then the schedules, then the subscriptions, so that no delete cascades
    into rows no batch locked. Before the schedules, batches of the same
    kind clear the orphan schedules' ``context_from_schedule_id`` (not
    counted in ``progress``), so that schedules taking context from one
    another go in any order, on either layout (the re-keyed layout's key is
    ``NO ACTION``). A row another transaction holds is skipped (taken by a
    later run), and so is a schedule or subscription that a fire or a
    schedule of its conversation still names (one skipped so, or one
    written since). ``dry_run`` returns the counts and writes nothing (and
    calls no ``progress``).

    A conversation created after the count with an id the wake tables
    already hold is spared: each batch checks ``conversations`` again. The
    role needs SELECT on ``conversations``.

    Refuses ``batch_size`` outside 1 to 100,000, ``sessions`` that is not an
    ``async_sessionmaker`` or whose sessions declare conversations. Costs
    three counts (each a scan of its table against ``conversations``), then
    one round trip per batch plus its commit (the clearing pass is one
    batch at least, and one more walk of the schedules); each batch walks
    the table's primary key from the conversation where the last one
    stopped, reads ``conversations`` once (a lookup per row with an index on
    ``conversations.conversation_id``), and deletes its rows through the
    primary key.
    """
    sessions = _require_sessions(sessions)
    batch_size = _require_batch_size(batch_size)
    dry_run = check.require_bool("dry_run", dry_run)
    report = _require_progress(progress)
    async with sessions() as session:
        _refuse_declaring(session)
        with translate_database_errors():
            found = OrphanCounts(
                *[
                    int((await session.execute(_statements.PREBUILT[f"{kind}.count_orphans"])).scalar_one())
                    for kind in ("fires", "schedules", "subscriptions")
                ]
            )
    if dry_run:
        return found
    tally = _Tally(report, found.total)
    fires = await _run_in_batches(sessions, "fires.delete_orphans", {}, batch_size, tally)
    await _run_in_batches(sessions, "schedules.unlink_orphans", {}, batch_size, None)
    schedules = await _run_in_batches(sessions, "schedules.delete_orphans", {}, batch_size, tally)
    subscriptions = await _run_in_batches(sessions, "subscriptions.delete_orphans", {}, batch_size, tally)
    return OrphanCounts(fires=fires, schedules=schedules, subscriptions=subscriptions)


async def rotate_secrets(
    sessions: async_sessionmaker[AsyncSession],
    box: SecretBox,
    *,
    batch_size: int = 500,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Re-encrypt under ``box``'s first key every webhook secret that is not already; returns how many.

    Put the new key first in ``box`` (keeping the old ones after it), run
    this, and the old keys can be dropped once the application's boxes have
    the new key first too. Subscriptions are read in pages of
    ``batch_size`` in primary-key order (each visited once), without locks.
    A secret the first key already opens is left as it is, so a second run
    writes only what the first did not. Each other one is re-encrypted and
    checked (:meth:`SecretBox.reencrypt <agent_wake.secret_box.SecretBox.reencrypt>`:
    the first key alone decrypts it to the same bytes) before it is written,
    and written only if the row still holds the ciphertext read and no other
    transaction holds the row: a rotation the application made meanwhile is
    not overwritten (a later run re-encrypts it if it needs to be). Each
    page is committed, then ``progress(visited, total)`` is called with the
    subscriptions read so far and their number at the start. ``dry_run``
    reads and checks the same and writes nothing.

    A secret no key opens stops the run with
    :class:`~agent_wake.errors.SecretDecryptionError`, whose
    ``conversation_id`` and ``subscription_id`` name its subscription (its
    message shows neither key nor secret): the pages before it are
    committed, its own is not.

    Refuses a ``box`` that is not a ``SecretBox``, ``batch_size`` outside 1
    to 100,000, ``sessions`` that is not an ``async_sessionmaker`` or whose
    sessions declare conversations. Costs one count, then per page one
    SELECT (on the primary key), one UPDATE when the page has secrets to
    re-encrypt, and its commit.
    """
    sessions = _require_sessions(sessions)
    if not isinstance(box, SecretBox):
        raise InvalidInputError("box", "must be a SecretBox")
    batch_size = _require_batch_size(batch_size)
    dry_run = check.require_bool("dry_run", dry_run)
    report = _require_progress(progress)
    async with sessions() as session:
        _refuse_declaring(session)
        with translate_database_errors():
            total = int((await session.execute(_statements.PREBUILT["subscriptions.count"])).scalar_one())
    visited = rotated = 0
    after: tuple[uuid.UUID, uuid.UUID] | None = None
    while True:
        async with sessions() as session:
            with translate_database_errors():
                page = await _secrets_page(session, after, batch_size)
                if not page:
                    break
                batch = _reencrypted(box, page)
                if batch and not dry_run:
                    written = await session.execute(
                        _statements.PREBUILT["subscriptions.reencrypt_secrets"],
                        {
                            "rotated_conversation_id": [row.conversation_id for row in batch],
                            "rotated_subscription_id": [row.subscription_id for row in batch],
                            "rotated_old_ciphertext": [row.old_ciphertext for row in batch],
                            "rotated_new_ciphertext": [row.new_ciphertext for row in batch],
                        },
                    )
                    rotated += len(written.all())
                    await session.commit()
                elif dry_run:
                    rotated += len(batch)
        visited += len(page)
        if report is not None:
            report(visited, total)
        if len(page) < batch_size:
            break
        after = (page[-1][0], page[-1][1])
    return rotated


class _Reencrypted(NamedTuple):
    """A secret of a page that rotate_secrets writes again: its row, the ciphertext read, the new one."""

    conversation_id: uuid.UUID
    subscription_id: uuid.UUID
    old_ciphertext: bytes
    new_ciphertext: bytes


async def _secrets_page(
    session: AsyncSession, after: tuple[uuid.UUID, uuid.UUID] | None, batch_size: int
) -> Sequence[Any]:
    """(conversation_id, subscription_id, secret_ciphertext) of the next page of subscriptions."""
    if after is None:
        result = await session.execute(_statements.PREBUILT["subscriptions.first_secrets"], {"batch_size": batch_size})
    else:
        parameters = {"after_conversation_id": after[0], "after_subscription_id": after[1], "batch_size": batch_size}
        result = await session.execute(_statements.PREBUILT["subscriptions.secrets_after"], parameters)
    return result.all()


def _reencrypted(box: SecretBox, page: Sequence[Any]) -> list[_Reencrypted]:
    """The page's secrets not under the first key, each with its new ciphertext; raises at one no key opens."""
    batch = []
    for conversation_id, subscription_id, ciphertext in page:
        if box.is_current(ciphertext):
            continue
        try:
            fresh = box.reencrypt(ciphertext)
        except SecretDecryptionError as exc:
            raise SecretDecryptionError(
                f"webhook subscription {subscription_id} of conversation {conversation_id}: {exc}",
                conversation_id=conversation_id,
                subscription_id=subscription_id,
            ) from exc
        batch.append(_Reencrypted(conversation_id, subscription_id, ciphertext, fresh))
    return batch


class _Tally:
    """The running count of a job's deleted rows, reported to the caller's ``progress`` after each batch."""

    def __init__(self, report: Callable[[int, int], None] | None, total: int) -> None:
        self._report = report
        self._total = int(total)
        self.done = 0

    def add(self, count: int) -> None:
        self.done += count
        if self._report is not None:
            self._report(self.done, self._total)


async def _run_in_batches(
    sessions: async_sessionmaker[AsyncSession],
    name: str,
    parameters: Mapping[str, Any],
    batch_size: int,
    tally: _Tally | None,
) -> int:
    """Run the batch DELETE or UPDATE ``name`` (see ``_statements._locked_batch``), each batch committed,
    until one comes back short; returns the rows it wrote, counted in ``tally`` when given."""
    deleted = 0
    after = _FIRST_CONVERSATION
    while True:
        with translate_database_errors():
            async with sessions.begin() as session:
                batch = {**parameters, "after_conversation_id": after, "batch_size": batch_size}
                conversation_ids = list((await session.execute(_statements.PREBUILT[name], batch)).scalars())
        if conversation_ids:
            deleted += len(conversation_ids)
            if tally is not None:
                tally.add(len(conversation_ids))
        # Short: the walk reached the end of the index (a skipped row does not count towards the limit).
        if len(conversation_ids) < batch_size:
            return deleted
        after = max(conversation_ids)


def _forget_conversation(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    schedule_ids: frozenset[uuid.UUID],
    subscription_ids: frozenset[uuid.UUID],
) -> None:
    """Make the session agree with the database after a purge: no object of the conversation's
    rows stays, and the ON DELETE actions reach the objects of other rows that named them."""
    for held in list(session.identity_map.values()):
        identity = attributes.instance_state(held).identity
        if isinstance(held, _WAKE_MODELS) and identity is not None and identity[0] == conversation_id:
            session.expunge(held)
    forget_deleted(session, WakeSchedule, "schedule_id", conversation_id, schedule_ids)
    forget_deleted(session, WebhookSubscription, "subscription_id", conversation_id, subscription_ids)


def _require_sessions(sessions: object) -> async_sessionmaker[AsyncSession]:
    if not isinstance(sessions, async_sessionmaker):
        raise InvalidInputError("sessions", "must be an async_sessionmaker")
    return sessions


def _refuse_declaring(session: AsyncSession) -> None:
    # A declaring session is the application role's: its policies would hide every row the job looks for.
    if row_security.declares_conversations(session):
        raise InvalidInputError(
            "sessions",
            "must not be configured by use_row_security(): the job spans conversations; "
            "run it with the maintenance role's sessions",
        )


def _require_age(older_than: object) -> timedelta:
    if not isinstance(older_than, timedelta):
        raise InvalidInputError("older_than", "must be a timedelta")
    if not timedelta(0) < older_than <= _MAX_AGE:
        raise InvalidInputError("older_than", "must be longer than zero and at most 36,500 days")
    return older_than


def _require_batch_size(batch_size: object) -> int:
    return check.require_int("batch_size", batch_size, minimum=1, maximum=_MAX_BATCH_SIZE)


def _require_progress(progress: object) -> Callable[[int, int], None] | None:
    if progress is not None and not callable(progress):
        raise InvalidInputError("progress", "must be None or a function (done, total) -> None")
    return cast(Callable[[int, int], None] | None, progress)

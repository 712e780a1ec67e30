"""Partition-scoped access to ``agent_wake_schedules``, and the tick's claim."""

import logging
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Final, TypedDict, Unpack, cast

import uuid_utils.compat as uuid_utils
from sqlalchemy import Table
from sqlalchemy.orm import attributes

from agent_wake import _statements, enums
from agent_wake import _validation as check
from agent_wake._repository import DEFAULT_LIST_LIMIT, PartitionedRepository
from agent_wake.errors import InvalidInputError, NotFoundError, translate_database_errors
from agent_wake.models import PARTITION_COLUMN, WakeSchedule
from agent_wake.schedule_configs import validate_schedule_config

__all__ = ["ClaimedFire", "DueSchedule", "NextFire", "ScheduleChanges", "WakeScheduleRepository"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DueSchedule:
    """A schedule as :meth:`WakeScheduleRepository.claim_due` locked it: the
    row's values, with the attribute names of :class:`~agent_wake.models.WakeSchedule`,
    for ``next_fire``. Plain values, not an ORM object (the claim builds none)."""

    conversation_id: uuid.UUID
    schedule_id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    skill_id: uuid.UUID | None
    schedule_type: str
    schedule_config: dict[str, Any]
    task_prompt: str | None
    execution_mode: enums.ExecutionMode
    status: enums.ScheduleStatus
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    name: str | None
    missed_fire_policy: enums.MissedFirePolicy
    context_from_schedule_id: uuid.UUID | None
    include_conversation_history: bool
    date_created: datetime
    date_updated: datetime


# The caller's schedule arithmetic: the instant after the claimed period, or
# None when the schedule is finished (a one-shot).
NextFire = Callable[[DueSchedule, datetime], datetime | None]


@dataclass(frozen=True, slots=True)
class ClaimedFire:
    """One schedule claimed by :meth:`WakeScheduleRepository.claim_due`: its new
    ``dispatching`` fire and what a dispatcher needs of the schedule.

    Plain values, not ORM objects: a claim stays readable after its
    transaction commits, whatever the session factory's ``expire_on_commit``.
    ``next_fire_at`` and ``schedule_status`` are the schedule's after the
    claim (``expired`` when ``next_fire`` returned None).
    """

    conversation_id: uuid.UUID
    schedule_id: uuid.UUID
    fire_id: uuid.UUID
    scheduled_fire_at: datetime
    fired_at: datetime
    next_fire_at: datetime | None
    schedule_status: enums.ScheduleStatus
    user_id: uuid.UUID
    agent_id: uuid.UUID
    skill_id: uuid.UUID | None
    schedule_type: str
    schedule_config: dict[str, Any]
    task_prompt: str | None
    execution_mode: enums.ExecutionMode
    name: str | None
    context_from_schedule_id: uuid.UUID | None
    include_conversation_history: bool


class ScheduleChanges(TypedDict, total=False):
    """The fields :meth:`WakeScheduleRepository.update` may change."""

    schedule_type: str
    schedule_config: Mapping[str, Any]
    skill_id: uuid.UUID | None
    task_prompt: str | None
    execution_mode: enums.ExecutionMode
    name: str | None
    missed_fire_policy: enums.MissedFirePolicy
    context_from_schedule_id: uuid.UUID | None
    include_conversation_history: bool


# The columns of a schedule row, in the order the tick's statements return them (DueSchedule's fields).
_SCHEDULE_COLUMNS: Final = tuple(column.name for column in cast(Table, WakeSchedule.__table__).columns)
# Citus: how many due schedules each page of claim_due's unlocked scan reads, per schedule it may claim.
_SCANNED_PER_CLAIM: Final = 4
# The connection's info key of whether agent_wake_schedules is hash-distributed (Citus).
_HASH_DISTRIBUTED: Final = "agent_wake.schedules_hash_distributed"
_MAX_PROMPT_LENGTH: Final = 100_000
_MAX_NAME_LENGTH: Final = 500
# Statuses a schedule can be created in; "expired" is reached only by firing.
_CREATABLE_STATUSES: Final[tuple[enums.ScheduleStatus, ...]] = ("active", "paused")
# The rule of each plain field, shared by create and update: (field, value) -> accepted value.
_FIELD_RULES: Final[Mapping[str, Callable[[str, Any], object]]] = {
    "user_id": check.require_uuid,
    "agent_id": check.require_uuid,
    "skill_id": check.optional_uuid,
    "task_prompt": partial(check.optional_text, max_length=_MAX_PROMPT_LENGTH),
    "execution_mode": partial(check.require_choice, choices=enums.EXECUTION_MODES),
    "name": partial(check.optional_text, max_length=_MAX_NAME_LENGTH),
    "missed_fire_policy": partial(check.require_choice, choices=enums.MISSED_FIRE_POLICIES),
    "context_from_schedule_id": check.optional_uuid,
    "include_conversation_history": check.require_bool,
}
_UPDATE_HINTS: Final = {
    "status": " (use pause, resume or mark_expired)",
    "next_fire_at": " (use update_next_fire_at or resume)",
}


@dataclass(frozen=True, slots=True)
class _Planned:
    """One schedule of a claim, read before ``next_fire`` could touch it, and what the claim sets."""

    conversation_id: uuid.UUID
    schedule_id: uuid.UUID
    period: datetime
    last_fired_at: datetime | None
    following: datetime | None
    status: enums.ScheduleStatus


class WakeScheduleRepository(PartitionedRepository[WakeSchedule]):
    """Reads and writes the wake schedules of one conversation at a time.

    Every method but :meth:`list_due` and :meth:`claim_due` takes
    ``conversation_id`` first and puts it in the SQL's WHERE clause. Methods
    flush but never commit: the caller owns the transaction. Arguments are
    validated before any SQL runs; a database failure is raised as an
    :class:`~agent_wake.errors.AgentWakeError`, and rolling back leaves the
    database as it was. Every schedule returned is the row as stored, and an
    object of it that the session held is refreshed.
    ``get(conversation_id, schedule_id)``, ``list_for_conversation(conversation_id,
    limit=200)`` (newest first) and ``delete(conversation_id, schedule_id)``
    (its fires go with it, ON DELETE CASCADE; the schedules that took context
    from it keep none: the DELETE's statement clears their
    ``context_from_schedule_id`` first, on either layout) come from the shared base.
    """

    model = WakeSchedule
    id_column = "schedule_id"
    entity = "schedule"
    statement_prefix = "schedules"

    async def create(
        self,
        *,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        agent_id: uuid.UUID,
        schedule_type: str,
        schedule_config: Mapping[str, Any],
        next_fire_at: datetime | None = None,
        skill_id: uuid.UUID | None = None,
        task_prompt: str | None = None,
        execution_mode: enums.ExecutionMode = "inline",
        status: enums.ScheduleStatus = "active",
        name: str | None = None,
        missed_fire_policy: enums.MissedFirePolicy = "coalesce",
        context_from_schedule_id: uuid.UUID | None = None,
        include_conversation_history: bool = True,
        schedule_id: uuid.UUID | None = None,
    ) -> WakeSchedule:
        """Insert a schedule and return it; ``schedule_id`` is a new UUIDv7 unless given.

        ``schedule_config`` is checked against ``schedule_type``'s model. A
        ``context_from_schedule_id`` must name another schedule of the same
        conversation (one extra SELECT when given). One INSERT otherwise.
        """
        key = self._key_parameters(conversation_id, uuid_utils.uuid7() if schedule_id is None else schedule_id)
        status = check.require_choice("status", status, _CREATABLE_STATUSES)
        next_fire_at = check.optional_aware("next_fire_at", next_fire_at)
        if status != "active" and next_fire_at is not None:
            raise InvalidInputError("next_fire_at", "must be None unless status is 'active'")
        given = {
            "user_id": user_id,
            "agent_id": agent_id,
            "skill_id": skill_id,
            "task_prompt": task_prompt,
            "execution_mode": execution_mode,
            "name": name,
            "missed_fire_policy": missed_fire_policy,
            "context_from_schedule_id": context_from_schedule_id,
            "include_conversation_history": include_conversation_history,
        }
        values: dict[str, Any] = {field: _FIELD_RULES[field](field, value) for field, value in given.items()}
        schedule_type = check.require_slug("schedule_type", schedule_type)
        values["schedule_config"] = validate_schedule_config(schedule_type, schedule_config)
        if values["context_from_schedule_id"] is not None:
            await self._require_context_source(key, values["context_from_schedule_id"])
        return await self._insert(
            {**key, "schedule_type": schedule_type, "status": status, "next_fire_at": next_fire_at, **values}
        )

    async def list_active_for_conversation(
        self, conversation_id: uuid.UUID, *, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[WakeSchedule]:
        """The conversation's active schedules, soonest ``next_fire_at`` first, unset last. One SELECT."""
        parameters = {
            PARTITION_COLUMN: check.require_uuid(PARTITION_COLUMN, conversation_id),
            "limit": check.require_limit(limit),
        }
        return await self._all(self._prebuilt("list_active_for_conversation"), parameters)

    async def count_active_for_conversation(self, conversation_id: uuid.UUID) -> int:
        """How many active schedules the conversation has (for per-conversation caps). One SELECT."""
        parameters = {PARTITION_COLUMN: check.require_uuid(PARTITION_COLUMN, conversation_id)}
        return int(await self._scalar(self._prebuilt("count_active_for_conversation"), parameters))

    async def update(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, /, **changes: Unpack[ScheduleChanges]
    ) -> WakeSchedule:
        """Change the named fields and return the schedule as stored.

        Status changes go through :meth:`pause`, :meth:`resume` and
        :meth:`mark_expired`, and ``next_fire_at`` through
        :meth:`update_next_fire_at`; they are refused here, as are unknown
        fields. Changing ``schedule_config`` alone validates it against the
        stored type (one extra SELECT). One UPDATE.
        """
        key = self._key_parameters(conversation_id, schedule_id)
        if not changes:
            raise InvalidInputError("changes", "name at least one field to update")
        allowed = ScheduleChanges.__optional_keys__
        for field in changes:
            if field not in allowed:
                rule = "cannot be changed with update()" + _UPDATE_HINTS.get(field, "")
                raise InvalidInputError(check.clipped(field, check.ECHO_CHARS), rule)
        values: dict[str, Any] = {
            field: _FIELD_RULES[field](field, value) for field, value in changes.items() if field in _FIELD_RULES
        }
        if "schedule_type" in changes or "schedule_config" in changes:
            values.update(await self._validated_type_change(key, changes))
        if values.get("context_from_schedule_id") is not None:
            await self._require_context_source(key, values["context_from_schedule_id"])
        statement = _statements.conditional_update(WakeSchedule, "schedule_id", tuple(values), None)
        return await self._update_one(key, statement, values, action="update")

    async def update_next_fire_at(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, next_fire_at: datetime | None
    ) -> WakeSchedule:
        """Set ``next_fire_at`` of an active schedule; refuses a paused or expired one."""
        key = self._key_parameters(conversation_id, schedule_id)
        values = {"next_fire_at": check.optional_aware("next_fire_at", next_fire_at)}
        return await self._update_one(
            key, self._prebuilt("set_next_fire_if_active"), values, action="set next_fire_at of"
        )

    async def pause(self, conversation_id: uuid.UUID, schedule_id: uuid.UUID) -> WakeSchedule:
        """Active → paused, clearing ``next_fire_at``; a paused schedule stays paused (the row is still written).

        Refuses an expired schedule (:class:`~agent_wake.errors.StatusConflictError`).
        """
        key = self._key_parameters(conversation_id, schedule_id)
        values = {"status": "paused", "next_fire_at": None}
        return await self._update_one(key, self._prebuilt("set_status_unless_expired"), values, action="pause")

    async def resume(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, *, next_fire_at: datetime
    ) -> WakeSchedule:
        """Paused → active, firing next at ``next_fire_at``. Never revives an expired schedule."""
        key = self._key_parameters(conversation_id, schedule_id)
        values = {"status": "active", "next_fire_at": check.require_aware("next_fire_at", next_fire_at)}
        return await self._update_one(key, self._prebuilt("set_status_unless_expired"), values, action="resume")

    async def mark_expired(self, conversation_id: uuid.UUID, schedule_id: uuid.UUID) -> WakeSchedule:
        """Mark the schedule expired (terminal) and clear ``next_fire_at``."""
        key = self._key_parameters(conversation_id, schedule_id)
        values = {"status": "expired", "next_fire_at": None}
        return await self._update_one(key, self._prebuilt("set_status"), values, action="expire")

    async def claim_and_reschedule(
        self,
        *,
        conversation_id: uuid.UUID,
        schedule_id: uuid.UUID,
        expected_next_fire: datetime,
        computed_next_fire: datetime | None,
        new_status: enums.ScheduleStatus,
        now: datetime,
    ) -> bool:
        """Claim one due fire of an active schedule by compare-and-set on ``next_fire_at``.

        Sets ``next_fire_at = computed_next_fire``, ``status = new_status``
        and ``last_fired_at = now`` only if the schedule is still active
        with ``next_fire_at == expected_next_fire``. Returns whether this
        call won: of concurrent claims of one fire, exactly one does (under
        READ COMMITTED the loser waits for the winner's row lock, then sees
        the new ``next_fire_at`` and updates nothing). One UPDATE; a loser
        whose session holds the schedule re-reads it (one SELECT), so the
        held object shows the winner's values.
        """
        key = self._key_parameters(conversation_id, schedule_id)
        expected_next_fire = check.require_aware("expected_next_fire", expected_next_fire)
        computed_next_fire = check.optional_aware("computed_next_fire", computed_next_fire)
        new_status = check.require_choice("new_status", new_status, enums.SCHEDULE_STATUSES)
        now = check.require_aware("now", now)
        if new_status == "active" and computed_next_fire is None:
            raise InvalidInputError("computed_next_fire", "is required when new_status is 'active'")
        if new_status != "active" and computed_next_fire is not None:
            raise InvalidInputError("computed_next_fire", "must be None unless new_status is 'active'")
        parameters = {
            **{f"target_{name}": value for name, value in key.items()},
            "expected_next_fire": expected_next_fire,
            "computed_next_fire": computed_next_fire,
            "new_status": new_status,
            "now": now,
        }
        claimed = await self._one_or_none(self._prebuilt("claim_and_reschedule"), parameters)
        if claimed is None and self._held(WakeSchedule, (key[PARTITION_COLUMN], key["schedule_id"])) is not None:
            await self.get(key[PARTITION_COLUMN], key["schedule_id"])
        return claimed is not None

    async def list_due(self, now: datetime, *, limit: int = DEFAULT_LIST_LIMIT) -> list[WakeSchedule]:
        """Cross-partition: active schedules due at ``now``, oldest ``next_fire_at`` first.

        The tick's scan over every conversation; served by the partial
        index ``idx_wake_schedules_next_fire``. Takes no locks. One SELECT.
        """
        self._refuse_on_declaring_session("list_due")
        parameters = {"now": check.require_aware("now", now), "limit": check.require_limit(limit)}
        return await self._all(self._prebuilt("list_due"), parameters)

    async def claim_due(self, now: datetime, *, limit: int, next_fire: NextFire) -> list[ClaimedFire]:
        """Cross-partition: claim up to ``limit`` due schedules for this tick, in the caller's transaction.

        Takes the active schedules due at ``now`` (any conversation, oldest
        ``next_fire_at`` first) with ``FOR UPDATE SKIP LOCKED``, so
        concurrent ticks never take the same one. For each, writes one
        ``dispatching`` fire whose ``scheduled_fire_at`` is the claimed
        period, stamps ``last_fired_at = now`` and sets ``next_fire_at`` to
        ``next_fire(schedule, now)``; ``None`` marks the schedule expired.
        ``next_fire`` must return an aware instant after the claimed period
        (the next missed one for ``catch_up``, the first after ``now`` for
        ``coalesce``) that can be stored. A schedule for which it raises or
        returns anything else is left out of the batch, unchanged and still
        due, and logged at ERROR, so one broken schedule cannot stop the
        tick for everyone. A period that already has its fire gets no
        second one: the schedule is advanced and not returned.

        ``next_fire`` gets each schedule as a :class:`DueSchedule` (the row's
        values). Returns one :class:`ClaimedFire` per new fire, oldest period
        first; no ORM object is built, and a schedule the session holds is
        refreshed with the stored row. On plain PostgreSQL, costs three round
        trips whatever the batch size, each statement with a fixed text: the
        locking SELECT, one ``INSERT ... SELECT FROM unnest`` of the fires and
        one ``UPDATE ... FROM unnest``, sent on the session's own driver
        connection (see ``_fetch_on_driver``). The locks are held until the
        caller commits; if the caller's process dies first, PostgreSQL
        releases them and nothing was claimed. Refuses a session in AUTOCOMMIT.

        The first claim on each database connection also asks the catalog
        whether ``agent_wake_schedules`` is hash-distributed by Citus: one
        query on plain PostgreSQL (is the ``citus`` extension installed?),
        two where it is; the answer is kept for the connection's life, so
        connections opened before the table was distributed must be closed
        (``engine.dispose()``) after it. On Citus, which refuses row locks in
        a statement that spans shards, every statement but one stays on one
        shard: an unlocked scan of the oldest ``4 * limit`` due schedules
        with each one's shard (every shard); then, shard by shard in random
        order (so concurrent ticks spread over the shards), the locking
        SELECT restricted to that shard's scanned conversations
        (``conversation_id = ANY(...)``), which still skips locked rows and
        checks under the lock that each schedule is due, and that shard's
        INSERT and UPDATE (a write to several shards would hold a lock on
        each until commit, and concurrent ticks would wait for each other).
        Round trips: the scan, a locking SELECT per shard visited (another
        where failed schedules took places), the INSERT and the UPDATE of
        each shard that gave schedules, and another
        scan page only while the batch is short after every shard of a full
        page (their schedules taken by other ticks). Each shard gives its
        oldest schedules first, but the batch is not the oldest ``limit``
        overall. A shard split between the scan and a lock fails the claim
        (its locking SELECT would span two shards); the next tick scans again.
        """
        self._refuse_on_declaring_session("claim_due")
        now = check.require_aware("now", now)
        limit = check.require_limit(limit)
        if not callable(next_fire):
            raise InvalidInputError("next_fire", "must be a function (schedule, now) -> datetime | None")
        with translate_database_errors():
            await self._session.flush()  # what a read through the session would send first
            locked: dict[uuid.UUID, DueSchedule] = {}
            distributed = await self._schedules_hash_distributed()
            if distributed:
                batches = await self._lock_due_by_shard(now, limit, next_fire, locked)
            else:
                batches = [await self._lock_due(now, limit, next_fire, locked)]
            fired: dict[uuid.UUID, uuid.UUID] = {}
            rescheduled: dict[uuid.UUID, Sequence[Any]] = {}
            for batch in batches:
                await self._write_claims(batch, now, fired, rescheduled)
        self._refresh_held_schedules(locked, rescheduled)
        planned = [plan for batch in batches for plan in batch]
        if distributed:
            planned.sort(key=lambda plan: (plan.period, plan.schedule_id))
        return [
            _claimed_fire(
                locked[plan.schedule_id], rescheduled[plan.schedule_id], fired[plan.schedule_id], plan.period, now
            )
            for plan in planned
            if plan.schedule_id in fired
        ]

    async def _schedules_hash_distributed(self) -> bool:
        """Whether Citus distributes ``agent_wake_schedules`` by hash, asked once per DBAPI connection
        (one query without the citus extension, two with it) and kept in the connection's ``info``."""
        connection = await self._session.connection()
        distributed = connection.info.get(_HASH_DISTRIBUTED)
        if distributed is None:
            distributed = bool((await self._fetch_on_driver("schedules.citus_installed", {}))[0][0])
            if distributed:
                distributed = bool((await self._fetch_on_driver("schedules.hash_distributed", {}))[0][0])
            connection.info[_HASH_DISTRIBUTED] = distributed
        return bool(distributed)

    async def _lock_due(
        self, now: datetime, limit: int, next_fire: NextFire, locked: dict[uuid.UUID, DueSchedule]
    ) -> list[_Planned]:
        """Lock up to ``limit`` due schedules whose ``next_fire`` answers, oldest first, and return their
        claims: one locking SELECT over every conversation, and another while failed schedules took
        places in the batch. Every schedule locked is added to ``locked``."""
        planned: list[_Planned] = []
        due = await self._fetch_on_driver("schedules.claim_lock", {"now": now, "limit": limit})
        while due:
            requested = limit - len(planned)
            planned.extend(_plan_locked(due, now, next_fire, locked))
            if len(planned) == limit or len(due) < requested:
                break
            # Schedules whose next_fire failed took places in the batch: they stay
            # locked by this transaction (so due to it again) and are excluded here.
            parameters = {"now": now, "limit": limit - len(planned), "seen": list(locked)}
            due = await self._fetch_on_driver("schedules.claim_lock_excluding", parameters)
        return planned

    async def _lock_due_by_shard(
        self, now: datetime, limit: int, next_fire: NextFire, locked: dict[uuid.UUID, DueSchedule]
    ) -> list[list[_Planned]]:
        """What :meth:`_lock_due` does, on Citus, with the claims grouped by shard: an unlocked scan
        for the shards of the oldest due schedules, then one locking SELECT per shard over the scanned
        conversations in it (another while failed schedules took places and the shard may hold more)."""
        batches: list[list[_Planned]] = []
        claimed = 0
        page_size = limit * _SCANNED_PER_CLAIM
        visited: set[uuid.UUID] = set()
        page = await self._fetch_on_driver("schedules.claim_scan_sharded", {"now": now, "limit": page_size})
        while page:
            by_shard: dict[int, list[uuid.UUID]] = {}
            for conversation_id, shard_id, _, _ in page:
                if conversation_id not in visited:
                    visited.add(conversation_id)
                    by_shard.setdefault(shard_id, []).append(conversation_id)
            shards = list(by_shard.values())
            random.shuffle(shards)  # concurrent ticks start on different shards
            for conversation_ids in shards:
                batch: list[_Planned] = []
                seen: list[uuid.UUID] = []
                while claimed < limit:
                    requested = limit - claimed
                    parameters = {"now": now, "conversation_ids": conversation_ids, "seen": seen, "limit": requested}
                    due = await self._fetch_on_driver("schedules.claim_lock_among", parameters)
                    taken = _plan_locked(due, now, next_fire, locked)
                    batch.extend(taken)
                    claimed += len(taken)
                    if len(due) < requested:
                        break
                    seen.extend(row[1] for row in due)
                if batch:
                    batches.append(batch)
                if claimed == limit:
                    return batches
            if len(page) < page_size:
                break
            # Other ticks hold (or this one could not plan) every schedule of a full page: the next one.
            _, _, after_next_fire_at, after_schedule_id = page[-1]
            parameters = {
                "now": now,
                "after_next_fire_at": after_next_fire_at,
                "after_schedule_id": after_schedule_id,
                "limit": page_size,
            }
            page = await self._fetch_on_driver("schedules.claim_scan_sharded_after", parameters)
        return batches

    async def _write_claims(
        self,
        planned: Sequence[_Planned],
        now: datetime,
        fired: dict[uuid.UUID, uuid.UUID],
        rescheduled: dict[uuid.UUID, Sequence[Any]],
    ) -> None:
        """Write the fires of ``planned`` and reschedule its schedules, in two statements (none for an
        empty batch); add the fire of each schedule that got one to ``fired``, and each schedule's
        row as rescheduled to ``rescheduled``."""
        if not planned:
            return
        conversation_ids = [plan.conversation_id for plan in planned]
        schedule_ids = [plan.schedule_id for plan in planned]
        inserted = await self._fetch_on_driver(
            "schedules.claim_fires",
            {
                "now": now,
                "claimed_fire_conversation_id": conversation_ids,
                "claimed_fire_fire_id": [uuid_utils.uuid7() for _ in planned],
                "claimed_fire_schedule_id": schedule_ids,
                "claimed_fire_scheduled_fire_at": [plan.period for plan in planned],
            },
        )
        fired.update((schedule_id, fire_id) for schedule_id, fire_id in inserted)
        for plan in planned:
            if plan.schedule_id not in fired:
                _logger.warning(
                    "claim_due: schedule %s of conversation %s already has its fire for %s; advanced without a new one",
                    plan.schedule_id,
                    plan.conversation_id,
                    plan.period.isoformat(),
                )
        rescheduled_rows = await self._fetch_on_driver(
            "schedules.claim_reschedule",
            {
                "claimed_conversation_id": conversation_ids,
                "claimed_schedule_id": schedule_ids,
                "claimed_next_fire_at": [plan.following for plan in planned],
                "claimed_status": [plan.status for plan in planned],
                # Stamped only where a fire was written: an advanced period did not fire.
                "claimed_last_fired_at": [now if plan.schedule_id in fired else plan.last_fired_at for plan in planned],
            },
        )
        rescheduled.update((row[1], row) for row in rescheduled_rows)

    def _refresh_held_schedules(
        self, locked: Mapping[uuid.UUID, DueSchedule], rescheduled: Mapping[uuid.UUID, Sequence[Any]]
    ) -> None:
        """Overwrite the session's objects of the claimed schedules (if it holds any) with the rows as stored:
        as locked, with what the reschedule changed.

        What ``populate_existing`` does for a read through the session; the
        tick's rows come from the driver, so it is done here.
        """
        identity_map = self._session.identity_map
        for key in list(identity_map.keys()):
            if key[0] is not WakeSchedule or key[1][1] not in locked:
                continue
            conversation_id, schedule_id = key[1]
            schedule, instance = locked[schedule_id], identity_map.get(key)
            if instance is None or schedule.conversation_id != conversation_id:
                continue
            for column in _SCHEDULE_COLUMNS:
                attributes.set_committed_value(instance, column, getattr(schedule, column))
            for column, value in zip(_statements.RESCHEDULED_COLUMNS, rescheduled.get(schedule_id, ()), strict=False):
                attributes.set_committed_value(instance, column, value)

    async def _require_context_source(self, key: Mapping[str, uuid.UUID], source_id: uuid.UUID) -> None:
        if source_id == key["schedule_id"]:
            raise InvalidInputError("context_from_schedule_id", "must not be the schedule itself")
        parameters = {PARTITION_COLUMN: key[PARTITION_COLUMN], "schedule_id": source_id}
        if await self._scalar(self._prebuilt("source_exists"), parameters) is None:
            raise InvalidInputError("context_from_schedule_id", "must be a schedule of the same conversation")

    async def _validated_type_change(self, key: Mapping[str, uuid.UUID], changes: ScheduleChanges) -> dict[str, Any]:
        if "schedule_type" in changes and "schedule_config" in changes:
            schedule_type = check.require_slug("schedule_type", changes["schedule_type"])
        elif "schedule_type" in changes:
            raise InvalidInputError("schedule_config", "is required when schedule_type changes")
        else:
            current = await self.get(key[PARTITION_COLUMN], key["schedule_id"])
            if current is None:
                raise NotFoundError(self.entity, key[PARTITION_COLUMN], key["schedule_id"])
            schedule_type = current.schedule_type
        return {
            "schedule_type": schedule_type,
            "schedule_config": validate_schedule_config(schedule_type, changes["schedule_config"]),
        }


def _plan_locked(
    rows: Sequence[Sequence[Any]], now: datetime, next_fire: NextFire, locked: dict[uuid.UUID, DueSchedule]
) -> list[_Planned]:
    """The claims of the schedules a locking SELECT returned, those whose ``next_fire`` answers;
    every schedule returned is added to ``locked``."""
    planned = []
    for row in rows:
        schedule = locked[row[1]] = DueSchedule(*row)
        if (plan := _planned(schedule, now, next_fire)) is not None:
            planned.append(plan)
    return planned


def _planned(schedule: DueSchedule, now: datetime, next_fire: NextFire) -> _Planned | None:
    """The claim of ``schedule`` with ``next_fire``'s answer checked; None (logged) when it fails."""
    period, last_fired_at = schedule.next_fire_at, schedule.last_fired_at
    assert period is not None  # the locking query selects only due schedules
    try:
        following = next_fire(schedule, now)
        if following is not None:
            following = check.require_aware("next_fire", following)
            if following <= period:
                raise InvalidInputError(
                    "next_fire", f"returned {following.isoformat()}, not after the claimed period {period.isoformat()}"
                )
    except Exception:
        _logger.exception(
            "claim_due: next_fire failed for schedule %s of conversation %s; it stays due and unclaimed",
            schedule.schedule_id,
            schedule.conversation_id,
        )
        return None
    status: enums.ScheduleStatus = "expired" if following is None else "active"
    return _Planned(schedule.conversation_id, schedule.schedule_id, period, last_fired_at, following, status)


def _claimed_fire(
    schedule: DueSchedule, rescheduled: Sequence[Any], fire_id: uuid.UUID, period: datetime, now: datetime
) -> ClaimedFire:
    after = dict(zip(_statements.RESCHEDULED_COLUMNS, rescheduled, strict=True))
    return ClaimedFire(
        conversation_id=schedule.conversation_id,
        schedule_id=schedule.schedule_id,
        fire_id=fire_id,
        scheduled_fire_at=period,
        fired_at=now,
        next_fire_at=after["next_fire_at"],
        schedule_status=after["status"],
        user_id=schedule.user_id,
        agent_id=schedule.agent_id,
        skill_id=schedule.skill_id,
        schedule_type=schedule.schedule_type,
        schedule_config=schedule.schedule_config,
        task_prompt=schedule.task_prompt,
        execution_mode=schedule.execution_mode,
        name=schedule.name,
        context_from_schedule_id=schedule.context_from_schedule_id,
        include_conversation_history=schedule.include_conversation_history,
    )

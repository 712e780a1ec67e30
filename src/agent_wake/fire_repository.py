"""Partition-scoped access to ``wake_fires``, the fire history."""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import uuid_utils.compat as uuid_utils

from agent_wake import _statements, enums
from agent_wake import _validation as check
from agent_wake._repository import DEFAULT_LIST_LIMIT, PartitionedRepository
from agent_wake.errors import InvalidInputError, NotFoundError
from agent_wake.models import PARTITION_COLUMN, WakeFire

__all__ = ["FireFailure", "FireSuccess", "WakeFireRepository"]

_MAX_OUTPUT_LENGTH: Final = 1_000_000
_MAX_LATENCY_MS: Final = 2**31 - 1
# (conversation_id, fire_id)
_FireKey = tuple[uuid.UUID, uuid.UUID]
# The statement of each outcome kind, found by the columns its validated values
# carry, so that values and statement cannot drift apart silently.
_FINALIZING: Final = {_statements.SUCCESS_COLUMNS: "finalize_success", _statements.FAILURE_COLUMNS: "finalize_failed"}


class WakeFireRepository(PartitionedRepository[WakeFire]):
    """Writes and reads the fires of one conversation at a time.

    Every method but :meth:`list_stale_dispatching` and the batch
    finalizations takes ``conversation_id`` first and puts it in the SQL's
    WHERE clause. Methods flush but never commit: the caller owns the
    transaction. Every fire returned is the row as stored, and an object of
    it that the session held is refreshed. ``get(conversation_id, fire_id)``,
    ``list_for_conversation(conversation_id, limit=200)`` (newest first) and
    ``delete(conversation_id, fire_id)`` come from the shared base.
    """

    model = WakeFire
    id_column = "fire_id"
    entity = "fire"
    statement_prefix = "fires"

    async def create_dispatching(
        self,
        *,
        conversation_id: uuid.UUID,
        schedule_id: uuid.UUID | None = None,
        webhook_subscription_id: uuid.UUID | None = None,
        scheduled_fire_at: datetime | None = None,
        actual_fired_at: datetime | None = None,
        fire_id: uuid.UUID | None = None,
    ) -> WakeFire:
        """Write the in-flight ``dispatching`` row of a fire and return it.

        Exactly one source is required: ``schedule_id`` or
        ``webhook_subscription_id``, which must belong to the same
        conversation. The row is inserted by an ``INSERT ... SELECT`` from
        the source's own partition, so a source of another conversation
        inserts nothing and is refused (:class:`~agent_wake.errors.NotFoundError`):
        one round trip either way. ``actual_fired_at`` defaults to the
        transaction's ``now()`` (on Citus, the ``now()`` of its part on the
        worker holding the conversation's shard, which starts a little
        later). A second fire for the same schedule period
        is a :class:`~agent_wake.errors.DuplicateError`.
        """
        conversation_id = check.require_uuid(PARTITION_COLUMN, conversation_id)
        schedule_id = check.optional_uuid("schedule_id", schedule_id)
        webhook_subscription_id = check.optional_uuid("webhook_subscription_id", webhook_subscription_id)
        if schedule_id is not None and webhook_subscription_id is not None:
            raise InvalidInputError(
                "webhook_subscription_id", "a fire has one source: give schedule_id or this, not both"
            )
        parameters = {
            PARTITION_COLUMN: conversation_id,
            "fire_id": uuid_utils.uuid7() if fire_id is None else check.require_uuid("fire_id", fire_id),
            "scheduled_fire_at": check.optional_aware("scheduled_fire_at", scheduled_fire_at),
            "actual_fired_at": check.optional_aware("actual_fired_at", actual_fired_at),
        }
        if schedule_id is not None:
            source, source_id = "schedule", schedule_id
            statement = self._prebuilt("create_dispatching_from_schedule")
            parameters["schedule_id"] = schedule_id
        elif webhook_subscription_id is not None:
            source, source_id = "webhook subscription", webhook_subscription_id
            statement = self._prebuilt("create_dispatching_from_subscription")
            parameters["subscription_id"] = webhook_subscription_id
        else:
            raise InvalidInputError("schedule_id", "a fire needs a source: give schedule_id or webhook_subscription_id")
        fire: WakeFire | None = await self._one_or_none(statement, parameters)
        if fire is None:
            raise NotFoundError(source, conversation_id, source_id)
        return fire

    async def finalize_success(
        self,
        conversation_id: uuid.UUID,
        fire_id: uuid.UUID,
        *,
        status: enums.FireStatus,
        output_text: str | None = None,
        latency_ms: int | None = None,
        display_suppressed: bool = False,
    ) -> WakeFire:
        """Move a ``dispatching`` fire to a terminal ``status`` other than ``failed``.

        Finalizing a fire that is already final changes nothing and returns
        it as stored (first finalization wins), so a retry is harmless. One
        UPDATE; one more SELECT only in that already-final case.
        """
        outcome = FireSuccess(conversation_id, fire_id, status, output_text, latency_ms, display_suppressed)
        return await self._finalize(*_success_values(outcome, ""))

    async def finalize_failed(
        self,
        conversation_id: uuid.UUID,
        fire_id: uuid.UUID,
        *,
        error: str,
        latency_ms: int | None = None,
    ) -> WakeFire:
        """Move a ``dispatching`` fire to ``failed`` with ``error``; harmless on a final fire."""
        return await self._finalize(*_failure_values(FireFailure(conversation_id, fire_id, error, latency_ms), ""))

    async def finalize_success_batch(self, outcomes: Sequence["FireSuccess"]) -> list[WakeFire]:
        """Finalize many ``dispatching`` fires (any conversations) in one round trip.

        Returns the fires this call finalized; fires that are unknown or
        already final are left as they are and not returned. Every outcome
        is validated before the single ``UPDATE ... FROM unnest`` runs.
        """
        rows = [
            _success_values(outcome, f"outcomes[{index}].")
            for index, outcome in enumerate(_require_outcomes(outcomes, FireSuccess))
        ]
        return await self._finalize_batch(rows)

    async def finalize_failed_batch(self, outcomes: Sequence["FireFailure"]) -> list[WakeFire]:
        """Mark many ``dispatching`` fires ``failed`` in one round trip, like
        :meth:`finalize_success_batch`."""
        rows = [
            _failure_values(outcome, f"outcomes[{index}].")
            for index, outcome in enumerate(_require_outcomes(outcomes, FireFailure))
        ]
        return await self._finalize_batch(rows)

    async def list_stale_dispatching(self, older_than: datetime, *, limit: int = DEFAULT_LIST_LIMIT) -> list[WakeFire]:
        """Cross-partition: fires still ``dispatching`` that started before ``older_than``, oldest first.

        Evidence of a process that died mid-dispatch, for a recovery job,
        which then finalizes them (finalizing twice is harmless). Served by
        the partial index ``idx_wake_fires_dispatching``. One SELECT.
        """
        self._refuse_on_declaring_session("list_stale_dispatching")
        parameters = {"older_than": check.require_aware("older_than", older_than), "limit": check.require_limit(limit)}
        return await self._all(self._prebuilt("list_stale_dispatching"), parameters)

    async def list_for_schedule(
        self, conversation_id: uuid.UUID, schedule_id: uuid.UUID, *, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[WakeFire]:
        """The schedule's fires, newest first. One SELECT."""
        parameters: dict[str, Any] = self._schedule_parameters(conversation_id, schedule_id)
        parameters["limit"] = check.require_limit(limit)
        return await self._all(self._prebuilt("list_for_schedule"), parameters)

    async def latest_for_schedule(
        self,
        conversation_id: uuid.UUID,
        schedule_id: uuid.UUID,
        *,
        statuses: Iterable[enums.FireStatus] | None = None,
    ) -> WakeFire | None:
        """The schedule's most recent fire, or ``None``. One SELECT.

        ``statuses`` keeps only fires in those statuses; a context-from
        reader passes ``OUTPUT_FIRE_STATUSES`` (``fired``, ``fired_silent``)
        to get the last output.
        """
        parameters: dict[str, Any] = self._schedule_parameters(conversation_id, schedule_id)
        parameters["statuses"] = _statuses(statuses)
        return await self._one_or_none(self._prebuilt("latest_for_schedule"), parameters)  # type: ignore[no-any-return]

    async def count_in_window(
        self,
        conversation_id: uuid.UUID,
        since: datetime,
        *,
        statuses: Iterable[enums.FireStatus] | None = None,
    ) -> int:
        """How many fires the conversation had at or after ``since`` (for rate limits and caps). One SELECT."""
        parameters = {
            PARTITION_COLUMN: check.require_uuid(PARTITION_COLUMN, conversation_id),
            "since": check.require_aware("since", since),
            "statuses": _statuses(statuses),
        }
        return int(await self._scalar(self._prebuilt("count_in_window"), parameters))

    @staticmethod
    def _schedule_parameters(conversation_id: object, schedule_id: object) -> dict[str, uuid.UUID]:
        return {
            PARTITION_COLUMN: check.require_uuid(PARTITION_COLUMN, conversation_id),
            "schedule_id": check.require_uuid("schedule_id", schedule_id),
        }

    async def _finalize(self, key: _FireKey, values: dict[str, Any]) -> WakeFire:
        conversation_id, fire_id = key
        parameters = {"target_conversation_id": conversation_id, "target_fire_id": fire_id}
        parameters.update((f"new_{column}", value) for column, value in values.items())
        fire: WakeFire | None = await self._one_or_none(self._prebuilt(_FINALIZING[tuple(values)]), parameters)
        if fire is not None:
            return fire
        # The first finalization's result, as stored (get refreshes a copy
        # this session loaded while the fire was still dispatching).
        already_final = await self.get(conversation_id, fire_id)
        if already_final is None:
            raise NotFoundError(self.entity, conversation_id, fire_id)
        return already_final

    async def _finalize_batch(self, rows: list[tuple[_FireKey, dict[str, Any]]]) -> list[WakeFire]:
        if not rows:
            return []
        columns = tuple(rows[0][1])
        keys = [key for key, _ in rows]
        if len(set(keys)) != len(keys):
            raise InvalidInputError("outcomes", "names the same fire more than once")
        parameters: dict[str, list[Any]] = {
            "outcome_conversation_id": [conversation_id for conversation_id, _ in keys],
            "outcome_fire_id": [fire_id for _, fire_id in keys],
        }
        for column in columns:
            parameters[f"outcome_{column}"] = [values[column] for _, values in rows]
        return await self._all(self._prebuilt(_FINALIZING[columns] + "_batch"), parameters)


@dataclass(frozen=True)
class FireSuccess:
    """One outcome for :meth:`WakeFireRepository.finalize_success_batch`."""

    conversation_id: uuid.UUID
    fire_id: uuid.UUID
    status: enums.FireStatus
    output_text: str | None = None
    latency_ms: int | None = None
    display_suppressed: bool = False


@dataclass(frozen=True)
class FireFailure:
    """One outcome for :meth:`WakeFireRepository.finalize_failed_batch`."""

    conversation_id: uuid.UUID
    fire_id: uuid.UUID
    error: str
    latency_ms: int | None = None


_Outcome = TypeVar("_Outcome", FireSuccess, FireFailure)


def _require_outcomes(outcomes: object, kind: type[_Outcome]) -> list[_Outcome]:
    if not isinstance(outcomes, list | tuple):
        raise InvalidInputError("outcomes", f"must be a list of {kind.__name__}")
    for index, outcome in enumerate(outcomes):
        if not isinstance(outcome, kind):
            raise InvalidInputError(f"outcomes[{index}]", f"must be a {kind.__name__}")
    return list(outcomes)


def _fire_key(outcome: FireSuccess | FireFailure, prefix: str) -> _FireKey:
    return (
        check.require_uuid(f"{prefix}conversation_id", outcome.conversation_id),
        check.require_uuid(f"{prefix}fire_id", outcome.fire_id),
    )


def _statuses(statuses: Iterable[enums.FireStatus] | None) -> list[str]:
    if statuses is None:
        return list(enums.FIRE_STATUSES)
    return list(check.require_choices("statuses", statuses, enums.FIRE_STATUSES))


def _success_values(outcome: FireSuccess, prefix: str) -> tuple[_FireKey, dict[str, Any]]:
    return _fire_key(outcome, prefix), {
        "status": check.require_choice(f"{prefix}status", outcome.status, enums.FINAL_FIRE_STATUSES),
        # An agent may answer with nothing; "" is a real, empty output.
        "output_text": check.optional_text(
            f"{prefix}output_text", outcome.output_text, max_length=_MAX_OUTPUT_LENGTH, allow_empty=True
        ),
        "latency_ms": check.optional_int(f"{prefix}latency_ms", outcome.latency_ms, minimum=0, maximum=_MAX_LATENCY_MS),
        "display_suppressed": check.require_bool(f"{prefix}display_suppressed", outcome.display_suppressed),
    }


def _failure_values(outcome: FireFailure, prefix: str) -> tuple[_FireKey, dict[str, Any]]:
    return _fire_key(outcome, prefix), {
        "status": "failed",
        "error": check.require_text(f"{prefix}error", outcome.error, max_length=_MAX_OUTPUT_LENGTH),
        "latency_ms": check.optional_int(f"{prefix}latency_ms", outcome.latency_ms, minimum=0, maximum=_MAX_LATENCY_MS),
    }

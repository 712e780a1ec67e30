"""What the three repositories share: the per-conversation key, ``get``,
``list_for_conversation``, ``delete``, the conditional update of one row,
and the one rule for what a session holds.

**The rule.** Every write and every read returns the row as the database
holds it, and an object of that row that the session already holds is
overwritten with it (``populate_existing``). A write that matches no row
changes no held object. A delete removes the deleted row's held object from
the session and applies the reference layout's ``ON DELETE`` actions (which
the repositories' own statements reproduce on the re-keyed layout) to the
held objects that refer to it, without a round trip. Every database failure
leaves as an :class:`~agent_wake.errors.AgentWakeError`.

Reads flush the session's pending changes first (SQLAlchemy's autoflush),
so a caller's own unflushed change is sent before the read, and a failure
of that flush is raised by the read. With autoflush off, a read overwrites
unflushed changes to the objects it returns with the stored row.
"""

import uuid
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, ClassVar, Final, Generic, TypeVar

from sqlalchemy import Executable
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import attributes
from sqlalchemy.orm.util import identity_key

from agent_wake import _statements, row_security
from agent_wake import _validation as check
from agent_wake.errors import InvalidInputError, NotFoundError, StatusConflictError, translate_database_errors
from agent_wake.models import PARTITION_COLUMN, Base
from agent_wake.partition_guard import LibraryListener

_Model = TypeVar("_Model", bound=Base)

DEFAULT_LIST_LIMIT: Final = 200
# Where a repository statement's parameters name its conversations: one, the target of a
# conditional update, or one per row of a batch.
_CONVERSATION_PARAMETERS: Final = (PARTITION_COLUMN, f"target_{PARTITION_COLUMN}", f"outcome_{PARTITION_COLUMN}")


class PartitionedRepository(Generic[_Model]):
    """Base of the repositories: one row kind, keyed by (conversation_id, ``id_column``).

    Subclasses set ``model``, ``id_column``, ``entity`` (the noun used in
    errors) and ``statement_prefix`` (the prefix of their entries in
    :data:`agent_wake._statements.PREBUILT`).
    """

    model: ClassVar[type[Base]]
    id_column: ClassVar[str]
    entity: ClassVar[str]
    statement_prefix: ClassVar[str]

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, conversation_id: uuid.UUID, entity_id: uuid.UUID, /) -> _Model | None:
        """The row, or ``None`` when this conversation has none with this id. One SELECT."""
        found: _Model | None = await self._one_or_none(
            self._prebuilt("get"), self._key_parameters(conversation_id, entity_id)
        )
        return found

    async def list_for_conversation(
        self, conversation_id: uuid.UUID, /, *, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[_Model]:
        """The conversation's rows, newest first, at most ``limit`` (1 to 10,000). One SELECT."""
        parameters = {
            PARTITION_COLUMN: check.require_uuid(PARTITION_COLUMN, conversation_id),
            "limit": check.require_limit(limit),
        }
        return await self._all(self._prebuilt("list_for_conversation"), parameters)

    async def delete(self, conversation_id: uuid.UUID, entity_id: uuid.UUID, /) -> None:
        """Delete the row; refuses one this conversation does not have.

        One statement, one round trip: for a schedule or a webhook subscription
        it first clears, in the same conversation, the references the
        reference layout's ``ON DELETE SET NULL`` would clear (schedules taking
        context from it, fires it was the source of), so that it works on the
        re-keyed layout too, whose keys are ``NO ACTION``
        (:mod:`agent_wake.distribution`). The rows it clears stay locked until
        the transaction ends; a referring row another transaction writes
        meanwhile makes it fail on the re-keyed layout
        (:class:`~agent_wake.errors.ConstraintViolationError`).
        """
        key = self._key_parameters(conversation_id, entity_id)
        deleted = await self._scalar(self._prebuilt("delete"), {f"target_{name}": value for name, value in key.items()})
        if deleted is None:
            raise self._not_found(key)
        forget_deleted(self._session, self.model, self.id_column, key[PARTITION_COLUMN], {key[self.id_column]})

    def _prebuilt(self, name: str) -> Executable:
        return _statements.PREBUILT[f"{self.statement_prefix}.{name}"]

    def _key_parameters(self, conversation_id: object, entity_id: object) -> dict[str, uuid.UUID]:
        return {
            PARTITION_COLUMN: check.require_uuid(PARTITION_COLUMN, conversation_id),
            self.id_column: check.require_uuid(self.id_column, entity_id),
        }

    def _not_found(self, key: Mapping[str, uuid.UUID]) -> NotFoundError:
        return NotFoundError(self.entity, key[PARTITION_COLUMN], key[self.id_column])

    def _refuse_on_declaring_session(self, method: str) -> None:
        """The cross-conversation methods run as the maintenance role, whose sessions declare nothing."""
        if row_security.declares_conversations(self._session):
            raise InvalidInputError(
                "session",
                f"{method}() spans conversations: run it on a maintenance-role session, "
                "not one configured by use_row_security()",
            )

    async def _declare_named(self, parameters: Mapping[str, Any]) -> None:
        """Declare the conversations a statement's parameters name (when the session declares at all).

        Every repository statement names its conversations in one of these
        parameters; the cross-conversation ones name none and are refused on
        declaring sessions before they get here.
        """
        if not row_security.declares_conversations(self._session):
            return  # the common case: nothing to collect on every call
        named: list[uuid.UUID] = []
        for name in _CONVERSATION_PARAMETERS:
            value = parameters.get(name)
            if isinstance(value, uuid.UUID):
                named.append(value)
            elif isinstance(value, list):
                named.extend(value)
        if named:
            await row_security.declare_for_repository(self._session, named)

    async def _fetch_on_driver(self, name: str, values: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Run the prebuilt statement ``name`` in the session's transaction on its own driver
        connection, and return plain rows (the tick's path: no cursor layer, no ORM objects).

        Sent through SQLAlchemy (``exec_driver_sql``) instead while the driver has not begun the
        transaction (the dialect begins it lazily, with the first statement), and whenever the
        engine has event listeners of others, which may need SQLAlchemy's cursor and context.
        Otherwise agent-wake's own listeners (the partition guard, ``capture_sql``) are shown the
        statement, under its span. Refuses a session in AUTOCOMMIT: the claim's locks would not
        outlive each statement. Callers translate errors.
        """
        statement = _statements.for_driver(name)
        arguments = statement.arguments(values)
        connection = await self._session.connection()
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection  # asyncpg's Connection
        sync_connection = connection.sync_connection
        assert sync_connection is not None  # connected: the raw connection came from it
        if not driver.is_in_transaction() and getattr(raw.dbapi_connection, "autocommit", False):
            raise InvalidInputError("session", "must be in a transaction, not AUTOCOMMIT: the claim holds locks")
        listeners = list(sync_connection.dispatch.before_cursor_execute)
        others_listen = (
            not all(isinstance(listener, LibraryListener) for listener in listeners)
            or bool(list(sync_connection.dispatch.after_cursor_execute))
            or bool(list(sync_connection.dialect.dispatch.handle_error))
            or bool(sync_connection.engine.echo)
        )
        if others_listen or not driver.is_in_transaction():
            result = await connection.exec_driver_sql(
                statement.sql, tuple(arguments), execution_options=statement.execution_options
            )
            return result.all()
        with _statements.span_of(statement):
            for listener in listeners:
                listener(sync_connection, None, statement.sql, arguments, None, False)
        rows: Sequence[Sequence[Any]] = await driver.fetch(statement.sql, *arguments)
        return rows

    async def _one_or_none(self, statement: Executable, parameters: Mapping[str, Any]) -> Any:
        await self._declare_named(parameters)
        with translate_database_errors():
            return (await self._session.scalars(statement, parameters)).one_or_none()

    async def _all(self, statement: Executable, parameters: Mapping[str, Any]) -> list[Any]:
        await self._declare_named(parameters)
        with translate_database_errors():
            return list(await self._session.scalars(statement, parameters))

    async def _scalar(self, statement: Executable, parameters: Mapping[str, Any]) -> Any:
        await self._declare_named(parameters)
        with translate_database_errors():
            return (await self._session.execute(statement, parameters)).scalar_one_or_none()

    async def _insert(self, values: Mapping[str, Any]) -> _Model:
        """Insert the row ``values`` give (every column create() sets) and return it as stored. One INSERT."""
        inserted: _Model = await self._one_or_none(self._prebuilt("create"), values)
        return inserted

    async def _update_one(
        self, key: Mapping[str, uuid.UUID], statement: Executable, values: Mapping[str, Any], *, action: str
    ) -> _Model:
        """Run a :func:`~agent_wake._statements.conditional_update` of the row with ``values``.

        One UPDATE; when it matches nothing, one SELECT tells not-found from
        a status conflict, and refreshes a held copy with the stored status.
        """
        parameters = {f"target_{name}": value for name, value in key.items()}
        parameters.update((f"new_{column}", value) for column, value in values.items())
        updated: _Model | None = await self._one_or_none(statement, parameters)
        if updated is not None:
            return updated
        current = await self.get(key[PARTITION_COLUMN], key[self.id_column])
        if current is None:
            raise self._not_found(key)
        status = str(current.status)  # type: ignore[attr-defined]  # only rows with a status have conditions
        raise StatusConflictError(entity=self.entity, entity_id=key[self.id_column], action=action, status=status)

    def _held(self, model: type[Base], key: tuple[uuid.UUID, uuid.UUID]) -> Base | None:
        """The session's object of that row, if it holds one (no I/O)."""
        found = self._session.identity_map.get(identity_key(model, key))
        return found if isinstance(found, model) else None


def forget_deleted(
    session: AsyncSession, model: type[Base], id_column: str, conversation_id: uuid.UUID, ids: AbstractSet[uuid.UUID]
) -> None:
    """Apply a delete of the rows (``conversation_id``, each of ``ids``) of ``model`` to the
    session's held objects, as the database applied it to the rows.

    The deleted rows' objects leave the session; objects of the same
    conversation whose foreign key names one of them leave too (ON DELETE
    CASCADE) or get NULL there (SET NULL, or the repositories' clearing of
    those references on the re-keyed layout, which leaves every other column
    as it was). Objects of other conversations are left alone: on the
    re-keyed layout another conversation may hold the same id, and the
    references never cross conversations. An expired object of a referring
    table in the same conversation cannot be checked without I/O; it leaves
    the session (it holds no change: the next read loads it again). No I/O.
    """
    if not ids:
        return
    deleted_table = _statements.table_of(model)
    for entity_id in ids:
        deleted = session.identity_map.get(identity_key(model, (conversation_id, entity_id)))
        if deleted is not None:
            session.expunge(deleted)
    for held in list(session.identity_map.values()):
        state = attributes.instance_state(held)
        if state.identity is None or state.identity[0] != conversation_id:
            continue
        for foreign_key in state.mapper.local_table.foreign_keys:
            if foreign_key.column.table is not deleted_table or foreign_key.column.name != id_column:
                continue
            column = foreign_key.parent.key
            if column not in state.dict:
                session.expunge(held)
                break
            if state.dict[column] not in ids:
                continue
            if foreign_key.ondelete == "CASCADE":
                session.expunge(held)
                break
            attributes.set_committed_value(held, column, None)

"""What the three repositories share: the per-conversation key, ``get``,
``list_for_conversation``, ``delete``, the conditional update of one row,
and the one rule for what a session holds.

**The rule.** Every write and every read returns the row as the database
holds it, and an object of that row that the session already holds is
overwritten with it (``populate_existing``). A write that matches no row
changes no held object. A delete removes the deleted row's held object from
the session and applies the database's ``ON DELETE`` actions to the held
objects that refer to it, without a round trip. Every database failure
leaves as an :class:`~agent_wake.errors.AgentWakeError`.
"""

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Generic, TypeVar

from sqlalchemy import Executable, Table, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import attributes, object_mapper
from sqlalchemy.orm.util import identity_key

from agent_wake import _statements
from agent_wake import _validation as check
from agent_wake.errors import NotFoundError, StatusConflictError, translate_database_errors
from agent_wake.models import PARTITION_COLUMN, Base

_Model = TypeVar("_Model", bound=Base)

DEFAULT_LIST_LIMIT: Final = 200


class PartitionedRepository(Generic[_Model]):
    """Base of the repositories: one row kind, keyed by (conversation_id, ``id_column``).

    Subclasses set ``model``, ``id_column``, ``entity`` (the noun used in
    errors) and ``statements`` (the prefix of their entries in
    :data:`agent_wake._statements.PREBUILT`).
    """

    model: ClassVar[type[Base]]
    id_column: ClassVar[str]
    entity: ClassVar[str]
    statements: ClassVar[str]

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
        """Delete the row; refuses one this conversation does not have. One DELETE."""
        parameters = self._key_parameters(conversation_id, entity_id)
        with translate_database_errors():
            deleted = (await self._session.execute(self._prebuilt("delete"), parameters)).scalar_one_or_none()
        if deleted is None:
            raise self._not_found(parameters)
        self._forget_deleted(parameters[self.id_column])

    def _prebuilt(self, name: str) -> Executable:
        return _statements.PREBUILT[f"{self.statements}.{name}"]

    def _key_parameters(self, conversation_id: object, entity_id: object) -> dict[str, uuid.UUID]:
        return {
            PARTITION_COLUMN: check.require_uuid(PARTITION_COLUMN, conversation_id),
            self.id_column: check.require_uuid(self.id_column, entity_id),
        }

    def _not_found(self, key: Mapping[str, uuid.UUID]) -> NotFoundError:
        return NotFoundError(self.entity, key[PARTITION_COLUMN], key[self.id_column])

    async def _one_or_none(self, statement: Executable, parameters: Mapping[str, Any]) -> Any:
        with translate_database_errors():
            return (await self._session.scalars(statement, parameters)).one_or_none()

    async def _all(self, statement: Executable, parameters: Mapping[str, Any]) -> list[Any]:
        with translate_database_errors():
            return list(await self._session.scalars(statement, parameters))

    async def _scalar(self, statement: Executable, parameters: Mapping[str, Any]) -> Any:
        with translate_database_errors():
            return (await self._session.execute(statement, parameters)).scalar_one_or_none()

    async def _insert(self, row: _Model) -> _Model:
        """Insert ``row`` (the unit of work's INSERT ... RETURNING of the server defaults) and return it."""
        self._session.add(row)
        with translate_database_errors():
            await self._session.flush()
        return row

    async def _update_one(
        self,
        key: Mapping[str, uuid.UUID],
        values: Mapping[str, Any],
        *,
        action: str,
        allowed_statuses: Sequence[str] | None = None,
    ) -> _Model:
        """Set ``values`` on the row if its status is one of ``allowed_statuses`` (any, when None).

        One UPDATE; when it matches nothing, one SELECT tells not-found from
        a status conflict, and refreshes a held copy with the stored status.
        """
        table: Table = _statements.table_of(self.model)
        statement = update(table).where(
            table.c[PARTITION_COLUMN] == key[PARTITION_COLUMN], table.c[self.id_column] == key[self.id_column]
        )
        if allowed_statuses is not None:
            statement = statement.where(table.c.status.in_([_statements.constant(s) for s in allowed_statuses]))
        updated = await self._one_or_none(_statements.returning_rows(self.model, statement.values(**values)), {})
        if updated is not None:
            return updated  # type: ignore[no-any-return]
        current = await self.get(key[PARTITION_COLUMN], key[self.id_column])
        if current is None:
            raise self._not_found(key)
        raise StatusConflictError(
            entity=self.entity, entity_id=key[self.id_column], action=action, status=getattr(current, "status", "")
        )

    def _held(self, model: type[Base], key: tuple[uuid.UUID, uuid.UUID]) -> Base | None:
        """The session's object of that row, if it holds one (no I/O)."""
        found = self._session.identity_map.get(identity_key(model, key))
        return found if isinstance(found, model) else None

    def _forget_deleted(self, deleted_id: uuid.UUID) -> None:
        """Apply a delete to the held objects, as the database applied it to the rows.

        The deleted row's object leaves the session; objects whose foreign
        key names it leave too (ON DELETE CASCADE) or get NULL there (SET NULL).
        """
        deleted_table = _statements.table_of(self.model)
        for held in list(self._session.identity_map.values()):
            table = object_mapper(held).local_table
            state = attributes.instance_state(held)
            if table is deleted_table and state.dict.get(self.id_column) == deleted_id:
                self._session.expunge(held)
                continue
            for foreign_key in getattr(table, "foreign_keys", ()):
                if foreign_key.column.table is not deleted_table or foreign_key.column.name != self.id_column:
                    continue
                column = foreign_key.parent.key
                if state.dict.get(column) != deleted_id:
                    continue
                if foreign_key.ondelete == "CASCADE":
                    self._session.expunge(held)
                    break
                attributes.set_committed_value(held, column, None)

"""Writes that return the rows they wrote as ORM objects, without the ORM's DML machinery.

``update(Model).returning(Model)`` (ORM-enabled DML) runs SQLAlchemy's bulk
persistence path, which cost more client time than the rest of a
200-schedule ``claim_due`` together, and half of a single
``create_dispatching`` + ``finalize_success`` (tick benchmark). The same
RETURNING rows loaded with ``select(Model).from_statement(...)`` are a
plain ORM load. ``populate_existing`` refreshes an object the session
already holds, as ORM-enabled DML would.
"""

from typing import TypeVar, cast

from sqlalchemy import Table, select
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.selectable import TypedReturnsRows

from agent_wake.models import Base

_Model = TypeVar("_Model", bound=Base)


def table_of(model: type[Base]) -> Table:
    """The model's table, for Core DML statements the ORM does not intercept."""
    return cast(Table, model.__table__)


def returning_objects(model: type[_Model], statement: Insert | Update) -> TypedReturnsRows[_Model]:
    """``statement`` (Core DML on ``table_of(model)``) returning its rows as ``model`` objects."""
    loading = select(model).from_statement(statement.returning(*table_of(model).c))
    return cast(TypedReturnsRows[_Model], loading.execution_options(populate_existing=True))

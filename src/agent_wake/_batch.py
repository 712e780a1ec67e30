"""Rows for one-statement batch writes: ``unnest`` over one typed array per
column, usable as the FROM item of an ``UPDATE ... FROM``.

A batch of any size then costs one statement and one round trip, and the
statement text does not change with the batch size (one cached plan, one
partition-guard decision).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine


def unnest_rows(name: str, columns: Mapping[str, tuple[Sequence[Any], TypeEngine[Any]]]) -> TableValuedAlias:
    """``unnest($1::type1[], $2::type2[], ...) AS name(column1, column2, ...)``."""
    arrays = [literal(list(values), ARRAY(column_type)) for values, column_type in columns.values()]
    return func.unnest(*arrays).table_valued(*columns).render_derived(name=name)

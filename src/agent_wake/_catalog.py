"""The live shape of tables, read from PostgreSQL's catalog in the form its
own ``pg_get_*`` functions print, and the first way two shapes differ.

Adoption compares a database built by the older runner with the shape of
its step; the comparison is exact (names, types, defaults, constraint and
index definitions, validity), because the revisions that run next assume it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, text

__all__ = ["Column", "TableShape", "first_difference", "read_table_shapes", "relation_exists"]


@dataclass(frozen=True)
class Column:
    """One column as ``format_type`` and ``pg_get_expr`` print it."""

    name: str
    type: str
    nullable: bool
    default: str | None = None


@dataclass(frozen=True)
class TableShape:
    """A table's columns in order, its constraints and the indexes that back none of them.

    Definitions are ``pg_get_constraintdef`` / ``pg_get_indexdef`` text with
    the table's own schema left out; a constraint not validated ends in
    ``NOT VALID`` (as PostgreSQL prints it), an index not valid in ``INVALID``.
    """

    columns: tuple[Column, ...]
    constraints: Mapping[str, str]
    indexes: Mapping[str, str]


_COLUMNS = text(
    """
    SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
           pg_get_expr(d.adbin, d.adrelid)
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE n.nspname = :schema AND c.relname = ANY(:tables) AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY c.relname, a.attnum
    """
)
_CONSTRAINTS = text(
    """
    SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
    FROM pg_constraint k
    JOIN pg_class c ON c.oid = k.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = :schema AND c.relname = ANY(:tables)
      -- PostgreSQL 18 lists NOT NULL constraints here too; the columns already say NOT NULL.
      AND k.contype <> 'n'
    """
)
_INDEXES = text(
    """
    SELECT c.relname, i.relname, pg_get_indexdef(x.indexrelid), x.indisvalid
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class c ON c.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = :schema AND c.relname = ANY(:tables)
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.conrelid = x.indrelid)
    """
)


def relation_exists(connection: Connection, schema: str, name: str) -> bool:
    """Whether ``schema`` has a table (or view, sequence, index) named ``name``. One catalog query."""
    found = connection.execute(
        text(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = :name"
        ),
        {"schema": schema, "name": name},
    ).first()
    return found is not None


def read_table_shapes(connection: Connection, schema: str, tables: Iterable[str]) -> dict[str, TableShape]:
    """The shapes of those of ``tables`` that exist in ``schema``.

    Sets ``search_path`` to ``schema`` for the rest of the connection's
    transaction (``set_config(..., true)``), so that a foreign key's target
    in the same schema prints unqualified. Three catalog queries.
    """
    names = list(tables)
    connection.execute(text("SELECT set_config('search_path', :schema, true)"), {"schema": _quoted(schema)})
    parameters = {"schema": schema, "tables": names}
    columns: dict[str, list[Column]] = {}
    for table, name, type_, nullable, default in connection.execute(_COLUMNS, parameters):
        columns.setdefault(table, []).append(Column(name, type_, nullable, default))
    constraints: dict[str, dict[str, str]] = {table: {} for table in columns}
    for table, name, definition in connection.execute(_CONSTRAINTS, parameters):
        constraints[table][name] = definition
    indexes: dict[str, dict[str, str]] = {table: {} for table in columns}
    # pg_get_indexdef qualifies the table whatever the search_path says.
    qualified = f" ON {_quoted(schema)}."
    for table, name, definition, valid in connection.execute(_INDEXES, parameters):
        unqualified = definition.replace(qualified, " ON ", 1)
        indexes[table][name] = unqualified if valid else f"{unqualified} INVALID"
    return {
        table: TableShape(tuple(table_columns), constraints[table], indexes[table])
        for table, table_columns in columns.items()
    }


def _quoted(schema: str) -> str:
    # What PostgreSQL prints for the name: bare when it is a plain lower-case identifier.
    plain = schema.isidentifier() and schema == schema.lower() and schema.isascii()
    return schema if plain else '"' + schema.replace('"', '""') + '"'


def first_difference(expected: Mapping[str, TableShape], live: Mapping[str, TableShape]) -> str | None:
    """The first way ``live`` differs from ``expected``, in words, or ``None`` when they are the same."""
    for table in sorted(expected.keys() | live.keys()):
        if table not in live:
            return f"table {table} is missing"
        if table not in expected:
            return f"table {table} exists, and should not yet"
        difference = _table_difference(expected[table], live[table])
        if difference is not None:
            return f"table {table}: {difference}"
    return None


def _table_difference(expected: TableShape, live: TableShape) -> str | None:
    expected_columns = {column.name: column for column in expected.columns}
    live_columns = {column.name: column for column in live.columns}
    for name, column in expected_columns.items():
        if name not in live_columns:
            return f"column {name} is missing"
        if live_columns[name] != column:
            return f"column {name} is {_column_text(live_columns[name])}, expected {_column_text(column)}"
    for name in live_columns.keys() - expected_columns.keys():
        return f"column {name} exists, and should not"
    if list(live_columns) != list(expected_columns):
        return f"the columns are in the order {', '.join(live_columns)}, expected {', '.join(expected_columns)}"
    for kind, expected_definitions, live_definitions in (
        ("constraint", expected.constraints, live.constraints),
        ("index", expected.indexes, live.indexes),
    ):
        for name in sorted(expected_definitions.keys() | live_definitions.keys()):
            if name not in live_definitions:
                return f"{kind} {name} is missing"
            if name not in expected_definitions:
                return f"{kind} {name} exists, and should not"
            if live_definitions[name] != expected_definitions[name]:
                return f"{kind} {name} is {live_definitions[name]!r}, expected {expected_definitions[name]!r}"
    return None


def _column_text(column: Column) -> str:
    default = f" DEFAULT {column.default}" if column.default is not None else ""
    return f"{column.type}{'' if column.nullable else ' NOT NULL'}{default}"

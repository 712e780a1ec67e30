"""Whether a statement's SQL text is confined to given partitions: the pure
analysis behind the partition guard, with no engine and no database.

It reads the text with PostgreSQL's own parser (``pglast``) and walks every
node of every statement, whatever its type (a query can sit in a CALL's
arguments, a PREPARE, an EXPLAIN, a COPY, a view's or a rule's definition,
a function's ``BEGIN ATOMIC`` body, a column default...), deciding against
a :class:`ScopeRules` and failing closed:

- every entry of a guarded table in a FROM list (a SELECT's at any depth,
  ``UPDATE ... FROM``, ``DELETE ... USING``, the target of UPDATE and
  DELETE) must have its partition column pinned by a top-level AND conjunct
  of the WHERE clause at its own level: ``= value``, ``IN (values)`` or
  ``= ANY(array)``, where a value is a bind parameter or a constant and
  ``=`` is PostgreSQL's own (written bare or ``OPERATOR(pg_catalog.=)``);
- a pin counts only for the entry PostgreSQL binds it to: a bare column
  when the level has a single entry; ``name.column`` for the one entry
  called ``name`` at that level (its alias, else its table name);
  ``schema.table.column`` for an entry written unaliased with that same
  schema. What only the catalog could resolve is refused: a schema-qualified
  pin on an entry written otherwise, two entries of one name, an entry
  hidden inside an aliased join, a ``database.schema.table.column`` pin.
  Which relation an entry's name resolves to does not matter (``pg_temp``,
  an agent schema, ``public``): the pin restricts the rows of whichever it is;
- a guarded table may not be aliased with column names (``AS w(a, b, ...)``
  would give another column the partition column's name);
- an INSERT must name the partition column in its column list; neither an
  UPDATE nor ``ON CONFLICT DO UPDATE`` may set it, and ``DO UPDATE`` needs a
  conflict target that includes it: its columns, or one of the
  partitioned constraints by name;
- TRUNCATE, LOCK, MERGE and COPY of a guarded table, every DO block,
  every EXECUTE of a prepared statement and every FETCH or MOVE of a cursor
  (what they run was checked, if at all, when it was prepared or declared,
  perhaps inside a span), and reads of the planner's statistics
  (``pg_stats`` and kin hold sample values of every conversation) are
  refused;
- so are the functions that run SQL given as text or return rows of tables
  the statement does not name (:data:`_ROW_RETURNING_FUNCTIONS`), matched
  by name however they are qualified or reached: called, written as a
  field (``(text).ts_stat`` is ``ts_stat(text)``), or named in DDL that
  would bind them to an operator, an aggregate or a cast;
- text the parser cannot read as SQL (a statement that does not parse, a
  function body given as a string) is refused when it might name a guarded
  table, and a function body also when it names one of those functions.

The decision holds for the text as the server reads it when
``standard_conforming_strings`` is on and ``client_encoding`` is UTF8, as
pglast reads it; :func:`reading_depends_on_settings` tells when other
settings could make the server read it otherwise. DDL is checked only for
the queries and expressions it holds (a view over a wake table must pin it
like any query); what views, rules, operators and functions that exist
already do is out of its sight.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType, OnConflictAction
from pglast.parser import ParseError

_DECISION_CACHE_SIZE: Final = 4096
# Built-ins of PostgreSQL 15 that run a query given as text or dump tables
# named at run time (found in pg_proc and PostgreSQL's sources: xml.c,
# tsvector_op.c, tsquery_rewrite.c), the logical decoding functions (the
# rows every transaction wrote), and the contrib modules' equivalents
# (tablefunc, xml2; dblink, every function of which is refused by its
# prefix). Matched by name whatever the signature: telling overloads apart
# (ts_rewrite's three-tsquery form runs nothing) needs the catalog.
_ROW_RETURNING_FUNCTIONS: Final = frozenset(
    {
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_binary_changes",
        "crosstab",
        "crosstab2",
        "crosstab3",
        "crosstab4",
        "connectby",
        "xpath_table",
        "dblink",
    }
)
_DBLINK_PREFIX: Final = "dblink_"
# The planner's statistics: most common values and histograms of every column.
_STATISTICS_RELATIONS: Final = frozenset(
    {"pg_statistic", "pg_stats", "pg_statistic_ext_data", "pg_stats_ext", "pg_stats_ext_exprs"}
)
_EQUALS: Final = "="
_CATALOG_SCHEMA: Final = "pg_catalog"


# Compared and hashed by identity: decisions are cached by statement and
# rules, and hashing the three fields on every call would about double the
# cost of a cached decision. The guard builds its one rules object at import.
@dataclass(frozen=True, eq=False)
class ScopeRules:
    """What to guard: the partitioned tables, the column they are partitioned
    by, and the unique constraints (primary keys included) that contain it."""

    tables: frozenset[str]
    partition_column: str
    partitioned_constraints: frozenset[str]


@dataclass(frozen=True)
class Refusal:
    """Why a statement is refused: the guarded table it concerns (``"(any)"``
    when it cannot be known, ``"(unknown)"`` when the text cannot be read)
    and the problem, in words."""

    table: str
    problem: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What the analysis makes of one statement's text: the :class:`Refusal`
    it earns (None when it is allowed), and whether the server could read it
    otherwise under other settings (:func:`reading_depends_on_settings`)."""

    refusal: Refusal | None
    reading_depends_on_settings: bool


@lru_cache(maxsize=_DECISION_CACHE_SIZE)
def decide(sql: str, rules: ScopeRules) -> Decision:
    """The :class:`Decision` on ``sql`` under ``rules``.

    Each distinct statement is parsed once; a repeated one costs a
    dictionary lookup.
    """
    return Decision(refusal(sql, rules), reading_depends_on_settings(sql))


def refusal(sql: str, rules: ScopeRules) -> Refusal | None:
    """The first rule of the module docstring that ``sql`` breaks under ``rules``, or None.

    Parses ``sql`` on every call: the guard goes through :func:`decide`, which caches.
    """
    # Even a statement that names no guarded table is parsed: a table name
    # can be built at run time (EXECUTE 'wake' || '_fires'), so no text
    # search can tell which statements are safe to skip.
    try:
        statements = parse_sql(sql)
    except ParseError:
        if _guarded_name_in_text(sql, rules) is not None:
            return Refusal("(unknown)", "the statement cannot be parsed, so its scope cannot be checked")
        return None  # PostgreSQL will refuse it too, and it names no guarded table
    for raw in statements:
        for node in _walk(raw.stmt):
            found = _check(node, rules)
            if found is not None:
                return found
    return None


def reading_depends_on_settings(sql: str) -> bool:
    """Whether the server could read ``sql`` otherwise than pglast under other
    settings: when it holds a backslash or a character outside ASCII.

    Only string literals with backslashes change with
    ``standard_conforming_strings`` (and ``backslash_quote``), and only bytes
    outside ASCII change with ``client_encoding``: every encoding PostgreSQL
    speaks reads ASCII as ASCII, while the UTF-8 bytes of a character read
    as SJIS, BIG5, GBK or GB18030 can swallow the backslash after them.
    Costs a scan of the text for one character.
    """
    return not sql.isascii() or "\\" in sql


def _walk(node: Any) -> Iterator[Any]:
    """Every node under ``node``, ``node`` included, depth first."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple | list):
            stack.extend(current)
        elif isinstance(current, ast.Node):
            yield current
            stack.extend(getattr(current, slot) for slot in current.__slots__)  # type: ignore[attr-defined]


def _check(node: ast.Node, rules: ScopeRules) -> Refusal | None:
    """The refusal a single node earns on its own (a query level, a call, a statement), or None."""
    column = rules.partition_column
    if isinstance(node, ast.SelectStmt):
        return _check_level((), node.fromClause, node.whereClause, rules)
    if isinstance(node, ast.UpdateStmt):
        if _is_guarded(node.relation, rules) and _sets_partition_column(node.targetList, rules):
            return Refusal(_relname(node.relation), f"an UPDATE must not change {column}")
        return _check_level((node.relation,), node.fromClause, node.whereClause, rules)
    if isinstance(node, ast.DeleteStmt):
        return _check_level((node.relation,), node.usingClause, node.whereClause, rules)
    if isinstance(node, ast.InsertStmt) and _is_guarded(node.relation, rules):
        return _check_insert(node, rules)
    if isinstance(node, ast.FuncCall):
        return _check_function_name(_last_name(node.funcname), "()")
    if isinstance(node, ast.ColumnRef):
        # t.f is f(t) when t has no column f: a function hides in a field name.
        return _check_field_names(node.fields[1:] if node.fields else ())
    if isinstance(node, ast.A_Indirection):
        return _check_field_names(node.indirection)
    if isinstance(node, ast.ObjectWithArgs | ast.TypeName):
        # DDL names a function this way to bind it to an operator, an
        # aggregate or a cast, which then calls it under another name.
        names = node.objname if isinstance(node, ast.ObjectWithArgs) else node.names
        return _check_function_name(_last_name(names), " (named in DDL)")
    if isinstance(node, ast.RangeVar):
        return _check_range_var(node, rules)
    if isinstance(node, ast.TruncateStmt | ast.LockStmt):
        table = next(_guarded_names_in(node, rules), None)
        kind = type(node).__name__.removesuffix("Stmt").upper()
        return Refusal(table, f"{kind} spans every conversation") if table is not None else None
    if isinstance(node, ast.MergeStmt):
        table = next(_guarded_names_in(node, rules), None)
        return Refusal(table, "MERGE cannot be checked") if table is not None else None
    if isinstance(node, ast.CopyStmt) and _is_guarded(node.relation, rules):
        return Refusal(_relname(node.relation), "COPY of a whole table spans every conversation")
    if isinstance(node, ast.DoStmt):
        # Its body can build any SQL at run time (EXECUTE 'wake' || '_fires').
        return Refusal("(any)", "a DO block cannot be checked; run it inside spans_partitions(reason)")
    if isinstance(node, ast.ExecuteStmt):
        return Refusal(
            "(any)",
            "EXECUTE runs a statement prepared earlier, perhaps inside a span; run it inside spans_partitions(reason)",
        )
    if isinstance(node, ast.FetchStmt):
        return Refusal(
            "(any)",
            "FETCH and MOVE read a cursor declared earlier, perhaps inside a span; "
            "run them inside spans_partitions(reason)",
        )
    if isinstance(node, ast.CreateFunctionStmt):
        return _check_function_body(node, rules)
    return None


def _check_insert(node: ast.InsertStmt, rules: ScopeRules) -> Refusal | None:
    column = rules.partition_column
    table = _relname(node.relation)
    if column not in {target.name for target in node.cols or ()}:
        return Refusal(table, f"an INSERT must name {column} in its column list")
    conflict = node.onConflictClause
    if conflict is not None and conflict.action == OnConflictAction.ONCONFLICT_UPDATE:
        if _sets_partition_column(conflict.targetList, rules):
            return Refusal(table, f"ON CONFLICT DO UPDATE must not change {column}")
        if not _conflict_target_includes_partition(conflict.infer, rules):
            # A target of an id alone would update the row of whichever
            # partition already holds that id.
            return Refusal(table, f"ON CONFLICT DO UPDATE needs a conflict target that includes {column}")
    return None


def _check_function_name(name: str, shown_as: str) -> Refusal | None:
    if name in _ROW_RETURNING_FUNCTIONS or name.startswith(_DBLINK_PREFIX):
        return Refusal("(any)", f"{name}{shown_as} runs SQL or returns rows the guard cannot see")
    return None


def _check_field_names(fields: Any) -> Refusal | None:
    for field in fields or ():
        if isinstance(field, ast.String):
            found = _check_function_name((field.sval or "").lower(), " (a function called as a field)")
            if found is not None:
                return found
    return None


def _check_range_var(node: ast.RangeVar, rules: ScopeRules) -> Refusal | None:
    if _is_guarded(node, rules) and node.alias is not None and node.alias.colnames:
        # AS w(a, b, <partition column>) would give another column the partition column's name.
        return Refusal(_relname(node), "an alias may not rename the columns of a wake table")
    if node.relname in _STATISTICS_RELATIONS:
        return Refusal(
            "(any)",
            f"{node.relname} holds sample values of every conversation's rows; read it inside spans_partitions(reason)",
        )
    return None


def _check_function_body(node: ast.CreateFunctionStmt, rules: ScopeRules) -> Refusal | None:
    """A body given as a string is not parsed (its language may not be SQL);
    a ``BEGIN ATOMIC`` body is parsed, and the walk checks it."""
    for option in node.options or ():
        if isinstance(option, ast.DefElem) and option.defname == "as":
            body = " ".join(part.sval or "" for part in option.arg or () if isinstance(part, ast.String))
            table = _guarded_name_in_text(body, rules)
            if table is not None:
                return Refusal(table, "a function body given as text cannot be checked, and it names a wake table")
            lowered = body.lower()
            function = next((name for name in sorted(_ROW_RETURNING_FUNCTIONS) if name in lowered), None)
            if function is not None:
                return Refusal("(any)", f"a function body given as text cannot be checked, and it calls {function}")
    return None


def _guarded_name_in_text(text: str, rules: ScopeRules) -> str | None:
    """A guarded table the text might name, read as plain text: ``"(unknown)"``
    for a ``U&"..."`` identifier, which can spell a name with escapes."""
    lowered = text.lower()
    found = next((table for table in sorted(rules.tables) if table in lowered), None)
    if found is None and "u&" in lowered:
        return "(unknown)"
    return found


def _is_guarded(node: object, rules: ScopeRules) -> bool:
    return isinstance(node, ast.RangeVar) and node.relname in rules.tables


def _relname(node: object) -> str:
    return str(node.relname) if isinstance(node, ast.RangeVar) else "(unknown)"


def _guarded_names_in(node: ast.Node, rules: ScopeRules) -> Iterator[str]:
    for child in _walk(node):
        if _is_guarded(child, rules):
            yield _relname(child)


def _conflict_target_includes_partition(infer: Any, rules: ScopeRules) -> bool:
    if infer is None:
        return False
    if infer.conname is not None:
        return str(infer.conname) in rules.partitioned_constraints
    return any(getattr(element, "name", None) == rules.partition_column for element in infer.indexElems or ())


def _last_name(names: Any) -> str:
    last = names[-1] if names else None
    return (last.sval or "").lower() if isinstance(last, ast.String) else ""


def _sets_partition_column(targets: Any, rules: ScopeRules) -> bool:
    return any(target.name == rules.partition_column for target in targets or ())


@dataclass(frozen=True)
class _Entry:
    """A relation of a FROM list, as PostgreSQL's name resolution sees it."""

    node: object
    hidden: bool  # inside a join with an alias: no name reaches it


def _range_entries(from_items: Sequence[Any]) -> tuple[list[_Entry], list[str]]:
    """The relations of a FROM list at this query level (through joins, not
    into subqueries) and the names a qualified column can reach them by."""
    entries: list[_Entry] = []
    names: list[str] = []
    stack = [(item, False) for item in reversed(from_items)]  # popped in the order written
    while stack:
        item, hidden = stack.pop()
        if isinstance(item, ast.JoinExpr):
            for alias in (item.alias, item.join_using_alias):
                if alias is not None and not hidden:
                    names.append(str(alias.aliasname))
            inner_hidden = hidden or item.alias is not None
            stack.extend(((item.rarg, inner_hidden), (item.larg, inner_hidden)))
        elif isinstance(item, ast.RangeTableSample):
            stack.append((item.relation, hidden))
        else:
            entries.append(_Entry(item, hidden))
            name = _reference_name(item)
            if name is not None and not hidden:
                names.append(name)
    return entries, names


def _reference_name(item: object) -> str | None:
    alias = getattr(item, "alias", None)
    if isinstance(alias, ast.Alias):
        return str(alias.aliasname)
    return str(item.relname) if isinstance(item, ast.RangeVar) else None


def _check_level(targets: Sequence[Any], from_items: Any, where: Any, rules: ScopeRules) -> Refusal | None:
    entries, names = _range_entries([*targets, *(from_items or ())])
    guarded = [entry for entry in entries if _is_guarded(entry.node, rules)]
    if not guarded:
        return None
    pins = _pinned_qualifiers(where, rules)
    for entry in guarded:
        table = _relname(entry.node)
        if entry.hidden:
            return Refusal(table, "a join with an alias hides the wake table's name, so no pin can reach it")
        if not _is_pinned(entry.node, pins, len(entries), names):
            name = _reference_name(entry.node)
            return Refusal(
                table,
                f"the WHERE clause does not pin {name}.{rules.partition_column} to given values "
                "with a top-level AND (= value, IN (values) or = ANY(array))",
            )
    return None


def _is_pinned(node: Any, pins: set[tuple[str, ...]], entry_count: int, names: list[str]) -> bool:
    """Whether a pin reaches this entry the way PostgreSQL resolves column references."""
    if () in pins and entry_count == 1:
        return True
    name = _reference_name(node)
    if name is not None and (name,) in pins and names.count(name) == 1:
        return True
    # schema.table.column names the unaliased entry of that relation; an
    # entry written without the schema could be another relation of that name.
    return node.alias is None and node.schemaname is not None and (node.schemaname, node.relname) in pins


def _conjuncts(where: Any) -> Iterator[object]:
    if where is None:
        return
    if isinstance(where, ast.BoolExpr) and where.boolop == BoolExprType.AND_EXPR:
        for argument in where.args or ():
            yield from _conjuncts(argument)
    else:
        yield where


def _pinned_qualifiers(where: Any, rules: ScopeRules) -> set[tuple[str, ...]]:
    """The qualifiers (``()`` bare, ``(name,)``, ``(schema, table)``) of the
    partition column references that a conjunct of ``where`` pins."""
    pinned: set[tuple[str, ...]] = set()
    for conjunct in _conjuncts(where):
        if not isinstance(conjunct, ast.A_Expr) or not _is_builtin_equals(conjunct.name):
            continue
        for column, other in ((conjunct.lexpr, conjunct.rexpr), (conjunct.rexpr, conjunct.lexpr)):
            qualifier = _partition_column_qualifier(column, rules)
            if qualifier is None:
                continue
            if conjunct.kind == A_Expr_Kind.AEXPR_OP and _is_value(other):
                pinned.add(qualifier)
            elif conjunct.kind == A_Expr_Kind.AEXPR_IN and column is conjunct.lexpr:
                if isinstance(other, tuple | list) and all(_is_value(item) for item in other):
                    pinned.add(qualifier)
            elif conjunct.kind == A_Expr_Kind.AEXPR_OP_ANY and column is conjunct.lexpr and _is_array_value(other):
                pinned.add(qualifier)
    return pinned


def _is_builtin_equals(names: Any) -> bool:
    """``=`` or ``OPERATOR(pg_catalog.=)``: an ``=`` of another schema can mean anything."""
    parts = [name.sval for name in names or () if isinstance(name, ast.String)]
    return parts in ([_EQUALS], [_CATALOG_SCHEMA, _EQUALS])


def _partition_column_qualifier(node: Any, rules: ScopeRules) -> tuple[str, ...] | None:
    """The qualifier of a partition column reference of up to three parts, else None."""
    if not isinstance(node, ast.ColumnRef):
        return None
    fields = node.fields or ()
    if not 1 <= len(fields) <= 3 or not all(isinstance(field, ast.String) for field in fields):
        return None
    if fields[-1].sval != rules.partition_column:
        return None
    return tuple(str(field.sval) for field in fields[:-1])


def _is_value(node: Any) -> bool:
    if isinstance(node, ast.TypeCast):
        return _is_value(node.arg)
    return isinstance(node, ast.ParamRef | ast.A_Const)


def _is_array_value(node: Any) -> bool:
    if isinstance(node, ast.TypeCast):
        return _is_array_value(node.arg)
    if isinstance(node, ast.A_ArrayExpr):
        return all(_is_value(element) for element in node.elements or ())
    return _is_value(node)

"""Whether a statement's SQL text is confined to given partitions: the pure
analysis behind the partition guard, with no engine and no database.

It reads the text with PostgreSQL's own parser (``pglast``) and decides
against a :class:`ScopeRules`, failing closed:

- every reference to a guarded table in a SELECT, UPDATE or DELETE (joins,
  subqueries, CTEs, ``UPDATE ... FROM``, ``DELETE ... USING`` included)
  must have its partition column pinned by a top-level AND conjunct of the
  WHERE clause at its own level: ``= value``, ``IN (values)`` or
  ``= ANY(array)``, where a value is a bind parameter or a constant;
- a guarded table may not be aliased with column names (``AS w(a, b, ...)``
  would give another column the partition column's name);
- an INSERT must name the partition column in its column list; neither an
  UPDATE nor ``ON CONFLICT DO UPDATE`` may set it, and ``DO UPDATE`` needs a
  conflict target that includes it: its columns, or one of the
  partitioned constraints by name;
- TRUNCATE, LOCK, MERGE and COPY of a guarded table, every DO block, and the
  built-ins that run SQL given as text (``query_to_xml``, ``dblink``, ...)
  are refused;
- text that does not parse is refused when it might name a guarded table.

DDL is not checked, and what views, rules and functions do inside is out of
its sight.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType, OnConflictAction
from pglast.parser import ParseError

_DECISION_CACHE_SIZE: Final = 4096
# Built-ins that run a query given as text, or dump a table named at run time.
_SQL_RUNNING_FUNCTIONS: Final = frozenset(
    {
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        "dblink",
        "dblink_exec",
        "dblink_send_query",
    }
)
_CHECKED_STATEMENTS: Final = (
    ast.SelectStmt,
    ast.InsertStmt,
    ast.UpdateStmt,
    ast.DeleteStmt,
    ast.ExplainStmt,
    ast.CreateTableAsStmt,
    ast.DeclareCursorStmt,
    ast.PrepareStmt,
    ast.CopyStmt,
)


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
    when it cannot be known, ``"(unknown)"`` when the text does not parse)
    and the problem, in words."""

    table: str
    problem: str


@lru_cache(maxsize=_DECISION_CACHE_SIZE)
def refusal(sql: str, rules: ScopeRules) -> Refusal | None:
    """The first rule of the module docstring that ``sql`` breaks under ``rules``, or None.

    Each distinct statement is parsed once; a repeated one costs a
    dictionary lookup.
    """
    # Even a statement that names no guarded table is parsed: a table name
    # can be built at run time (EXECUTE 'wake' || '_fires'), so no text
    # search can tell which statements are safe to skip.
    try:
        statements = parse_sql(sql)
    except ParseError:
        if _might_name_a_guarded_table(sql, rules):
            return Refusal("(unknown)", "the statement cannot be parsed, so its scope cannot be checked")
        return None  # PostgreSQL will refuse it too, and it names no guarded table
    for raw in statements:
        if raw.stmt is not None:
            found = _check_top_level(raw.stmt, rules)
            if found is not None:
                return found
    return None


def _might_name_a_guarded_table(sql: str, rules: ScopeRules) -> bool:
    lowered = sql.lower()
    # A U&"..." identifier can spell a table name with escapes; parse those.
    return "u&" in lowered or any(table in lowered for table in rules.tables)


def _check_top_level(statement: ast.Node, rules: ScopeRules) -> Refusal | None:
    if isinstance(statement, ast.TruncateStmt | ast.MergeStmt | ast.LockStmt):
        table = next(_guarded_names_in(statement, rules), None)
        if table is not None:
            kind = type(statement).__name__.removesuffix("Stmt").upper()
            return Refusal(table, f"{kind} spans every conversation")
        return None
    if isinstance(statement, ast.DoStmt):
        # Its body can build any SQL at run time (EXECUTE 'wake' || '_fires').
        return Refusal("(any)", "a DO block cannot be checked; run it inside spans_partitions(reason)")
    if isinstance(statement, ast.CopyStmt) and _is_guarded(statement.relation, rules):
        return Refusal(_relname(statement.relation), "COPY of a whole table spans every conversation")
    if not isinstance(statement, _CHECKED_STATEMENTS):
        return None
    for node in _walk(statement):
        found = _check_level(node, rules)
        if found is not None:
            return found
    return None


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


def _is_guarded(node: object, rules: ScopeRules) -> bool:
    return isinstance(node, ast.RangeVar) and node.relname in rules.tables


def _relname(node: object) -> str:
    return str(node.relname) if isinstance(node, ast.RangeVar) else "(unknown)"


def _guarded_names_in(node: ast.Node, rules: ScopeRules) -> Iterator[str]:
    for child in _walk(node):
        if _is_guarded(child, rules):
            yield _relname(child)


def _check_level(node: ast.Node, rules: ScopeRules) -> Refusal | None:
    column = rules.partition_column
    if isinstance(node, ast.MergeStmt):
        table = next(_guarded_names_in(node, rules), None)
        return Refusal(table, "MERGE cannot be checked") if table is not None else None
    if isinstance(node, ast.FuncCall) and _function_name(node) in _SQL_RUNNING_FUNCTIONS:
        return Refusal("(any)", f"{_function_name(node)}() runs SQL the guard cannot see")
    if isinstance(node, ast.RangeVar) and _is_guarded(node, rules) and node.alias is not None and node.alias.colnames:
        # AS w(a, b, <partition column>) would give another column the partition column's name.
        return Refusal(_relname(node), "an alias may not rename the columns of a wake table")
    if isinstance(node, ast.SelectStmt):
        return _check_scoped(list(_range_leaves(node.fromClause)), node.whereClause, rules)
    if isinstance(node, ast.UpdateStmt):
        if _is_guarded(node.relation, rules) and _sets_partition_column(node.targetList, rules):
            return Refusal(_relname(node.relation), f"an UPDATE must not change {column}")
        return _check_scoped([node.relation, *_range_leaves(node.fromClause)], node.whereClause, rules)
    if isinstance(node, ast.DeleteStmt):
        return _check_scoped([node.relation, *_range_leaves(node.usingClause)], node.whereClause, rules)
    if isinstance(node, ast.InsertStmt) and _is_guarded(node.relation, rules):
        table = _relname(node.relation)
        columns = {target.name for target in node.cols or ()}
        if column not in columns:
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


def _conflict_target_includes_partition(infer: Any, rules: ScopeRules) -> bool:
    if infer is None:
        return False
    if infer.conname is not None:
        return str(infer.conname) in rules.partitioned_constraints
    return any(getattr(element, "name", None) == rules.partition_column for element in infer.indexElems or ())


def _function_name(call: ast.FuncCall) -> str:
    names = call.funcname or ()
    last = names[-1] if names else None
    return (last.sval or "").lower() if isinstance(last, ast.String) else ""


def _range_leaves(from_items: Any) -> Iterator[object]:
    """The relations of a FROM list at this query level, through joins but not into subqueries."""
    stack = list(from_items or ())
    while stack:
        item = stack.pop()
        if isinstance(item, ast.JoinExpr):
            stack.extend((item.larg, item.rarg))
        elif isinstance(item, ast.RangeTableSample):
            stack.append(item.relation)
        else:
            yield item


def _sets_partition_column(targets: Any, rules: ScopeRules) -> bool:
    return any(target.name == rules.partition_column for target in targets or ())


def _check_scoped(leaves: list[object], where: Any, rules: ScopeRules) -> Refusal | None:
    guarded = [leaf for leaf in leaves if isinstance(leaf, ast.RangeVar) and _is_guarded(leaf, rules)]
    if not guarded:
        return None
    pinned = _pinned_qualifiers(where, rules)
    for reference in guarded:
        table = _relname(reference)
        name = reference.alias.aliasname if reference.alias is not None else table
        unqualified_is_this = None in pinned and len(leaves) == 1
        if name not in pinned and not unqualified_is_this:
            return Refusal(
                table,
                f"the WHERE clause does not pin {name}.{rules.partition_column} to given values "
                "with a top-level AND (= value, IN (values) or = ANY(array))",
            )
    return None


def _conjuncts(where: Any) -> Iterator[object]:
    if where is None:
        return
    if isinstance(where, ast.BoolExpr) and where.boolop == BoolExprType.AND_EXPR:
        for argument in where.args or ():
            yield from _conjuncts(argument)
    else:
        yield where


def _pinned_qualifiers(where: Any, rules: ScopeRules) -> set[str | None]:
    """Qualifiers (table or alias; None when unqualified) whose partition column a conjunct pins."""
    pinned: set[str | None] = set()
    for conjunct in _conjuncts(where):
        if not isinstance(conjunct, ast.A_Expr) or _operator(conjunct) != "=":
            continue
        for column, other in ((conjunct.lexpr, conjunct.rexpr), (conjunct.rexpr, conjunct.lexpr)):
            qualifier = _partition_column_qualifier(column, rules)
            if qualifier is False:
                continue
            if conjunct.kind == A_Expr_Kind.AEXPR_OP and _is_value(other):
                pinned.add(qualifier)
            elif conjunct.kind == A_Expr_Kind.AEXPR_IN and column is conjunct.lexpr:
                if isinstance(other, tuple | list) and all(_is_value(item) for item in other):
                    pinned.add(qualifier)
            elif conjunct.kind == A_Expr_Kind.AEXPR_OP_ANY and column is conjunct.lexpr and _is_array_value(other):
                pinned.add(qualifier)
    return pinned


def _operator(expression: ast.A_Expr) -> str | None:
    names = expression.name or ()
    last = names[-1] if names else None
    return last.sval if isinstance(last, ast.String) else None


def _partition_column_qualifier(node: Any, rules: ScopeRules) -> str | Literal[False] | None:
    """The qualifier of a partition column reference, None when bare, False for any other expression."""
    if not isinstance(node, ast.ColumnRef):
        return False
    fields = node.fields
    if not fields or not isinstance(fields[-1], ast.String) or fields[-1].sval != rules.partition_column:
        return False
    if len(fields) == 1:
        return None
    qualifier = fields[-2]
    return qualifier.sval if isinstance(qualifier, ast.String) else False


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

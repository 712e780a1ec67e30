"""The partition guard: refuse, before it runs, any statement on the wake
tables that is not confined to given conversations.

The repositories already scope every query; the guard is the second
defence, for code that does not go through them. It hooks an engine's
``before_cursor_execute`` event, so it sees the SQL actually sent (ORM
queries, flushes, bulk UPDATE/DELETE, Core and ``text()`` alike), parses it
with PostgreSQL's own parser (``pglast``) and fails closed:

- every reference to ``agent_wake_schedules``, ``wake_fires`` or
  ``webhook_subscriptions`` in a SELECT, UPDATE or DELETE (joins,
  subqueries, CTEs, ``UPDATE ... FROM``, ``DELETE ... USING`` included)
  must have its ``conversation_id`` pinned by a top-level AND conjunct of
  the WHERE clause at its own level: ``= value``, ``IN (values)`` or
  ``= ANY(array)``, where a value is a bind parameter or a constant;
- a wake table may not be aliased with column names (``AS w(a, b, ...)``
  would give another column the name ``conversation_id``);
- an INSERT must name ``conversation_id`` in its column list; neither an
  UPDATE nor ``ON CONFLICT DO UPDATE`` may set it, and ``DO UPDATE`` needs a
  conflict target that includes it;
- TRUNCATE, LOCK, MERGE and COPY of a wake table, every DO block, and the
  built-ins that run SQL given as text (``query_to_xml``, ``dblink``, ...)
  are refused. DDL is not checked, and what views, rules and functions do
  inside is out of its sight.

Cross-partition work runs inside :func:`spans_partitions`, with a reason
that is logged at DEBUG with the statement. Decisions are cached by
statement text, so a repeated statement costs a dictionary lookup.
"""

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal
from weakref import WeakKeyDictionary

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType, OnConflictAction
from pglast.parser import ParseError
from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_wake.errors import InvalidInputError, PartitionScopeError

__all__ = [
    "GUARDED_TABLES",
    "GuardMode",
    "PartitionSpan",
    "install_partition_guard",
    "spans_partitions",
]

GUARDED_TABLES: Final = frozenset({"agent_wake_schedules", "wake_fires", "webhook_subscriptions"})
_PARTITION_COLUMN: Final = "conversation_id"
# The execution option that carries a spans_partitions reason.
_SPAN_OPTION: Final = "agent_wake_spans_partitions"
_GUARD_MODES: Final = ("raise", "warn", "off")
_DECISION_CACHE_SIZE: Final = 4096
_READABLE_PARAMSTYLE: Final = "numeric_dollar"
# Unique constraints that lead with conversation_id: a safe ON CONFLICT target.
_PARTITIONED_CONSTRAINTS: Final = frozenset(
    {"agent_wake_schedules_pkey", "wake_fires_pkey", "webhook_subscriptions_pkey"}
)
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

GuardMode = Literal["raise", "warn", "off"]

_logger = logging.getLogger(__name__)
# The reasons of the spans entered in this context, innermost last. A stack
# in the context (not tokens on the span) lets one span object be entered
# by several tasks at once.
_open_spans: ContextVar[tuple[str, ...]] = ContextVar("agent_wake_partition_spans", default=())
_installed: "WeakKeyDictionary[Engine, _Guard]" = WeakKeyDictionary()


class PartitionSpan(Mapping[str, str]):
    """A named permission to run cross-partition statements.

    Use it as a context manager (every statement inside is allowed) or as
    execution options (that statement only)::

        with spans_partitions("tick: scan due schedules"):
            ...
        select(WakeSchedule).execution_options(**spans_partitions("tick: scan"))
    """

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInputError("reason", "a cross-partition scope needs a non-empty reason")
        self.reason = reason

    def __getitem__(self, key: str) -> str:
        if key != _SPAN_OPTION:
            raise KeyError(key)
        return self.reason

    def __iter__(self) -> Iterator[str]:
        return iter((_SPAN_OPTION,))

    def __len__(self) -> int:
        return 1

    def __enter__(self) -> "PartitionSpan":
        _open_spans.set((*_open_spans.get(), self.reason))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _open_spans.set(_open_spans.get()[:-1])

    def __repr__(self) -> str:
        return f"spans_partitions({self.reason!r})"


def spans_partitions(reason: str) -> PartitionSpan:
    """Allow cross-partition statements, for ``reason`` (required, logged at DEBUG)."""
    return PartitionSpan(reason)


@dataclass(frozen=True)
class _Refusal:
    table: str
    problem: str


@dataclass
class _Guard:
    mode: GuardMode

    def before_cursor_execute(
        self,
        conn: Any,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if self.mode == "off":
            return
        open_spans = _open_spans.get()
        reason = open_spans[-1] if open_spans else None
        if reason is None and context is not None:
            option = context.execution_options.get(_SPAN_OPTION)
            # Only a real reason opens a span: an empty option is no permission.
            reason = option if isinstance(option, str) and option.strip() else None
        if reason is not None:
            _logger.debug("cross-partition statement (%s): %s", reason, statement)
            return
        refusal = _refusal(statement)
        if refusal is None:
            return
        error = PartitionScopeError(refusal.table, refusal.problem, statement)
        if self.mode == "raise":
            raise error
        _logger.warning("%s", error)
        warnings.warn(str(error), RuntimeWarning, stacklevel=2)


def install_partition_guard(engine: Engine | AsyncEngine, *, mode: GuardMode = "raise") -> None:
    """Check every statement ``engine`` sends; see the module docstring for the rules.

    ``mode`` is ``"raise"`` (refuse with :class:`PartitionScopeError`
    before anything is sent), ``"warn"`` (log a warning and run it) or
    ``"off"``. Installing again on the same engine changes its mode.
    """
    if mode not in _GUARD_MODES:
        raise InvalidInputError("mode", f"must be one of {', '.join(_GUARD_MODES)}")
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if not isinstance(sync_engine, Engine):
        raise InvalidInputError("engine", "must be a SQLAlchemy Engine or AsyncEngine")
    if sync_engine.dialect.name != "postgresql" or sync_engine.dialect.paramstyle != _READABLE_PARAMSTYLE:
        # Other drivers send %s or :name placeholders, which PostgreSQL's
        # parser cannot read: every statement on a wake table would be refused.
        raise InvalidInputError(
            "engine",
            "the guard reads the SQL of the asyncpg dialect (postgresql+asyncpg, $n placeholders); "
            f"this engine uses {sync_engine.dialect.name}+{sync_engine.dialect.driver} "
            f"with paramstyle {sync_engine.dialect.paramstyle!r}",
        )
    guard = _installed.get(sync_engine)
    if guard is not None:
        guard.mode = mode
        return
    guard = _Guard(mode)
    _installed[sync_engine] = guard
    event.listen(sync_engine, "before_cursor_execute", guard.before_cursor_execute)


def _might_touch_guarded_tables(sql: str) -> bool:
    lowered = sql.lower()
    # A U&"..." identifier can spell a table name with escapes; parse those.
    return "u&" in lowered or any(table in lowered for table in GUARDED_TABLES)


@lru_cache(maxsize=_DECISION_CACHE_SIZE)
def _refusal(sql: str) -> _Refusal | None:
    # Every distinct statement is parsed once: a table name can be built at
    # run time (EXECUTE 'wake' || '_fires'), so no text search can tell
    # which statements are safe to skip.
    try:
        statements = parse_sql(sql)
    except ParseError:
        if _might_touch_guarded_tables(sql):
            return _Refusal("(unknown)", "the statement cannot be parsed, so its scope cannot be checked")
        return None  # PostgreSQL will refuse it too, and it names no wake table
    for raw in statements:
        if raw.stmt is not None:
            refusal = _check_top_level(raw.stmt)
            if refusal is not None:
                return refusal
    return None


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


def _check_top_level(statement: ast.Node) -> _Refusal | None:
    if isinstance(statement, ast.TruncateStmt | ast.MergeStmt | ast.LockStmt):
        table = next(_guarded_names_in(statement), None)
        if table is not None:
            kind = type(statement).__name__.removesuffix("Stmt").upper()
            return _Refusal(table, f"{kind} spans every conversation")
        return None
    if isinstance(statement, ast.DoStmt):
        # Its body can build any SQL at run time (EXECUTE 'wake' || '_fires').
        return _Refusal("(any)", "a DO block cannot be checked; run it inside spans_partitions(reason)")
    if isinstance(statement, ast.CopyStmt) and _is_guarded(statement.relation):
        return _Refusal(_relname(statement.relation), "COPY of a whole table spans every conversation")
    if not isinstance(statement, _CHECKED_STATEMENTS):
        return None
    for node in _walk(statement):
        refusal = _check_level(node)
        if refusal is not None:
            return refusal
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


def _is_guarded(node: object) -> bool:
    return isinstance(node, ast.RangeVar) and node.relname in GUARDED_TABLES


def _relname(node: object) -> str:
    return str(node.relname) if isinstance(node, ast.RangeVar) else "(unknown)"


def _guarded_names_in(node: ast.Node) -> Iterator[str]:
    for child in _walk(node):
        if _is_guarded(child):
            yield _relname(child)


def _check_level(node: ast.Node) -> _Refusal | None:
    if isinstance(node, ast.MergeStmt):
        table = next(_guarded_names_in(node), None)
        return _Refusal(table, "MERGE cannot be checked") if table is not None else None
    if isinstance(node, ast.FuncCall) and _function_name(node) in _SQL_RUNNING_FUNCTIONS:
        return _Refusal("(any)", f"{_function_name(node)}() runs SQL the guard cannot see")
    if isinstance(node, ast.RangeVar) and _is_guarded(node) and node.alias is not None and node.alias.colnames:
        # AS w(a, b, conversation_id) would give another column the partition column's name.
        return _Refusal(_relname(node), "an alias may not rename the columns of a wake table")
    if isinstance(node, ast.SelectStmt):
        return _check_scoped(list(_range_leaves(node.fromClause)), node.whereClause)
    if isinstance(node, ast.UpdateStmt):
        if _is_guarded(node.relation) and _sets_partition_column(node.targetList):
            return _Refusal(_relname(node.relation), "an UPDATE must not change conversation_id")
        return _check_scoped([node.relation, *_range_leaves(node.fromClause)], node.whereClause)
    if isinstance(node, ast.DeleteStmt):
        return _check_scoped([node.relation, *_range_leaves(node.usingClause)], node.whereClause)
    if isinstance(node, ast.InsertStmt) and _is_guarded(node.relation):
        table = _relname(node.relation)
        columns = {target.name for target in node.cols or ()}
        if _PARTITION_COLUMN not in columns:
            return _Refusal(table, "an INSERT must name conversation_id in its column list")
        conflict = node.onConflictClause
        if conflict is not None and conflict.action == OnConflictAction.ONCONFLICT_UPDATE:
            if _sets_partition_column(conflict.targetList):
                return _Refusal(table, "ON CONFLICT DO UPDATE must not change conversation_id")
            if not _conflict_target_includes_partition(conflict.infer):
                # ON CONFLICT (fire_id) would update the row of whichever
                # conversation already holds that id.
                return _Refusal(table, "ON CONFLICT DO UPDATE needs a conflict target that includes conversation_id")
    return None


def _conflict_target_includes_partition(infer: Any) -> bool:
    if infer is None:
        return False
    if infer.conname is not None:
        return str(infer.conname) in _PARTITIONED_CONSTRAINTS
    return any(getattr(element, "name", None) == _PARTITION_COLUMN for element in infer.indexElems or ())


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


def _sets_partition_column(targets: Any) -> bool:
    return any(target.name == _PARTITION_COLUMN for target in targets or ())


def _check_scoped(leaves: list[object], where: Any) -> _Refusal | None:
    guarded = [leaf for leaf in leaves if isinstance(leaf, ast.RangeVar) and _is_guarded(leaf)]
    if not guarded:
        return None
    pinned = _pinned_qualifiers(where)
    for reference in guarded:
        table = _relname(reference)
        name = reference.alias.aliasname if reference.alias is not None else table
        unqualified_is_this = None in pinned and len(leaves) == 1
        if name not in pinned and not unqualified_is_this:
            return _Refusal(
                table,
                f"the WHERE clause does not pin {name}.conversation_id to given values "
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


def _pinned_qualifiers(where: Any) -> set[str | None]:
    """Qualifiers (table or alias; None when unqualified) whose conversation_id a conjunct pins."""
    pinned: set[str | None] = set()
    for conjunct in _conjuncts(where):
        if not isinstance(conjunct, ast.A_Expr) or _operator(conjunct) != "=":
            continue
        for column, other in ((conjunct.lexpr, conjunct.rexpr), (conjunct.rexpr, conjunct.lexpr)):
            qualifier = _partition_column_qualifier(column)
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


def _partition_column_qualifier(node: Any) -> str | Literal[False] | None:
    """The qualifier of a ``conversation_id`` column reference, None when bare, False otherwise."""
    if not isinstance(node, ast.ColumnRef):
        return False
    fields = node.fields
    if not fields or not isinstance(fields[-1], ast.String) or fields[-1].sval != _PARTITION_COLUMN:
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

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
- an INSERT must name ``conversation_id`` in its column list, and neither
  an UPDATE nor ``ON CONFLICT DO UPDATE`` may set it;
- TRUNCATE, LOCK, MERGE, COPY of a whole table and DO blocks that mention the
  tables are refused; DDL is not checked.

Cross-partition work runs inside :func:`spans_partitions`, with a reason
that is logged at DEBUG with the statement. Decisions are cached by
statement text, so a repeated statement costs a dictionary lookup.
"""

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
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

GuardMode = Literal["raise", "warn", "off"]

_logger = logging.getLogger(__name__)
_current_span: ContextVar[str | None] = ContextVar("agent_wake_partition_span", default=None)
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
        self._tokens: list[Token[str | None]] = []

    def __getitem__(self, key: str) -> str:
        if key != _SPAN_OPTION:
            raise KeyError(key)
        return self.reason

    def __iter__(self) -> Iterator[str]:
        return iter((_SPAN_OPTION,))

    def __len__(self) -> int:
        return 1

    def __enter__(self) -> "PartitionSpan":
        self._tokens.append(_current_span.set(self.reason))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current_span.reset(self._tokens.pop())

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
        reason = _current_span.get()
        if reason is None and context is not None:
            reason = context.execution_options.get(_SPAN_OPTION)
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
    if not _might_touch_guarded_tables(sql):
        return None
    try:
        statements = parse_sql(sql)
    except ParseError:
        return _Refusal("(unknown)", "the statement cannot be parsed, so its scope cannot be checked")
    for raw in statements:
        start = raw.stmt_location or 0
        # stmt_len 0 means "to the end of the string".
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        if raw.stmt is not None:
            refusal = _check_top_level(raw.stmt, sql[start:end])
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


def _check_top_level(statement: ast.Node, text: str) -> _Refusal | None:
    if isinstance(statement, ast.TruncateStmt | ast.MergeStmt | ast.LockStmt):
        table = next(_guarded_names_in(statement), None)
        if table is not None:
            kind = type(statement).__name__.removesuffix("Stmt").upper()
            return _Refusal(table, f"{kind} spans every conversation")
        return None
    if isinstance(statement, ast.DoStmt):
        lowered = text.lower()
        for table in sorted(GUARDED_TABLES):
            if table in lowered:
                return _Refusal(table, "a DO block cannot be checked")
        return None
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
        if (
            conflict is not None
            and conflict.action == OnConflictAction.ONCONFLICT_UPDATE
            and _sets_partition_column(conflict.targetList)
        ):
            return _Refusal(table, "ON CONFLICT DO UPDATE must not change conversation_id")
    return None


def _range_leaves(from_items: Any) -> Iterator[object]:
    """The relations of a FROM list at this query level, through joins but not into subqueries."""
    stack = list(from_items or ())
    while stack:
        item = stack.pop()
        if isinstance(item, ast.JoinExpr):
            stack.extend((item.larg, item.rarg))
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

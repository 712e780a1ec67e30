"""Every cross-partition statement of the package sits inside
spans_partitions with a reason, and nothing else in the package uses it.

The rest of the suite runs every repository method on an engine whose guard
is in "raise" mode, so any other unscoped statement would already fail there.
"""

import ast
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from agent_wake import SecretBox, WakeFireRepository, WakeScheduleRepository, WebhookSubscriptionRepository
from agent_wake.partition_guard import GUARDED_TABLES, _refusal
from tests.clock import NOW

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "agent_wake"
# The tick's scan and claim (claim_due's locking query is built in
# _claiming.locking_statement), the webhook receiver's lookup, the recovery
# job's scan, and the pytest plugin's teardown that empties the wake tables
# after a wake_engine test.
DOCUMENTED_CROSS_PARTITION_FUNCTIONS = {
    "list_due",
    "locking_statement",
    "find_by_id",
    "list_stale_dispatching",
    "wake_engine",
}
SPAN_NAMES = {"spans_partitions", "PartitionSpan"}


def package_sources() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "partition_guard.py"]


def spans_partitions_call_sites() -> list[tuple[str, str, ast.Call]]:
    """Calls of spans_partitions or PartitionSpan, by plain name or as an attribute, per function."""
    sites = []
    for path in package_sources():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Call):
                    continue
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if name in SPAN_NAMES:
                    sites.append((path.name, function.name, node))
    return sites


def test_only_the_documented_cross_partition_functions_span_partitions() -> None:
    functions = {function for _, function, _ in spans_partitions_call_sites()}
    assert functions == DOCUMENTED_CROSS_PARTITION_FUNCTIONS


def test_no_module_opens_a_span_another_way() -> None:
    for path in package_sources():
        source = path.read_text()
        assert "agent_wake_spans_partitions" not in source, f"{path.name} sets the span option by hand"
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "agent_wake.partition_guard":
                for alias in node.names:
                    assert alias.asname is None, f"{path.name} imports {alias.name} under another name"


def test_every_span_in_the_package_gives_a_literal_reason() -> None:
    for module, function, call in spans_partitions_call_sites():
        assert len(call.args) == 1, f"{module}:{function}"
        reason = call.args[0]
        assert isinstance(reason, ast.Constant), f"{module}:{function} reason is not a literal"
        assert isinstance(reason.value, str), f"{module}:{function}"
        assert reason.value.strip(), f"{module}:{function}"


async def test_the_cross_partition_methods_would_be_refused_without_their_span(wake_database_url: str) -> None:
    engine = create_async_engine(wake_database_url)
    sent: list[tuple[str, object]] = []

    def record(conn: object, cursor: object, statement: str, params: object, context: Any, many: bool) -> None:
        sent.append((statement, context.execution_options.get("agent_wake_spans_partitions")))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with AsyncSession(engine) as session:
            await WakeScheduleRepository(session).list_due(NOW)
            await WakeScheduleRepository(session).claim_due(NOW, limit=10, next_fire=lambda schedule, now: None)
            await WebhookSubscriptionRepository(session, SecretBox.from_keys(SecretBox.generate_key())).find_by_id(
                uuid.uuid4()
            )
            await WakeFireRepository(session).list_stale_dispatching(NOW)
            await session.rollback()
    finally:
        await engine.dispose()
    wake_statements = [(sql, reason) for sql, reason in sent if any(table in sql for table in GUARDED_TABLES)]
    assert len(wake_statements) == 4
    for sql, reason in wake_statements:
        assert _refusal(sql) is not None, sql
        assert isinstance(reason, str)
        assert reason


async def test_the_cross_partition_methods_run_on_a_guarded_session(
    wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    assert await WakeScheduleRepository(wake_session).list_due(NOW) is not None
    assert await WebhookSubscriptionRepository(wake_session, wake_secrets).find_by_id(uuid.uuid4()) is None

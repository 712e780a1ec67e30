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

from agent_wake import SecretBox, WakeScheduleRepository, WebhookSubscriptionRepository
from agent_wake.partition_guard import _refusal
from tests.clock import NOW

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "agent_wake"
# The tick's scan and claim, the webhook receiver's lookup, the recovery
# job's scan, and the pytest plugin's teardown that empties the wake tables
# after a wake_engine test.
DOCUMENTED_CROSS_PARTITION_METHODS = {"list_due", "claim_due", "find_by_id", "list_stale_dispatching", "wake_engine"}


def spans_partitions_call_sites() -> list[tuple[str, str, ast.Call]]:
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "partition_guard.py":
            continue
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "spans_partitions"
                ):
                    sites.append((path.name, function.name, node))
    return sites


def test_only_the_documented_cross_partition_methods_span_partitions() -> None:
    methods = {function for _, function, _ in spans_partitions_call_sites()}
    assert methods == DOCUMENTED_CROSS_PARTITION_METHODS


def test_every_span_in_the_package_gives_a_literal_reason() -> None:
    for module, function, call in spans_partitions_call_sites():
        assert len(call.args) == 1, f"{module}:{function}"
        reason = call.args[0]
        assert isinstance(reason, ast.Constant), f"{module}:{function} reason is not a literal"
        assert isinstance(reason.value, str), f"{module}:{function}"
        assert reason.value.strip(), f"{module}:{function}"


async def test_the_cross_partition_methods_would_be_refused_without_their_span(
    wake_database_url: str,
) -> None:
    engine = create_async_engine(wake_database_url)
    sent: list[tuple[str, object]] = []

    def record(conn: object, cursor: object, statement: str, params: object, context: Any, many: bool) -> None:
        sent.append((statement, context.execution_options.get("agent_wake_spans_partitions")))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with AsyncSession(engine) as session:
            await WakeScheduleRepository(session).list_due(NOW)
            await WebhookSubscriptionRepository(session, SecretBox.from_keys(SecretBox.generate_key())).find_by_id(
                uuid.uuid4()
            )
    finally:
        await engine.dispose()
    wake_statements = [(sql, reason) for sql, reason in sent if "agent_wake_schedules" in sql or "webhook" in sql]
    assert len(wake_statements) == 2
    for sql, reason in wake_statements:
        assert _refusal(sql) is not None, sql
        assert isinstance(reason, str)
        assert reason


async def test_the_cross_partition_methods_run_on_a_guarded_session(
    wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    assert await WakeScheduleRepository(wake_session).list_due(NOW) is not None
    assert await WebhookSubscriptionRepository(wake_session, wake_secrets).find_by_id(uuid.uuid4()) is None

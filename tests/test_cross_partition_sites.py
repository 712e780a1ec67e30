"""Every cross-partition statement of the package sits inside
spans_partitions with a reason, and nothing else in the package uses it.

The rest of the suite runs every repository method on an engine whose guard
is in "raise" mode, so any other unscoped statement would already fail there.
"""

import ast
import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from agent_wake import SecretBox, WakeFireRepository, WakeScheduleRepository, WebhookSubscriptionRepository
from agent_wake.partition_guard import GUARDED_TABLES, _refusal
from agent_wake.testing import capture_sql
from tests.clock import NOW

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "agent_wake"
# The tick's scan and claim (on Citus, its scan for the due schedules' shards),
# the webhook receiver's lookup, the recovery job's scan and the maintenance
# jobs' counts, batches and pages (prebuilt
# statements, named by their key in _statements.PREBUILT), and the pytest plugin's (testing/pytest_plugin.py)
# teardown that empties the wake tables after a test of wake_engine or of the
# row-level-security session fixtures (a function). _statements.span_of enters,
# for a tick statement sent on the driver connection, that prebuilt entry's own
# span again (its reason is the entry's literal one).
DOCUMENTED_CROSS_PARTITION_SITES = {
    "schedules.list_due",
    "schedules.claim_lock",
    "schedules.claim_lock_excluding",
    "schedules.claim_scan_sharded",
    "schedules.claim_scan_sharded_after",
    "subscriptions.find_by_id",
    "fires.list_stale_dispatching",
    "fires.count_prunable",
    "fires.prune",
    "fires.count_orphans",
    "schedules.count_orphans",
    "subscriptions.count_orphans",
    "fires.delete_orphans",
    "schedules.unlink_orphans",
    "schedules.delete_orphans",
    "subscriptions.delete_orphans",
    "subscriptions.count",
    "subscriptions.first_secrets",
    "subscriptions.secrets_after",
    "_empty_tables",
    "span_of",
    # Operators' commands on a whole schema: adoption's checks of the rows a
    # later revision needs, and the distributed layout's checks and re-keying.
    "adopt_schema",
    "distribute_schema",
}
SPAN_NAMES = {"spans_partitions", "PartitionSpan"}


def package_sources() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "partition_guard.py"]


def _span_calls(node: ast.AST) -> list[ast.Call]:
    calls = []
    for child in ast.walk(node):
        if isinstance(child, ast.Call):
            name = child.func.id if isinstance(child.func, ast.Name) else getattr(child.func, "attr", None)
            if name in SPAN_NAMES:
                calls.append(child)
    return calls


def spans_partitions_call_sites() -> list[tuple[str, str, ast.Call]]:
    """Calls of spans_partitions or PartitionSpan, by plain name or as an attribute, with the
    module's path in the package (``testing/pytest_plugin.py``) and the site: the enclosing
    function, or the key of the module-level dict entry (a prebuilt statement) they sit in."""
    sites = []
    for path in package_sources():
        module = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        found = 0
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                calls = _span_calls(node)
                sites.extend((module, node.name, call) for call in calls)
                found += len(calls)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        calls = _span_calls(value)
                        sites.extend((module, key.value, call) for call in calls)
                        found += len(calls)
        # A call outside both kinds of site would escape the documented list.
        assert found == len(_span_calls(tree)), f"{module} opens a span outside a function or a prebuilt statement"
    return sites


def test_only_the_documented_cross_partition_sites_span_partitions() -> None:
    sites = {site for _, site, _ in spans_partitions_call_sites()}
    assert sites == DOCUMENTED_CROSS_PARTITION_SITES


def test_the_plugin_teardown_span_is_found_in_the_testing_package() -> None:
    modules = {module for module, function, _ in spans_partitions_call_sites() if function == "_empty_tables"}
    assert modules == {"testing/pytest_plugin.py"}


def test_no_module_opens_a_span_another_way() -> None:
    for path in package_sources():
        source = path.read_text()
        assert "agent_wake_spans_partitions" not in source, f"{path.relative_to(PACKAGE)} sets the span option by hand"
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "agent_wake.partition_guard":
                for alias in node.names:
                    assert alias.asname is None, f"{path.relative_to(PACKAGE)} imports {alias.name} under another name"


def test_every_span_in_the_package_gives_a_literal_reason() -> None:
    for module, function, call in spans_partitions_call_sites():
        if (module, function) == ("_statements.py", "span_of"):
            continue  # a prebuilt entry's span, entered again: that entry's reason is checked here

        assert len(call.args) == 1, f"{module}:{function}"
        reason = call.args[0]
        assert isinstance(reason, ast.Constant), f"{module}:{function} reason is not a literal"
        assert isinstance(reason.value, str), f"{module}:{function}"
        assert reason.value.strip(), f"{module}:{function}"


async def test_the_cross_partition_methods_would_be_refused_without_their_span(wake_database_url: str) -> None:
    engine = create_async_engine(wake_database_url)
    try:
        async with AsyncSession(engine) as session:
            with capture_sql(engine) as sent:
                await WakeScheduleRepository(session).list_due(NOW)
                await WakeScheduleRepository(session).claim_due(NOW, limit=10, next_fire=lambda schedule, now: None)
                await WebhookSubscriptionRepository(session, SecretBox.from_keys(SecretBox.generate_key())).find_by_id(
                    uuid.uuid4()
                )
                await WakeFireRepository(session).list_stale_dispatching(NOW)
            await session.rollback()
    finally:
        await engine.dispose()
    wake_statements = [statement for statement in sent if any(table in statement.sql for table in GUARDED_TABLES)]
    assert len(wake_statements) == 4
    for statement in wake_statements:
        assert _refusal(statement.sql) is not None, statement.sql
        reason = statement.execution_options.get("agent_wake_spans_partitions")
        assert isinstance(reason, str)
        assert reason


async def test_the_cross_partition_methods_run_on_a_guarded_session(
    wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    assert await WakeScheduleRepository(wake_session).list_due(NOW) is not None
    assert await WebhookSubscriptionRepository(wake_session, wake_secrets).find_by_id(uuid.uuid4()) is None

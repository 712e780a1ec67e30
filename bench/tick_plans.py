"""The plans of the hot statements: custom and generic, flagging a sequential scan on a big table."""

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
from tick_paths import HotPath

SCANNED_TABLES = ("agent_wake_schedules", "wake_fires")


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def describe(node: dict[str, Any]) -> str:
    """``Index Scan wake_fires using wake_fires_pkey``, ``Insert wake_fires``, ..."""
    parts = [node.get("Operation") or node["Node Type"], node.get("Relation Name")]
    if "Index Name" in node:
        parts.append(f"using {node['Index Name']}")
    return " ".join(part for part in parts if part)


async def explained(conn: asyncpg.Connection, sql: str, params: Sequence[Any], *, generic: bool) -> dict[str, Any]:
    """EXPLAIN without ANALYZE (nothing runs): the custom plan for these parameters, or the
    generic plan PostgreSQL switches a prepared statement to after five executions."""
    if not generic:
        return json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params))[0]["Plan"]
    # EXPLAIN EXECUTE takes no bind parameters: the values go in as typed literals.
    types = [
        await conn.fetchval("SELECT format_type($1::oid, NULL)", parameter.oid)
        for parameter in (await conn.prepare(sql)).get_parameters()
    ]
    literals = [
        f"{await conn.fetchval(f'SELECT quote_nullable(($1::{type_})::text)', value)}::{type_}"
        for type_, value in zip(types, params, strict=True)
    ]
    arguments = f"({', '.join(literals)})" if literals else ""
    await conn.execute(f"PREPARE generic_check AS {sql}")
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        explained_plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE generic_check{arguments}")
        return json.loads(explained_plan)[0]["Plan"]
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE generic_check")


async def plans_of(conn: asyncpg.Connection, path: HotPath) -> list[dict[str, Any]]:
    """Each statement's custom and generic plan: relations, indexes, Seq Scans."""
    summaries = []
    for sql, params in path.statements:
        for generic in (False, True):
            plan = await explained(conn, sql, params, generic=generic)
            nodes = [node for node in plan_nodes(plan) if "Relation Name" in node or "Index Name" in node]
            table = re.search("|".join(SCANNED_TABLES), sql)
            summaries.append(
                {
                    "path": path.name,
                    "statement": f"{sql.split(None, 1)[0]} {table.group() if table else ''}",
                    "plan": "generic" if generic else "custom",
                    "nodes": [describe(node) for node in nodes],
                    "seq_scan_on": [
                        node["Relation Name"]
                        for node in nodes
                        if node["Node Type"] == "Seq Scan" and node["Relation Name"] in SCANNED_TABLES
                    ],
                }
            )
    return summaries

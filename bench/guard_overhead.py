"""What the partition guard costs on hot repository reads.

Runs `get` (one row) and `list_for_conversation` (50 rows) through two
engines on the same database, one with the guard in "raise" mode and one
with it off, in interleaved blocks within one run, and reports the median
time per call and the ratio guarded/unguarded.

Then times one check on the cached path: the engine's
``before_cursor_execute`` listeners called as SQLAlchemy calls them, with
the arguments of a real `get`, guarded minus unguarded, in nanoseconds.
Twice: on the repository's text, which reads alike under any connection
settings (a cached decision), and on the same text with a backslash in a
comment (a cached decision plus asking the driver for the connection's
``standard_conforming_strings`` and ``client_encoding``).

    python bench/guard_overhead.py            # AGENT_WAKE_DATABASE_URL, else embedded
    python bench/guard_overhead.py --rounds 20 --block 500

It creates a scratch database on the server, migrates it, and drops it.
"""

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from agent_wake import WakeScheduleRepository, install_partition_guard, resolve_database_url
from agent_wake.testing import ScratchDatabase

ROWS_PER_CONVERSATION = 50
ReadPath = Callable[[WakeScheduleRepository], Awaitable[object]]
OTHER_CONVERSATIONS = 200
CHECKS_PER_ROUND = 20_000


async def seed(url: str) -> tuple[uuid.UUID, uuid.UUID]:
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    target = uuid.uuid4()
    async with AsyncSession(engine) as session, session.begin():
        repo = WakeScheduleRepository(session)
        for conversation_id in [target] + [uuid.uuid4() for _ in range(OTHER_CONVERSATIONS)]:
            for minute in range(ROWS_PER_CONVERSATION):
                await repo.create(
                    conversation_id=conversation_id,
                    user_id=uuid.uuid4(),
                    agent_id=uuid.uuid4(),
                    schedule_type="interval",
                    schedule_config={"seconds": 60},
                    next_fire_at=now + timedelta(minutes=minute),
                )
        first = await repo.list_for_conversation(target, limit=1)
        schedule_id = first[0].schedule_id
    await engine.dispose()
    return target, schedule_id


async def time_block(path: ReadPath, repo: WakeScheduleRepository, block: int) -> float:
    """Mean seconds per call of ``path`` over ``block`` calls."""
    started = time.perf_counter()
    for _ in range(block):
        await path(repo)
    return (time.perf_counter() - started) / block


async def measure(url: str, rounds: int, block: int) -> dict[str, dict[str, float]]:
    conversation_id, schedule_id = await seed(url)
    guarded, unguarded = create_async_engine(url), create_async_engine(url)
    install_partition_guard(guarded, mode="raise")
    install_partition_guard(unguarded, mode="off")
    paths: dict[str, ReadPath] = {
        "get": lambda repo: repo.get(conversation_id, schedule_id),
        "list_for_conversation": lambda repo: repo.list_for_conversation(conversation_id, limit=50),
    }
    results: dict[str, dict[str, float]] = {}
    async with AsyncSession(guarded) as on, AsyncSession(unguarded) as off:
        repo_on, repo_off = WakeScheduleRepository(on), WakeScheduleRepository(off)
        for name, path in paths.items():
            # Warm both sides: decision cache, prepared statements, compiled SQL.
            await time_block(path, repo_on, block)
            await time_block(path, repo_off, block)
            times_on, times_off = [], []
            for _ in range(rounds):
                times_off.append(await time_block(path, repo_off, block))
                times_on.append(await time_block(path, repo_on, block))
                on.expunge_all()
                off.expunge_all()
            median_on, median_off = statistics.median(times_on), statistics.median(times_off)
            results[name] = {
                "guard_off_us": median_off * 1e6,
                "guard_on_us": median_on * 1e6,
                "ratio_on_over_off": median_on / median_off,
            }
        results["check_ns"] = await time_checks(guarded, unguarded, paths["get"], repo_on, repo_off, rounds)
    await guarded.dispose()
    await unguarded.dispose()
    return results


async def time_checks(
    guarded: AsyncEngine,
    unguarded: AsyncEngine,
    path: ReadPath,
    repo_on: WakeScheduleRepository,
    repo_off: WakeScheduleRepository,
    rounds: int,
) -> dict[str, float]:
    """Median ns per call of the listeners, on the guarded and on the unguarded engine (whose
    guard is installed "off": the difference is the check), with the arguments ``path`` sends."""
    arguments = {"guarded": await sent_arguments(guarded, path, repo_on)}
    arguments["unguarded"] = await sent_arguments(unguarded, path, repo_off)
    figures = {}
    for name, suffix in (("repository_text", ""), ("text_with_a_backslash", " -- \\")):
        times: dict[str, list[float]] = {"guarded": [], "unguarded": []}
        for _ in range(rounds):
            for side, engine in (("unguarded", unguarded), ("guarded", guarded)):
                conn, cursor, statement, parameters, context, executemany = arguments[side]
                dispatch = engine.sync_engine.dispatch.before_cursor_execute
                sql = statement + suffix
                dispatch(conn, cursor, sql, parameters, context, executemany)  # the decision is cached from here
                started = time.perf_counter_ns()
                for _ in range(CHECKS_PER_ROUND):
                    dispatch(conn, cursor, sql, parameters, context, executemany)
                times[side].append((time.perf_counter_ns() - started) / CHECKS_PER_ROUND)
        figures[f"{name}_guard_off"] = statistics.median(times["unguarded"])
        figures[f"{name}_guard_on"] = statistics.median(times["guarded"])
    return figures


async def sent_arguments(engine: AsyncEngine, path: ReadPath, repo: WakeScheduleRepository) -> tuple[object, ...]:
    """The arguments the engine's ``before_cursor_execute`` listeners got for the last statement of ``path``
    (its connection stays checked out by the repository's session)."""
    captured: list[tuple[object, ...]] = []

    def capture(*arguments: object) -> None:
        captured.append(arguments)

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        await path(repo)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    return captured[-1]


async def run_in_scratch_database(rounds: int, block: int) -> dict[str, dict[str, float]]:
    async with ScratchDatabase(resolve_database_url(allow_embedded=True), prefix="agent_wake_bench") as url:
        return await measure(url, rounds, block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=300)
    parser.add_argument("--json", help="also write the figures to this file")
    arguments = parser.parse_args()
    results = asyncio.run(run_in_scratch_database(arguments.rounds, arguments.block))
    checks = results.pop("check_ns")
    print(f"{'path':<24}{'guard off (us)':>16}{'guard on (us)':>16}{'on/off':>10}")
    for path, figures in results.items():
        print(
            f"{path:<24}{figures['guard_off_us']:>16.1f}{figures['guard_on_us']:>16.1f}"
            f"{figures['ratio_on_over_off']:>10.3f}"
        )
    print(f"\n{'one check (ns), cached decision':<32}{'guard off':>12}{'guard on':>12}{'on - off':>12}")
    for name in ("repository_text", "text_with_a_backslash"):
        off, on = checks[f"{name}_guard_off"], checks[f"{name}_guard_on"]
        print(f"{name:<32}{off:>12.0f}{on:>12.0f}{on - off:>12.0f}")
    results["check_ns"] = checks
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

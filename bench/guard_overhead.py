"""What the partition guard costs on hot repository reads.

Runs `get` (one row) and `list_for_conversation` (50 rows) through two
engines on the same database, one with the guard in "raise" mode and one
with it off, in interleaved blocks within one run, and reports the median
time per call and the ratio guarded/unguarded.

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

from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from agent_wake import WakeScheduleRepository, install_partition_guard, resolve_database_url
from agent_wake.testing import ScratchDatabase

ROWS_PER_CONVERSATION = 50
ReadPath = Callable[[WakeScheduleRepository], Awaitable[object]]
OTHER_CONVERSATIONS = 200


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
    await guarded.dispose()
    await unguarded.dispose()
    return results


async def run_in_scratch_database(rounds: int, block: int) -> dict[str, dict[str, float]]:
    async with ScratchDatabase(resolve_database_url(), prefix="agent_wake_bench") as url:
        return await measure(url, rounds, block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=300)
    parser.add_argument("--json", help="also write the figures to this file")
    arguments = parser.parse_args()
    results = asyncio.run(run_in_scratch_database(arguments.rounds, arguments.block))
    print(f"{'path':<24}{'guard off (us)':>16}{'guard on (us)':>16}{'on/off':>10}")
    for path, figures in results.items():
        print(
            f"{path:<24}{figures['guard_off_us']:>16.1f}{figures['guard_on_us']:>16.1f}"
            f"{figures['ratio_on_over_off']:>10.3f}"
        )
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""A/B one hot repository path between the working tree and another git revision.

The tick benchmark's ratios move by up to a quarter between runs on a
shared machine, which hides a 20% change. This runs the same operation with
the two versions of ``agent_wake`` on the same scratch database, in child
processes that alternate (old, new, old, new, ...), and reports the median
client CPU time and wall time per operation of each, and new/old.

    python bench/ab_revision.py --against 9fad131 --path dispatch
    python bench/ab_revision.py --against HEAD~1 --path claim --alternations 6

Paths: ``get`` (one schedule, a transaction each), ``dispatch``
(``create_dispatching`` + ``finalize_success``, a transaction each),
``claim`` (``claim_due`` of 200 due schedules, rolled back so that the same
200 are due again). The revision is checked out in a temporary git worktree;
it must have the working tree's schema (the database is migrated with the
working tree's revisions). ``AGENT_WAKE_DATABASE_URL`` names the server,
else the embedded one is started.

Compared with a revision whose code is the same (an A/A run), new/old came
out between 0.92 and 1.07 on the 2-core development machine: read anything
inside that band as no difference.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PATHS = ("get", "dispatch", "claim")
CLAIM_BATCH = 200
REPOSITORY = Path(__file__).resolve().parent.parent
SOURCE = REPOSITORY / "src"


async def seed(url: str) -> None:
    """One conversation with one schedule due a minute ago and ``CLAIM_BATCH - 1`` more."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from agent_wake import WakeScheduleRepository

    engine = create_async_engine(url)
    conversation_id, due = uuid.uuid4(), datetime.now(UTC) - timedelta(minutes=1)
    async with AsyncSession(engine) as session, session.begin():
        for _ in range(CLAIM_BATCH):
            await WakeScheduleRepository(session).create(
                conversation_id=conversation_id,
                user_id=uuid.uuid4(),
                agent_id=uuid.uuid4(),
                schedule_type="interval",
                schedule_config={"seconds": 3600},
                next_fire_at=due,
            )
    await engine.dispose()


async def measure(url: str, path: str, operations: int) -> dict[str, Any]:
    """Child side: time ``operations`` runs of ``path`` with whichever agent_wake is importable."""
    import agent_wake
    from agent_wake import WakeFireRepository, WakeScheduleRepository, create_engine_and_session_factory

    engine, sessions = create_engine_and_session_factory(url)
    async with sessions.begin() as session:
        (schedule,) = await WakeScheduleRepository(session).list_due(datetime.now(UTC), limit=1)
    conversation_id, schedule_id = schedule.conversation_id, schedule.schedule_id
    # Far-future periods no other child has used: one fire per period is enforced.
    first_period = datetime.now(UTC) + timedelta(days=36_500)
    periods = iter(first_period + timedelta(microseconds=n) for n in range(10**9))

    async def get() -> None:
        async with sessions.begin() as session:
            await WakeScheduleRepository(session).get(conversation_id, schedule_id)

    async def dispatch() -> None:
        async with sessions.begin() as session:
            fires = WakeFireRepository(session)
            fire = await fires.create_dispatching(
                conversation_id=conversation_id, schedule_id=schedule_id, scheduled_fire_at=next(periods)
            )
            await fires.finalize_success(conversation_id, fire.fire_id, status="fired", output_text="ok")

    async def claim() -> None:
        async with sessions() as session, session.begin():
            claimed = await WakeScheduleRepository(session).claim_due(
                datetime.now(UTC), limit=CLAIM_BATCH, next_fire=lambda s, now: now + timedelta(hours=1)
            )
            if len(claimed) != CLAIM_BATCH:
                raise RuntimeError(f"claimed {len(claimed)} schedules, not {CLAIM_BATCH}")
            await session.rollback()

    operation: Callable[[], Awaitable[None]] = {"get": get, "dispatch": dispatch, "claim": claim}[path]
    cpu, wall = [], []
    for index in range(operations + operations // 5):  # the first fifth warms up
        began_cpu, began_wall = time.process_time(), time.perf_counter()
        await operation()
        if index >= operations // 5:
            cpu.append(time.process_time() - began_cpu)
            wall.append(time.perf_counter() - began_wall)
    await engine.dispose()
    return {
        "module": agent_wake.__file__,
        "cpu_us": statistics.median(cpu) * 1e6,
        "wall_us": statistics.median(wall) * 1e6,
    }


def run_side(source: Path, url: str, path: str, operations: int) -> dict[str, Any]:
    environment = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, __file__, "--child", path, "--url", url, "--operations", str(operations)]
    output = subprocess.run(command, env=environment, check=True, capture_output=True, text=True).stdout
    side: dict[str, Any] = json.loads(output.splitlines()[-1])
    if not side["module"].startswith(str(source)):
        raise RuntimeError(f"the child imported {side['module']}, not the code under {source}")
    return side


def compare(against: str, path: str, operations: int, alternations: int) -> None:
    from agent_wake import resolve_database_url
    from agent_wake.testing import ScratchDatabase

    database = ScratchDatabase(resolve_database_url(allow_embedded=True), prefix="agent_wake_ab")
    url = asyncio.run(database.create())
    with tempfile.TemporaryDirectory(prefix="agent-wake-ab-") as folder:
        worktree = Path(folder) / "old"
        git = ["git", "-C", str(REPOSITORY), "worktree"]
        subprocess.run([*git, "add", "--detach", "-q", str(worktree), against], check=True)
        try:
            asyncio.run(seed(url))
            sides: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
            for alternation in range(alternations):
                print(f"alternation {alternation + 1} of {alternations} ...", file=sys.stderr)
                # ABBA order: a drift in the database (dead rows, say) weighs on both sides alike.
                order = [("old", worktree / "src"), ("new", SOURCE)]
                for side, source in order if alternation % 2 == 0 else reversed(order):
                    sides[side].append(run_side(source, url, path, operations))
        finally:
            subprocess.run([*git, "remove", "--force", str(worktree)], check=True)
            asyncio.run(database.drop())
    old_cpu, new_cpu = (statistics.median(s["cpu_us"] for s in sides[side]) for side in ("old", "new"))
    old_wall, new_wall = (statistics.median(s["wall_us"] for s in sides[side]) for side in ("old", "new"))
    print(f"{path}: median per operation of each side, {alternations} runs of {operations} operations")
    print(f"{'':10}{'old (' + against + ')':>22}{'new (working tree)':>22}{'new/old':>10}")
    print(f"{'cpu µs':10}{old_cpu:>22,.0f}{new_cpu:>22,.0f}{new_cpu / old_cpu:>10.2f}")
    print(f"{'wall µs':10}{old_wall:>22,.0f}{new_wall:>22,.0f}{new_wall / old_wall:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", help="the git revision to compare the working tree with")
    parser.add_argument("--path", choices=PATHS, default="dispatch")
    parser.add_argument("--operations", type=int, help="operations per child (default 300; 50 for claim)")
    parser.add_argument("--alternations", type=int, default=4, help="runs of each side (default 4)")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(asyncio.run(measure(arguments.url, arguments.child, arguments.operations))))
        return
    if not arguments.against:
        parser.error("--against REVISION is required")
    operations = arguments.operations or (50 if arguments.path == "claim" else 300)
    compare(arguments.against, arguments.path, operations, arguments.alternations)


if __name__ == "__main__":
    main()

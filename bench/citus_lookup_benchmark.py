"""The webhook receiver's lookup on Citus: by bare subscription id (a fan-out
to every shard) against by (conversation_id, subscription_id) (one shard).

Seeds 2,000 subscriptions over 2,000 conversations into a fresh database on
the cluster (distributed with ``agent_wake.distribution``) and into a fresh
database on the single server, then times, per side, lookups of random
subscriptions in rounds that alternate the two ways (median of the rounds),
each lookup its own transaction through the repository:

    python bench/citus_lookup_benchmark.py \
        --single postgresql://postgres@127.0.0.1:5432/postgres --cluster /work/shared/citus/cluster

Prints lookups per second and client-side milliseconds per lookup; the
ratio to the single server's lookup by bare id is the figure to read.
"""

import argparse
import asyncio
import random
import statistics
import subprocess
import time
import uuid

from alembic import command
from sqlalchemy import pool

from agent_wake import SecretBox, WebhookSubscriptionRepository, alembic_config, create_engine_and_session_factory
from agent_wake.distribution import distribute_schema
from agent_wake.testing import ScratchDatabase

SUBSCRIPTIONS = 2_000


async def seed(url: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
    engine, _ = create_engine_and_session_factory(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(
                "INSERT INTO webhook_subscriptions (conversation_id, subscription_id, user_id, agent_id, "
                "secret_ciphertext) SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), "
                f"gen_random_uuid(), 'x' FROM generate_series(1, {SUBSCRIPTIONS})",
                execution_options={"agent_wake_spans_partitions": "benchmark: seeding"},
            )
            rows = await connection.exec_driver_sql(
                "SELECT conversation_id, subscription_id FROM webhook_subscriptions",
                execution_options={"agent_wake_spans_partitions": "benchmark: seeding"},
            )
            keys = [(row[0], row[1]) for row in rows]
        async with engine.connect() as connection:
            await connection.run_sync(distribute_schema, "public")
    finally:
        await engine.dispose()
    return keys


async def lookups_per_second(url: str, keys: list[tuple[uuid.UUID, uuid.UUID]], *, bare: bool, count: int) -> float:
    engine, sessions = create_engine_and_session_factory(url, pool_size=1)
    box = SecretBox.from_keys(SecretBox.generate_key())
    sample = random.sample(keys, count)
    try:
        async with sessions() as warm:
            await WebhookSubscriptionRepository(warm, box).get(*sample[0])
        started = time.perf_counter()
        for conversation_id, subscription_id in sample:
            async with sessions() as session, session.begin():
                repository = WebhookSubscriptionRepository(session, box)
                found = await (
                    repository.find_by_id(subscription_id) if bare else repository.get(conversation_id, subscription_id)
                )
                assert found is not None
        return count / (time.perf_counter() - started)
    finally:
        await engine.dispose()


async def measure(url: str, keys: list[tuple[uuid.UUID, uuid.UUID]], rounds: int, count: int) -> dict[str, float]:
    figures: dict[str, list[float]] = {"bare id": [], "conversation + id": []}
    for round_number in range(rounds):
        ways = [("bare id", True), ("conversation + id", False)]
        for label, bare in ways if round_number % 2 == 0 else reversed(ways):
            figures[label].append(await lookups_per_second(url, keys, bare=bare, count=count))
    return {label: statistics.median(values) for label, values in figures.items()}


async def measure_both(single: str, cluster_url: str, rounds: int, lookups: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    async with ScratchDatabase(single, prefix="agent_wake_lookup") as url:
        results["single server"] = await measure(url, await seed(url), rounds, lookups)
    results["Citus, 3 nodes"] = await measure(cluster_url, await seed(cluster_url), rounds, lookups)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", required=True, help="the single server's URL (a scratch database is made there)")
    parser.add_argument("--cluster", required=True, help="the Citus cluster script (its `db` command makes a database)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=300)
    args = parser.parse_args()

    name = f"agent_wake_lookup_{uuid.uuid4().hex[:10]}"
    made = subprocess.run(["bash", args.cluster, "db", name], capture_output=True, text=True, check=True)
    cluster_url = made.stdout.strip()
    try:
        command.upgrade(alembic_config(cluster_url), "head")
        results = asyncio.run(measure_both(args.single, cluster_url, args.rounds, args.lookups))
    finally:
        subprocess.run(["bash", args.cluster, "dropdb", name], check=True, capture_output=True)

    baseline = results["single server"]["bare id"]
    print(f"{'side':<16} {'lookup':<18} {'lookups/s':>10} {'ms each':>8} {'vs single bare':>15}")
    for side, figures in results.items():
        for label, per_second in figures.items():
            print(
                f"{side:<16} {label:<18} {per_second:>10.0f} {1000 / per_second:>8.2f} {per_second / baseline:>15.2f}"
            )


if __name__ == "__main__":
    main()

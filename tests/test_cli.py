"""The `agent-wake` command as an operator runs it: a separate process, its
output and its exit code."""

import io
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from cryptography.fernet import Fernet

from agent_wake._progress import ProgressBar
from agent_wake.testing.older_runner import build_with_older_runner
from tests.conftest import ScratchDatabases
from tests.test_adoption import AGENT_A, AGENT_B, build_populated, execute, on_connection, versions

AGENT_C = "agent_" + "c" * 32


def agent_wake(
    *args: str, url: str | None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AGENT_WAKE_")}
    env.update(extra_env or {})
    url_option = ["--url", url] if url is not None else []
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "agent_wake", command, *url_option, *rest],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def migrated(scratch_databases: ScratchDatabases) -> str:
    url = await scratch_databases.create()
    assert agent_wake("upgrade", url=url).returncode == 0
    return url


def test_the_console_script_is_installed_beside_python() -> None:
    script = shutil.which("agent-wake", path=str(Path(sys.executable).parent))
    assert script is not None
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("adopt", "upgrade", "prune-fires", "gc-orphans", "rotate-keys", "doctor"):
        assert command in shown


async def test_adopt_then_upgrade_every_agent_schema(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 3)
    await build_populated(url, AGENT_B, 6)

    adopted = agent_wake("adopt", "--schemas", "agent_*", url=url)
    dry = agent_wake("upgrade", "--schemas", "agent_*", "--dry-run", url=url)
    assert await on_connection(url, versions, AGENT_A) == {"agent_wake_0003"}
    upgraded = agent_wake("upgrade", "--schemas", "agent_*", url=url)

    assert adopted.returncode == 0, adopted.stderr
    assert f"{AGENT_A}: step 3 of the older runner; stamped agent_wake_0003" in adopted.stdout
    assert f"{AGENT_B}: step 6 of the older runner; stamped agent_wake_0006" in adopted.stdout
    assert dry.returncode == 0
    assert f"{AGENT_A}: would run agent_wake_0004" in dry.stdout
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert await on_connection(url, versions, AGENT_A) == {"agent_wake_0008"}
    assert await on_connection(url, versions, AGENT_B) == {"agent_wake_0008"}
    assert await on_connection(url, versions, "public") is None


async def test_adopt_reports_a_refused_schema_and_exits_1(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 6)
    await execute(url, f'DROP INDEX "{AGENT_A}".idx_wake_fires_conv_time')

    refused = agent_wake("adopt", "--schemas", AGENT_A, url=url)

    assert refused.returncode == 1
    assert "refused: its ledger says step 6, but table wake_fires: index idx_wake_fires_conv_time is missing" in (
        refused.stdout
    )


async def test_upgrade_stops_at_the_failing_schema_and_names_the_ones_not_attempted(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    for schema in (AGENT_A, AGENT_B, AGENT_C):
        await build_populated(url, schema, 5)
    assert agent_wake("adopt", "--schemas", "agent_*", url=url).returncode == 0
    await execute(url, f'ALTER TABLE "{AGENT_B}".agent_wake_schedules ADD COLUMN include_conversation_history text')

    failed = agent_wake("upgrade", "--schemas", "agent_*", url=url)

    assert failed.returncode == 1
    assert f"{AGENT_B}: failed: schema {AGENT_B}: revision agent_wake_0006 failed" in failed.stdout
    assert f"not attempted: {AGENT_C}" in failed.stdout
    assert await on_connection(url, versions, AGENT_C) == {"agent_wake_0005"}
    assert await on_connection(url, versions, AGENT_B) == {"agent_wake_0005"}


def test_a_bad_duration_is_a_usage_error() -> None:
    refused = agent_wake("prune-fires", "--older-than", "0d", url="postgresql://unused@127.0.0.1/unused")
    assert refused.returncode == 2
    assert "is not a duration" in refused.stderr


def test_no_database_url_is_a_configuration_error_naming_the_variable() -> None:
    refused = agent_wake("doctor", url=None)
    assert refused.returncode == 2
    assert "AGENT_WAKE_DATABASE_URL" in refused.stderr


def test_an_unreachable_database_exits_3() -> None:
    refused = agent_wake("doctor", url="postgresql://postgres@127.0.0.1:9/nowhere")
    assert refused.returncode == 3
    assert "cannot be reached" in refused.stderr


async def test_a_pattern_that_matches_no_schema_is_refused(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    refused = agent_wake("upgrade", "--schemas", "agent_*", url=url)
    assert refused.returncode == 2
    assert "no schema matches 'agent_*'" in refused.stderr


async def test_doctor_finds_nothing_on_a_fresh_database(scratch_databases: ScratchDatabases) -> None:
    url = await migrated(scratch_databases)

    healthy = agent_wake("doctor", url=url)

    assert healthy.returncode == 0, healthy.stdout
    assert "doctor: 0 findings" in healthy.stdout
    assert "ok: the partition guard refuses a statement that names no conversation" in healthy.stdout


async def test_doctor_reports_every_problem_and_exits_1(scratch_databases: ScratchDatabases) -> None:
    url = await migrated(scratch_databases)
    gone = uuid.uuid4()
    await execute(
        url,
        "INSERT INTO wake_fires (conversation_id, fire_id, status, actual_fired_at) "
        f"VALUES ('{gone}', gen_random_uuid(), 'dispatching', now() - interval '2 hours')",
        "INSERT INTO agent_wake_schedules (conversation_id, schedule_id, user_id, agent_id, schedule_type, "
        f"schedule_config) VALUES ('{gone}', gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'interval', "
        """'{"seconds": "often"}')""",
        "CREATE INDEX idx_wake_fires_status_leftover ON wake_fires (status)",
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idx_wake_fires_status_leftover'::regclass",
    )

    sick = agent_wake("doctor", url=url)

    assert sick.returncode == 1
    assert "FOUND: 1 fires have been dispatching for more than 0:15:00" in sick.stdout
    assert "FOUND: 1 schedule configs no longer validate" in sick.stdout
    assert "FOUND: INVALID indexes, left by a failed concurrent build: idx_wake_fires_status_leftover" in sick.stdout
    assert "FOUND: 1 fires, 1 schedules and 0 subscriptions belong to conversations that no longer exist" in (
        sick.stdout
    )
    assert "FOUND: the tables differ from the models" in sick.stdout


async def test_doctor_says_a_runner_schema_needs_adopting(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await build_with_older_runner(url, schema=AGENT_A, through_step=6)

    sick = agent_wake("doctor", "--schemas", AGENT_A, url=url)

    assert sick.returncode == 1
    assert "run `agent-wake adopt`" in sick.stdout


async def test_prune_fires_dry_run_counts_and_the_real_run_deletes(scratch_databases: ScratchDatabases) -> None:
    url = await migrated(scratch_databases)
    conversation = uuid.uuid4()
    await execute(
        url,
        "INSERT INTO wake_fires (conversation_id, fire_id, status, actual_fired_at) "
        f"SELECT '{conversation}', gen_random_uuid(), 'failed', now() - interval '40 days' FROM generate_series(1, 5)",
        "INSERT INTO wake_fires (conversation_id, fire_id, status) "
        f"VALUES ('{conversation}', gen_random_uuid(), 'failed')",
    )

    dry = agent_wake("prune-fires", "--older-than", "30d", "--dry-run", url=url)
    real = agent_wake("prune-fires", "--older-than", "30d", "--batch-size", "2", url=url)
    again = agent_wake("prune-fires", "--older-than", "30d", url=url)

    assert (dry.returncode, real.returncode, again.returncode) == (0, 0, 0)
    assert "public: would delete 5 fires" in dry.stdout
    assert "public: deleted 5 fires" in real.stdout
    assert "5/5" in real.stderr
    assert "public: deleted 0 fires" in again.stdout


async def test_gc_orphans_deletes_rows_of_conversations_that_are_gone(scratch_databases: ScratchDatabases) -> None:
    url = await migrated(scratch_databases)
    await execute(
        url,
        "INSERT INTO wake_fires (conversation_id, fire_id, status) "
        "SELECT gen_random_uuid(), gen_random_uuid(), 'fired' FROM generate_series(1, 3)",
    )

    collected = agent_wake("gc-orphans", url=url)

    assert collected.returncode == 0, collected.stderr
    assert "public: deleted 3 fires, 0 schedules, 0 subscriptions" in collected.stdout


async def test_rotate_keys_takes_its_keys_from_the_environment_only(scratch_databases: ScratchDatabases) -> None:
    url = await migrated(scratch_databases)
    old, new = Fernet.generate_key(), Fernet.generate_key()
    await execute(
        url,
        "INSERT INTO webhook_subscriptions (conversation_id, subscription_id, user_id, agent_id, secret_ciphertext) "
        f"VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), "
        f"convert_to('{Fernet(old).encrypt(b'hush').decode()}', 'UTF8'))",
    )
    keys = {"AGENT_WAKE_SECRET_KEYS": f"{new.decode()},{old.decode()}"}

    missing = agent_wake("rotate-keys", url=url)
    rotated = agent_wake("rotate-keys", url=url, extra_env=keys)
    again = agent_wake("rotate-keys", url=url, extra_env=keys)

    assert missing.returncode == 2
    assert "AGENT_WAKE_SECRET_KEYS" in missing.stderr
    assert rotated.returncode == 0, rotated.stderr
    assert "public: re-encrypted 1 secrets under the first key" in rotated.stdout
    assert "public: re-encrypted 0 secrets" in again.stdout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_redraws_in_place_on_a_terminal() -> None:
    stream = Terminal()
    bar = ProgressBar("prune", stream)
    bar.update(1, 4)
    bar.update(4, 4)
    bar.close()
    assert stream.getvalue() == (
        "\rprune [#######.......................] 1/4\rprune [##############################] 4/4\n"
    )


def test_the_progress_bar_writes_one_final_line_elsewhere() -> None:
    stream = io.StringIO()
    bar = ProgressBar("prune", stream)
    bar.update(1, 4)
    bar.update(3, 4)
    bar.close()
    assert stream.getvalue() == "prune [######################........] 3/4\n"

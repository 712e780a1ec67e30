"""The README's example runs as written."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quickstart_example_runs_against_a_migrated_database(wake_database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py")],
        env={**os.environ, "AGENT_WAKE_DATABASE_URL": wake_database_url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "claimed: True; last output: '3 new issues'",
        "webhook secret ok: True",
    ]

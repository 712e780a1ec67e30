"""Alembic environment shipped in the package; the logic lives in agent_wake.alembic_env."""

from agent_wake.alembic_env import run_migrations

run_migrations()

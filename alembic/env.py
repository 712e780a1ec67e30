"""Alembic environment of a checkout; the logic lives in the package."""

from agent_wake.alembic_env import run_migrations

run_migrations()

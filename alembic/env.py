"""Alembic environment of a checkout; the logic lives in the package.

A checkout may start the embedded PostgreSQL when no URL is given (the
README's quick start); the packaged environment never does.
"""

from agent_wake.alembic_env import run_migrations

run_migrations(allow_embedded=True)

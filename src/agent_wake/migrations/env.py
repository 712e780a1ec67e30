"""Alembic environment shipped in the package; the logic lives in agent_wake.alembic_env.

It does not let a missing URL start the embedded PostgreSQL: an installed
package is a deployed service's, which must name its database.
"""

from agent_wake.alembic_env import run_migrations

run_migrations()

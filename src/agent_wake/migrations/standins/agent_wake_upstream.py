"""Stand-in: conversations and agent_skills both exist.

The agent_wake branch starts from this revision id. Here, standalone, it
merges the two stand-in branches, so the history has one head and
``alembic upgrade head`` works. (With ``depends_on`` instead, Alembic would
count the stand-in revisions as heads of their own.)

A host application that owns those two tables writes its own revision with
this same id as a root of its own: ``down_revision = None`` and
``depends_on`` naming its revision(s) that create them. Our branch then
stays apart from the host's history, which keeps its own head: removing
our branch never touches a host revision.

Revision ID: agent_wake_upstream
Revises: conversations_0001, agent_skills_0001
"""

from collections.abc import Sequence

revision: str = "agent_wake_upstream"
down_revision: str | Sequence[str] | None = ("conversations_0001", "agent_skills_0001")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

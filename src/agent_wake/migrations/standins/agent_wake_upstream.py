"""Stand-in: conversations and agent_skills both exist.

The agent_wake branch starts from this revision id. A host application that
owns those two tables writes its own revision with this same id, after the
revisions that create them, and uses only our agent_wake branch.

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

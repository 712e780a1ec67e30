"""Stand-ins for the host application's ``conversations`` and ``agent_skills``
tables, so that agent-wake runs on its own and in tests.

They live on a declarative base of their own (:class:`StandinBase`): a host
that owns these two tables combines its metadata with
``agent_wake.Base.metadata``, which must then hold only the wake tables
(Alembic refuses two metadata objects that both define ``agent_skills``).
The wake tables' foreign keys name :class:`AgentSkill`'s ``skill_id``
column, which renders as ``REFERENCES agent_skills (skill_id)`` whichever
table of that name the database holds.
"""

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, PrimaryKeyConstraint, Text, UniqueConstraint, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["AgentSkill", "Conversation", "StandinBase"]


class StandinBase(DeclarativeBase):
    """Declarative base of the two stand-in tables; ``StandinBase.metadata``
    holds exactly ``conversations`` and ``agent_skills``."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        uuid.UUID: UUID(as_uuid=True),
        datetime: DateTime(timezone=True),
        str: Text(),
    }


class Conversation(StandinBase):
    """Stand-in for the host application's ``conversations`` table.

    Its primary key is ``(agent_id, conversation_id)``: the wake tables
    cannot have a foreign key on ``conversation_id`` alone, and have none.
    """

    __tablename__ = "conversations"
    __table_args__ = (PrimaryKeyConstraint("agent_id", "conversation_id", name="conversations_pkey"),)
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 (read by SQLAlchemy, never mutated)

    agent_id: Mapped[uuid.UUID]
    conversation_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    date_created: Mapped[datetime] = mapped_column(server_default=func.now())


class AgentSkill(StandinBase):
    """Stand-in for the host application's ``agent_skills`` table.

    ``skill_id`` is unique on its own: the target of the wake tables' skill
    foreign keys.
    """

    __tablename__ = "agent_skills"
    __table_args__ = (
        PrimaryKeyConstraint("agent_id", "skill_id", name="agent_skills_pkey"),
        UniqueConstraint("skill_id", name="agent_skills_skill_id_key"),
    )
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 (read by SQLAlchemy, never mutated)

    agent_id: Mapped[uuid.UUID]
    skill_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    name: Mapped[str]
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    date_created: Mapped[datetime] = mapped_column(server_default=func.now())
    date_updated: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

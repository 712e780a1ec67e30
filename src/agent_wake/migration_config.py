"""Where agent-wake's Alembic revisions live, and an Alembic ``Config`` for
them without an ``alembic.ini``.

Alembic is imported only when :func:`alembic_config` is called, so that
``import agent_wake`` stays free of it (and of Mako).
"""

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["PACKAGED_SCRIPT_LOCATION", "STANDIN_VERSIONS", "WAKE_VERSIONS", "alembic_config"]

PACKAGED_SCRIPT_LOCATION: Final = "agent_wake:migrations"
# The agent_wake branch alone: what a host application adds to its own
# version_locations.
WAKE_VERSIONS: Final = "agent_wake:migrations/versions"
# The stand-in conversations and agent_skills branches and the
# agent_wake_upstream revision that joins them.
STANDIN_VERSIONS: Final = "agent_wake:migrations/standins"


def alembic_config(url: str | None = None, *, schema: str | None = None) -> "Config":
    """An Alembic ``Config`` for the packaged scripts (stand-ins included), for use without an ``alembic.ini``.

    ``url`` and ``schema`` are what ``-x url=`` and ``-x schema=`` give on the command line.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", PACKAGED_SCRIPT_LOCATION)
    config.set_main_option("version_locations", f"{STANDIN_VERSIONS} {WAKE_VERSIONS}")
    config.set_main_option("path_separator", "space")
    if url is not None:
        config.attributes["url"] = url
    if schema is not None:
        config.attributes["schema"] = schema
    return config

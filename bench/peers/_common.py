"""Small helpers shared by the peers: URL rewriting, database recreation, child plumbing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# /work/main (the directory that holds ``bench/``): children run with it as cwd and on sys.path.
REPO_ROOT = Path(__file__).resolve().parents[2]

# Lines a child prints on stdout that carry protocol messages; anything else (library
# chatter) is ignored.
MSG_PREFIX = "@@BENCH "


def with_database(url: str, dbname: str) -> str:
    """``url`` with its path (database name) replaced by ``dbname``.

    Accepts ``postgres://``, ``postgresql://`` and ``postgresql+driver://`` URLs; the
    result is a plain ``postgresql://`` URL.
    """
    parts = urlsplit(url)
    scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, "/" + dbname, parts.query, ""))


def recreate_database(server_url: str, dbname: str) -> None:
    """DROP (with FORCE) and CREATE ``dbname`` on the server ``server_url`` points at."""
    import psycopg
    from psycopg import sql

    admin = with_database(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def drop_database(server_url: str, dbname: str) -> None:
    import psycopg
    from psycopg import sql

    admin = with_database(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Keep the project's Django settings out of the peers' children.
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if extra:
        env.update(extra)
    return env


def spawn_child(
    module: str, args: list[str], stderr_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``python -m module args...`` with pipes for stdin/stdout and stderr to a file."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=str(REPO_ROOT),
        env=child_env(extra_env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(stderr_path, "wb"),
        text=True,
        bufsize=1,
    )


def read_msg(proc: subprocess.Popen, stderr_path: Path) -> dict:
    """Next protocol message from ``proc``'s stdout; raise with its stderr if it died."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            tail = Path(stderr_path).read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"peer child exited (rc={proc.returncode}) before reporting:\n{tail}"
            )
        if line.startswith(MSG_PREFIX):
            return json.loads(line[len(MSG_PREFIX) :])


def send_msg(obj: dict) -> None:
    """Child side: print one protocol message on stdout."""
    sys.stdout.write(MSG_PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()

"""A throwaway PgBouncer in transaction pooling mode in front of the local PostgreSQL.

`make test` step [c] runs the integration tests of the engine and the reviews through it:

    python tests/pgbouncer.py --dir var/test-pgbouncer --db test_sluice_pgbouncer -- CMD...

starts Debian's pgbouncer on a free loopback port (config and auth file written under --dir,
``auth_type = trust`` for the local user), runs CMD with DATABASE_URL pointing at it,
SLUICE_PGBOUNCER=1 and SLUICE_PUSH_DATABASE_URL (the review pages' LISTEN) straight to the test
database, stops it and exits with CMD's status. The test database is created and dropped
directly on PostgreSQL (``DROP DATABASE`` fails while PgBouncer still holds idle server
connections to it), so CMD must run pytest with ``--reuse-db``: pytest-django then creates it
through PgBouncer only when missing and never drops it.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

CONFIG = """\
[databases]
; Any database name is passed through to the PostgreSQL below.
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {auth_file}
pool_mode = transaction
max_client_conn = 500
default_pool_size = 40
server_idle_timeout = 30
; psycopg sends none of these, but a client that does must not be refused.
ignore_startup_parameters = extra_float_digits,options
admin_users = {user}
stats_users = {user}
"""


def binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else ""
    )
    if not found:
        raise SystemExit("error: pgbouncer is not installed (apt-get install pgbouncer)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, upstream: str, listen: int) -> Path:
    url = urlsplit(upstream)
    user = url.username or "postgres"
    directory.mkdir(parents=True, exist_ok=True)
    auth_file = directory / "userlist.txt"
    auth_file.write_text(f'"{user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        CONFIG.format(
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            listen=listen,
            auth_file=auth_file,
            user=user,
        )
    )
    return ini


def start(directory: Path, upstream: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start pgbouncer in the foreground (its log in --dir) and wait until it answers."""
    port = free_port()
    ini = write_config(directory, upstream, port)
    cmd = [binary(), str(ini)]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        user = "postgres" if _user_exists("postgres") else "nobody"
        cmd[1:1] = ["-u", user]
    log = directory / "pgbouncer.log"
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: pgbouncer exited ({proc.returncode}), see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("error: pgbouncer did not listen within 15 s")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def drop_database(upstream: str, name: str) -> None:
    with psycopg.connect(upstream, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def through(upstream: str, port: int) -> str:
    """The upstream URL with PgBouncer's address instead of PostgreSQL's."""
    url = urlsplit(upstream)
    auth = f"{url.username}@" if url.username else ""
    return url._replace(netloc=f"{auth}127.0.0.1:{port}").geturl()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--upstream", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--db", required=True, help="the test database to drop before and after")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    drop_database(args.upstream, args.db)
    proc, port = start(args.dir, args.upstream)
    env = {
        **os.environ,
        "DATABASE_URL": through(args.upstream, port),
        "SLUICE_TEST_DB_NAME": args.db,
        "SLUICE_PGBOUNCER": "1",
        "SLUICE_PGBOUNCER_PORT": str(port),
        # The review pages' LISTEN needs a session: straight to PostgreSQL, as in production.
        "SLUICE_PUSH_DATABASE_URL": urlsplit(args.upstream)._replace(path=f"/{args.db}").geturl(),
    }
    print(f"==> pgbouncer (transaction pooling) on 127.0.0.1:{port} -> {args.upstream}", flush=True)
    try:
        rc = subprocess.call(args.command, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drop_database(args.upstream, args.db)
    return rc


if __name__ == "__main__":
    sys.exit(main())

# -*- test-case-name: tests.integration.test_store_postgres -*-
"""
A private PostgreSQL cluster for the tests: made with C{initdb} in a temporary
directory, listening on a Unix socket there only, started on first use and stopped
when the test process exits (one per trial worker).

PostgreSQL refuses to run as root: as root (CI), the cluster belongs to the
C{nobody} user and the server runs through C{runuser}. Without PostgreSQL's
binaries, L{cluster} raises L{SkipTest} with the reason.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile

from twisted.trial.unittest import SkipTest

#: The user the cluster runs as when the tests run as root.
ROOT_USER = "nobody"

#: Where Debian puts the server's binaries (not on PATH).
_DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"


def binaries() -> str | None:
    """
    @return: the directory of C{initdb} and C{pg_ctl}, C{None} if there is none.
    """
    found = shutil.which("initdb")
    if found is not None and shutil.which("pg_ctl") is not None:
        return os.path.dirname(os.path.realpath(found))
    for directory in sorted(glob.glob(_DEBIAN_BINARIES), reverse=True):
        if os.path.exists(os.path.join(directory, "initdb")):
            return directory
    return None


class Cluster:
    """
    A running private cluster.

    @ivar base: its temporary directory (data and socket).
    @ivar url: the URL of its C{lbtest} database.
    """

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.base = tempfile.mkdtemp(prefix="lbtwist-pg-")
        self.data = os.path.join(self.base, "data")
        self.socket_dir = self.base
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", ROOT_USER, "--"]
            pw = _uid_gid(ROOT_USER)
            os.chown(self.base, *pw)
        os.chmod(self.base, 0o755)
        self._run(
            "initdb", "-D", self.data, "-U", "lbtest", "-A", "trust", "--no-sync", "-E", "UTF8"
        )
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-w",
            "-l",
            os.path.join(self.base, "server.log"),
            "-o",
            f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -p 5432",
            "start",
        )
        self.url = f"postgresql://lbtest@/postgres?host={self.socket_dir}&port=5432"
        self.admin = f"postgresql://lbtest@/postgres?host={self.socket_dir}&port=5432"
        self._databases = 0

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as_user, os.path.join(self.bindir, tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def new_database(self) -> str:
        """
        A new empty database of the cluster.

        @return: its URL.
        """
        import psycopg

        self._databases += 1
        name = f"lbtest{self._databases}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return f"postgresql://lbtest@/{name}?host={self.socket_dir}&port=5432"

    def new_schema(self, url: str) -> str:
        """
        A new empty schema in the database of C{url} (cheaper than a database).

        @return: the URL of the database with that schema as its search path.
        """
        import psycopg

        self._databases += 1
        name = f"lbschema{self._databases}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{url}&options=-csearch_path%3D{name}"

    def stop(self) -> None:
        """
        Stop the server and remove its directory.
        """
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def _uid_gid(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


_cluster: Cluster | None = None


def cluster() -> Cluster:
    """
    The test process's cluster, started on first use.

    @raise SkipTest: no PostgreSQL binaries or no psycopg here.
    """
    global _cluster
    if _cluster is None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise SkipTest("psycopg is not installed") from None
        bindir = binaries()
        if bindir is None:
            raise SkipTest(
                "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"
            )
        _cluster = Cluster(bindir)
        atexit.register(_cluster.stop)
    return _cluster

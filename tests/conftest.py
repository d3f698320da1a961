"""Shared fixtures.

``postgres_url`` gives the SQLAlchemy URL of a real PostgreSQL server for the multi-process
storage tests. In order of preference:

1. the URL in the environment variable ``ISBO_TEST_POSTGRES_URL`` (``.ci/run`` starts a
   throwaway server and sets it);
2. a temporary server that the fixture starts itself with ``initdb`` and ``pg_ctl`` on
   127.0.0.1 when the PostgreSQL server binaries are installed (Debian/Ubuntu package
   ``postgresql``; when running as root the server runs as the ``postgres`` user);
3. otherwise the tests that need it are skipped, and the skip reason says which of the above
   was missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_URL_ENV = "ISBO_TEST_POSTGRES_URL"
_DATABASE = "isbo_test"
_USER = "isbo"


def _postgres_bindir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``, preferring the newest Debian install."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent
    return None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_connection(url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()


class _TemporaryServer:
    """A throwaway PostgreSQL cluster in ``root``, listening on 127.0.0.1:``port`` only."""

    def __init__(self, bindir: Path, root: Path, port: int, run_as: str | None) -> None:
        self.bindir, self.root, self.port, self.run_as = bindir, root, port, run_as
        self.data_dir = root / "data"
        self.log_file = root / "server.log"

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        try:
            subprocess.run(
                [str(self.bindir / program), *args],
                check=check,
                capture_output=True,
                user=self.run_as,
                timeout=60,
            )
        except subprocess.CalledProcessError as e:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            stderr = e.stderr.decode(errors="replace").strip()
            raise subprocess.SubprocessError(f"{program} failed: {stderr} {log}".strip()) from e

    def start(self) -> None:
        self._run(
            "initdb", "-D", str(self.data_dir), "-A", "trust", "-U", _USER,
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        # -F: no fsync; -k: the Unix socket goes to the throwaway directory, not /var/run.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "30",
            "-o", options, "start",
        )  # fmt: skip
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", _USER, _DATABASE)

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL database the tests may create studies in."""
    pytest.importorskip("psycopg2", reason="psycopg2 (the `test` extra) is not installed")
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        try:
            _check_connection(url)
        except Exception as e:  # The configured server must work: fail rather than skip.
            pytest.fail(f"{POSTGRES_URL_ENV}={url!r} is set but unusable: {e}")
        yield url
        return

    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip(
            f"no PostgreSQL server: {POSTGRES_URL_ENV} is unset and initdb/pg_ctl were not "
            "found (install the `postgresql` package, e.g. `apt-get install postgresql`, "
            "or run the tests through .ci/run)"
        )
    run_as: str | None = None
    if os.geteuid() == 0:
        # initdb refuses to run as root.
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip(
                "no PostgreSQL server: running as root and there is no `postgres` user to run "
                f"initdb as; set {POSTGRES_URL_ENV} instead"
            )
        run_as = "postgres"

    root = Path(tempfile.mkdtemp(prefix="isbo-postgres-"))
    if run_as is not None:
        shutil.chown(root, user=run_as)
    server = _TemporaryServer(bindir, root, _free_loopback_port(), run_as)
    try:
        server.start()
    except (OSError, subprocess.SubprocessError) as e:
        server.stop()
        pytest.skip(f"could not start a temporary PostgreSQL server from {bindir}: {e}")
    try:
        yield f"postgresql+psycopg2://{_USER}@127.0.0.1:{server.port}/{_DATABASE}"
    finally:
        server.stop()

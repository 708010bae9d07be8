"""A throwaway PostgreSQL server for tests: its own cluster in a temporary folder, on a free port, stopped and
deleted on exit. Uses Debian's packaged binaries (``/usr/lib/postgresql/*/bin``) or those on PATH; PostgreSQL
refuses to run as root, so as root the cluster belongs to the ``postgres`` user the package creates.

    with TempPostgres() as pg:
        pg.url        # postgresql+psycopg://autotune:<password>@127.0.0.1:<port>/postgres
        pg.stop(); pg.start()   # the database lost and back, for storage-fault tests
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["TempPostgres", "postgres_bin_dir"]


def postgres_bin_dir() -> Path | None:
    """The folder with initdb and pg_ctl, newest version first; None where PostgreSQL is not installed."""
    packaged = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]),
                      reverse=True)
    found = packaged[0] if packaged else shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TempPostgres:
    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH)")
        self.bin_dir = bin_dir
        self.password = secrets.token_hex(8)
        self.port = _free_port()
        self.url = f"postgresql+psycopg://autotune:{self.password}@127.0.0.1:{self.port}/postgres"
        self._dir = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
        self._user = None if os.geteuid() != 0 else ("postgres" if _user_exists("postgres") else "nobody")

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", self._user, "--"] if self._user else []
        subprocess.run([*prefix, *argv], check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)

    def __enter__(self) -> TempPostgres:
        data = self._dir / "data"
        pwfile = self._dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user:
            ids = pwd.getpwnam(self._user)
            os.chown(self._dir, ids.pw_uid, ids.pw_gid)
            os.chown(pwfile, ids.pw_uid, ids.pw_gid)
        self._run(str(self.bin_dir / "initdb"), "-D", str(data), "-U", "autotune", f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync")
        self.start()
        return self

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self._dir} -c fsync=off"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self._dir / "data"), "-l", str(self._dir / "log"),
                  "-o", opts, "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not listen on port {self.port}")

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "immediate", "-w", "stop")

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self._dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True

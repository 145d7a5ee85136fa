"""The slot lock: "count the trials, create the next one" as one step across every worker."""

from __future__ import annotations

import fcntl
import zlib
from pathlib import Path

import sqlalchemy


class SlotLock:
    """A lock around "count the trials, create the next one", shared by every worker.

    SQLite (one host): an flock on a file beside the database. PostgreSQL (any host): a
    session-level advisory lock. Both are released by the operating system or the server when
    the holder dies, so a killed worker never blocks the others.
    """

    def __init__(self, url: str, study_name: str):
        self._key = zlib.crc32(study_name.encode())  # one lock per study
        self._held = False
        if url.startswith("sqlite"):
            path = Path(url.removeprefix("sqlite:///")).with_suffix(".slots.lock")
            self._file = open(path, "a+")  # noqa: SIM115 - open for the worker's lifetime
            self._conn = None
        else:
            self._file = None
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self._conn = engine.connect()

    def acquire(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_EX)
        else:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            self._conn.commit()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        else:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._conn.commit()

    def close(self) -> None:
        self.release()
        if self._file is not None:
            self._file.close()
        else:
            self._conn.close()

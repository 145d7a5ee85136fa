"""The slot lock: "count the trials, create the next one" as one step across every worker."""

from __future__ import annotations

import fcntl
import zlib

import sqlalchemy

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.search.storage import file_of


class SlotLock:
    """A lock around "count the trials, create the next one", shared by every worker.

    SQLite (one host) and a journal file (hosts sharing a file system): an flock on a file
    beside it, which NFSv4, Lustre (mounted with flock), GPFS and BeeGFS share between hosts.
    PostgreSQL (any host): a session-level advisory lock. All are released by the operating
    system, the file server or the database server when the holder dies, so a killed worker
    never blocks the others.
    """

    def __init__(self, url: str, study_name: str):
        self._key = zlib.crc32(study_name.encode())  # one lock per study
        self._held = False
        if (storage_file := file_of(url)) is not None:
            path = storage_file.with_name(storage_file.stem + ".slots.lock")
            self._file = open(path, "a+")  # noqa: SIM115 - open for the worker's lifetime
            self._conn = None
        else:
            self._file = None
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self._conn = engine.connect()

    def acquire(self) -> None:
        if self._file is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX)
            except OSError as err:  # e.g. Lustre without -o flock: ENOSYS
                raise ConfigError(
                    f"hpo.storage: {self._file.name} cannot be locked on this file system "
                    f"({err.strerror}); use postgresql://user@host/db"
                ) from None
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

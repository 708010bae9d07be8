"""Study storage: Optuna's SQLAlchemy storage, with our defaults and one-line errors.

SQLite (``sqlite:///studies/autotune.db``) by default; any SQLAlchemy URL (PostgreSQL) when several
workers or machines share one study. Database errors become :class:`StorageError`.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from autotune.errors import StorageError, UsageError

__all__ = ["DEFAULT_STORAGE", "open_storage", "open_storage_readonly", "redact_url", "load_study", "study_names",
           "sqlite_dir"]

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"


def redact_url(url: str) -> str:
    """The URL without its password (for profiles and messages)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def sqlite_dir(url: str) -> Path | None:
    """Folder holding a SQLite database file, else None."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database).expanduser().resolve().parent
    return None


def open_storage(url: str | None, create_dirs: bool = True) -> optuna.storages.RDBStorage:
    """Open (and create the schema of) the storage at ``url``; a bad or unreachable URL is a StorageError."""
    url = url or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage URL {redact_url(url)!r} is not a valid SQLAlchemy URL "
                           "(e.g. sqlite:///studies/autotune.db or postgresql+psycopg://user:pw@host/db)") from None
    folder = sqlite_dir(url)
    if folder is not None:
        if create_dirs:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create {folder} for storage {url}: {e.strerror}") from None
        elif not folder.is_dir():
            raise StorageError(f"storage {url}: folder {folder} does not exist")
    kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        # Heartbeats let a later run mark trials of a crashed worker as failed instead of RUNNING forever.
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60, grace_period=180,
                                          skip_compatibility_check=False)
    except ImportError as e:
        raise StorageError(f"storage {redact_url(url)}: database driver missing ({e.name or e}); "
                           "for PostgreSQL: pip install 'autotune[postgres]'") from None
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot open storage {redact_url(url)}: {first}") from None


def open_storage_readonly(url: str | None) -> optuna.storages.RDBStorage:
    """Open an existing storage so that nothing can write through it, whoever asks (our readers, and
    optuna-dashboard's handlers that delete a study or save a note): SQLite through a ``mode=ro`` URI, which the
    sqlite3 library itself enforces; PostgreSQL with every session's transactions read-only
    (``default_transaction_read_only``), which the server enforces. Optuna is told not to create tables. Other
    databases are refused rather than opened writable."""
    url = url or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage URL {redact_url(url)!r} is not a valid SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    kwargs: dict = {}
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise StorageError(f"storage {redact_url(url)}: an in-memory database holds no studies")
        path = Path(parsed.database).expanduser().resolve()
        if not path.is_file():
            raise StorageError(f"storage {redact_url(url)}: no database file at {path}")
        # pysqlite hands the database to sqlite3.connect(uri=True) as it is: a file: URI with its mode.
        url = parsed.set(database=f"file:{path}?mode=ro", query={**parsed.query, "uri": "true"}) \
            .render_as_string(hide_password=False)
        kwargs["connect_args"] = {"timeout": 60}
    elif backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10, "options": "-c default_transaction_read_only=on"}
        kwargs["pool_pre_ping"] = True
    else:
        raise StorageError(f"storage {redact_url(url)}: read-only access is implemented for SQLite and PostgreSQL, "
                           f"not {backend}")
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
    except ImportError as e:
        raise StorageError(f"storage {redact_url(url)}: database driver missing ({e.name or e}); "
                           "for PostgreSQL: pip install 'autotune[postgres]'") from None
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError, ValueError) as e:
        while e.__cause__ is not None:  # Optuna wraps the driver's error (connection refused, ...) in its own
            e = e.__cause__  # type: ignore[assignment]
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot open storage {redact_url(url)} read-only: {first}") from None


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    names = study_names(storage)
    if name not in names:
        known = ", ".join(names) or "none"
        raise UsageError(f"no study named {name!r} in this storage (studies: {known})")
    return optuna.load_study(study_name=name, storage=storage)

"""Study storage: Optuna's SQLAlchemy storage, with our defaults and one-line errors.

SQLite (``sqlite:///studies/autotune.db``) by default; any SQLAlchemy URL (PostgreSQL) when several
workers or machines share one study. Database errors become :class:`StorageError`.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from autotune.errors import RunHoldLost, StorageError, StorageUnavailable, UsageError

__all__ = ["DEFAULT_STORAGE", "open_storage", "open_storage_readonly", "redact_url", "load_study", "study_names",
           "sqlite_dir", "holds_alone", "fail_dead_processes_trials", "heartbeat_s", "stale_after_s", "retried_trial",
           "MAX_RETRIES", "record_heartbeat_now", "fail_as_dead", "trials_with_heartbeat", "hold_study_run",
           "run_lock_key"]

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"
# How often a trial cut short (a signal, a dead worker) is queued again: a point that kills its worker every time
# (the machine's OOM killer) must not come back forever.
MAX_RETRIES = 3


def redact_url(url: str) -> str:
    """The URL without its password (for profiles, logs and messages): SQLAlchemy's own rendering, or for a URL it
    cannot parse, everything between ``://user:`` and ``@`` masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def heartbeat_s() -> int:
    """Seconds between a running trial's heartbeats (``AUTOTUNE_HEARTBEAT_S``, default 60); a trial whose heartbeats
    stopped (:func:`stale_after_s`) is failed and queued again by the next process that looks."""
    text = os.environ.get("AUTOTUNE_HEARTBEAT_S", "60")
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"AUTOTUNE_HEARTBEAT_S={text!r}: expected a whole number of seconds, at least 1")
    return int(text)


def stale_after_s() -> int:
    """Seconds after its last heartbeat that a running trial is failed as its process's death (three heartbeats:
    one late heartbeat of a busy process is not a death)."""
    return 3 * heartbeat_s()


# Lock files held for the life of this process, by database (flock ends with it, however it ends). A second
# open of the same file in this process (a study run again from one Python session) reuses its lock: flock
# would refuse a second open file description even in the process that holds the first.
_LOCKS: dict[Path, int] = {}


def _lock_sqlite(path: Path) -> None:
    """Refuse a second process on one SQLite file: SQLite serves one writer at a time, and a worker's trials would
    wait on another's writes or fail on a locked database. The kernel drops the lock when the process ends, a
    SIGKILL included, so a dead run never blocks the next."""
    if path in _LOCKS:
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a folder that takes no new file: the database could not be written there either
        raise StorageError(f"storage {path}: cannot create its lock file {lock_path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        raise UsageError(f"storage {path} is in use by another autotune process ({holder or 'pid unknown'}); SQLite "
                         "serves one process: to run several (autotune worker, or another run), share a study in "
                         "PostgreSQL with --storage postgresql+psycopg://USER:PASSWORD@HOST/DB") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}".encode())
    _LOCKS[path] = fd


# Connections that hold a PostgreSQL advisory lock on a study's run, by database and study, for the life of this
# process: the server drops the lock when the connection ends, however this process ends (a SIGKILL closes it).
_RUN_LOCKS: dict[tuple[str, str], sqlalchemy.engine.Connection] = {}
# How soon the server finds the lock's connection dead when its machine is gone without closing it (no FIN):
# keepalive probes after this many idle seconds, this far apart, this many (~1 min), not the kernel's 2 hours.
_LOCK_KEEPALIVE = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}


def run_lock_key(study_name: str) -> int:
    """The PostgreSQL advisory lock (a signed 64-bit key) a run of ``study_name`` holds: :func:`hold_study_run`."""
    return int.from_bytes(hashlib.blake2b(f"autotune run {study_name}".encode(), digest_size=8).digest(), "big",
                          signed=True)


def hold_study_run(storage: optuna.storages.BaseStorage, study_name: str, again: bool = False) -> None:
    """Refuse a second `autotune run` of one study in PostgreSQL while the first lives (SQLite refuses any second
    process: :func:`_lock_sqlite`). Two runs at once both re-measured the same finalists, each stored its own
    re-measurements of a trial over the other's (one run's measurement lost), and each printed a verdict that
    `best` did not show. Workers join a run instead. Held until this process ends; nothing for other storages.

    ``again``: the run that holds it, before its final comparison. The hold lives on its own connection, which the
    server may have ended since (an administrator, a restart, a pooler): then it is taken again, and where another
    run took it meanwhile this one stops (:class:`RunHoldLost`) rather than compare the finalists beside it."""
    if not isinstance(storage, optuna.storages.RDBStorage) or storage.engine.dialect.name != "postgresql":
        return
    held = (storage.engine.url.render_as_string(hide_password=True), study_name)
    if (holder := _RUN_LOCKS.get(held)) is not None:  # this process's own run, again (resumed in one Python session)
        try:
            holder.execute(sqlalchemy.text("SELECT 1"))
            holder.commit()
            return
        except SQLAlchemyError:  # its connection lost with the database, and the lock with it: taken again below
            del _RUN_LOCKS[held]
            holder.close()
    key = run_lock_key(study_name)
    try:
        connection = storage.engine.connect()
        for setting, value in _LOCK_KEEPALIVE.items():
            connection.execute(sqlalchemy.text(f"SET {setting} = {int(value)}"))
        if (connection.dialect.server_version_info or (0,)) >= (14,):
            # the connection idles for the run's life: a server's idle_session_timeout (PostgreSQL 14+, set by some
            # managed databases) would end it, and the lock with it, while the run went on
            connection.execute(sqlalchemy.text("SET idle_session_timeout = 0"))
        locked = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
        connection.commit()  # the lock is the session's: no transaction left open while the study runs
    except SQLAlchemyError as e:
        raise StorageUnavailable(f"cannot reach storage {held[0]}: {_first_line(e)}") from None
    if not locked:
        connection.close()
        if again:
            raise RunHoldLost(f"study {study_name!r}: this run's hold on it ended with its database connection, and "
                              "another `autotune run` holds it now: this run stops before its final comparison, "
                              "which that run makes; every trial finished is in the study")
        raise UsageError(f"study {study_name!r} is being run by another `autotune run` on this database; join it "
                         f"with `autotune worker --study {shlex.quote(study_name)} --storage URL`, or run it again "
                         "once that run has ended")
    _RUN_LOCKS[held] = connection


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's SQLAlchemy storage, with the claim of a waiting trial made atomic between this process's threads.

    Optuna pops an enqueued trial (a baseline) by reading its state and writing RUNNING only if it read WAITING,
    counting on ``SELECT ... FOR UPDATE``. SQLite ignores FOR UPDATE, and Python's sqlite3 runs the read outside the
    write's transaction: two trial threads asking at once both claimed the same enqueued trial (8 times in 30 with
    two threads, Optuna 5.0, ``tests/test_storage_claim.py``), both ran it, and the second one's tell failed with
    "Cannot tell a COMPLETE trial". PostgreSQL locks the row itself, and processes on one SQLite file are refused
    (:func:`_lock_sqlite`), so a lock between threads is enough."""

    _claim_lock = threading.Lock()

    def set_trial_state_values(self, trial_id: int, state: optuna.trial.TrialState,
                               values: Sequence[float] | None = None) -> bool:
        if state != optuna.trial.TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        with self._claim_lock:
            return super().set_trial_state_values(trial_id, state, values)


def sqlite_dir(url: str) -> Path | None:
    """Folder holding a SQLite database file, else None."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database).expanduser().resolve().parent
    return None


def holds_alone(url: str) -> bool:
    """Whether this process is the only one that can run trials in the storage: a SQLite file it holds locked
    (:func:`_lock_sqlite`). PostgreSQL is shared with workers."""
    return sqlite_dir(url) is not None and Path(str(make_url(url).database)).expanduser().resolve() in _LOCKS


def fail_dead_processes_trials(study: optuna.Study, url: str) -> list[int]:
    """Fail and queue again (as Optuna's heartbeat callback does) every trial still RUNNING in a study this process
    holds alone (:func:`holds_alone`): no other process can be running it, so its process died (SIGKILL, a crash, a
    machine lost) and there is no need to wait three heartbeats for it. Returns the trials' numbers; none for
    PostgreSQL, where another worker may be running them and the heartbeat decides."""
    if not holds_alone(url):
        return []
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        retry(study, study.trials[trial.number])
    return [t.number for t in running]


def _trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def record_heartbeat_now(trial: optuna.Trial) -> None:
    """Record a heartbeat of ``trial`` now, as Optuna's heartbeat thread does once its objective runs (that thread
    records its first one on its own time): after this, Optuna's stale check finds the trial's process's death.
    Nothing where the storage keeps no heartbeats."""
    storage = trial.storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
        return
    storage.record_heartbeat(_trial_id(storage, trial.study.study_name, trial.number))


# Optuna's own table of heartbeats (one row per trial, written by its heartbeat thread and record_heartbeat): part
# of its schema, which its migrations keep, but with no public way to read it.
_HEARTBEATS = sqlalchemy.table("trial_heartbeats", sqlalchemy.column("trial_id"))
_TRIALS = sqlalchemy.table("trials", sqlalchemy.column("trial_id"), sqlalchemy.column("number"),
                           sqlalchemy.column("study_id"))


def trials_with_heartbeat(storage: optuna.storages.BaseStorage, study_name: str) -> set[int]:
    """The numbers of the study's trials of which a heartbeat was ever recorded: their processes got past Optuna's
    ask, whatever autotune version they run (Optuna's heartbeat thread records the first one as the objective
    starts), and a stopped one is Optuna's stale check's to find. None in a storage without a database (Optuna's
    in-memory one, which keeps no heartbeats)."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        return set()
    study_id = storage.get_study_id_from_name(study_name)
    query = (sqlalchemy.select(_TRIALS.c.number)
             .join(_HEARTBEATS, _HEARTBEATS.c.trial_id == _TRIALS.c.trial_id)
             .where(_TRIALS.c.study_id == study_id))
    with storage.engine.connect() as connection:
        return {int(number) for (number,) in connection.execute(query)}


def fail_as_dead(study: optuna.Study, storage: optuna.storages.RDBStorage, number: int) -> None:
    """Fail RUNNING trial ``number`` as its process's death and queue a copy of it through the storage's own retry
    callback (the one Optuna's heartbeat check calls: the same copy, the same MAX_RETRIES). A trial that finished
    meanwhile is left as it is."""
    trial_id = _trial_id(storage, study.study_name, number)
    try:
        if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
            return
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    if (retry := storage.get_heartbeat_stale_trial_callback()) is not None:
        retry(study, storage.get_trial(trial_id))


def open_storage(url: str | None, create: bool = True, exclusive: bool = False) -> optuna.storages.RDBStorage:
    """Open (and create the schema of) the storage at ``url``: a bad URL is a StorageError (exit 2), a database
    that does not answer StorageUnavailable (exit 1). ``create`` False: a SQLite database must exist already (a
    worker joins a study a run made), and none is made where it does not. ``exclusive``: this process runs trials;
    on SQLite no other process may (:func:`_lock_sqlite`)."""
    url = url or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage URL {redact_url(url)!r} is not a valid SQLAlchemy URL "
                           "(e.g. sqlite:///studies/autotune.db or postgresql+psycopg://user:pw@host/db)") from None
    folder = sqlite_dir(url)
    opened = url  # the URL SQLAlchemy is given; messages name the one given here
    if folder is not None:
        database = Path(str(parsed.database)).expanduser().resolve()
        exists = _database_file_exists(url, database)  # before anything is made for it
        if create:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create {folder} for storage {url}: {e.strerror}") from None
        elif not folder.is_dir():
            raise StorageError(f"storage {url}: folder {folder} does not exist")
        elif not exists:
            raise StorageError(f"storage {url}: no database file at {database}")
        if exclusive:
            _lock_sqlite(database)
        # SQLite opens the URL's path as written, "~" a folder of the current one: it is handed the file that was
        # checked and locked above
        opened = parsed.set(database=str(database)).render_as_string(hide_password=False)
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
        return _RDBStorage(
            opened, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s(), grace_period=stale_after_s(),
            skip_compatibility_check=False,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except ImportError as e:
        raise StorageError(f"storage {redact_url(url)}: database driver missing ({e.name or e}); "
                           "for PostgreSQL: pip install 'autotune[postgres]'") from None
    except (OperationalError, optuna.exceptions.StorageInternalError) as e:
        if (refused := _refused_for_the_url(e, url)) is not None:
            raise refused from None
        raise StorageUnavailable(f"cannot reach storage {redact_url(url)}: {_first_line(_driver_error(e))}") from None
    except (SQLAlchemyError, OSError, ValueError) as e:
        raise StorageError(f"cannot open storage {redact_url(url)}: {_first_line(e)}") from None


# What a PostgreSQL server says when it answers but refuses the connection for what the URL names (its user, its
# password, its database), in the words libpq reports it: a failed connection comes with no SQLSTATE to go by. A
# server that is starting up, shutting down or full refuses too, but that is the database's state, not the URL's.
_REFUSED_FOR_THE_URL = re.compile(r'FATAL:\s+((?:\w+ )?authentication failed for user "[^"]*"'
                                  r'|(?:database|role) "[^"]*" does not exist|no pg_hba\.conf entry for .*)')


def _refused_for_the_url(error: BaseException, url: str) -> StorageError | None:
    """Bad input, one line in the server's words, where the server refused the connection for the URL's user,
    password or database; None where the error is another (nothing listens there, a host name that does not
    resolve: the database unreachable). Optuna may wrap the driver's error: the errors it was raised from count."""
    for cause in _causes(error):
        if match := _REFUSED_FOR_THE_URL.search(str(cause)):
            return StorageError(f"storage {redact_url(url)}: the server refused the connection: "
                                f"{match.group(1).strip()}")
    return None


def _database_file_exists(url: str, database: Path) -> bool:
    """Whether a SQLite storage's ``database`` file exists. A path the system cannot look up (a name longer than the
    file system takes, a folder on the way that cannot be searched) is a one-line StorageError naming the storage,
    the same for `run`, a worker and the readers."""
    try:  # is_file() answers False for a missing path only; these raise
        return database.is_file()
    except OSError as e:
        raise StorageError(f"storage {redact_url(url)}: cannot look up its database file {database}: "
                           f"{e.strerror or e}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def retried_trial(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the failed trial that ``trial``, a copy Optuna's retry callback queued, runs again: the last of
    its ``retry_history`` (its ``failed_trial`` names the first of a chain of retries, inherited copy to copy)."""
    history = trial.system_attrs.get("retry_history") or ()
    return int(history[-1]) if history else None


def open_storage_readonly(url: str | None) -> optuna.storages.RDBStorage:
    """Open an existing storage so that nothing can write through it, whoever asks (our readers, and
    optuna-dashboard's handlers that delete a study or save a note): SQLite through a ``mode=ro`` URI, which the
    sqlite3 library itself enforces; PostgreSQL with every session's transactions read-only
    (``default_transaction_read_only``), which the server enforces. Optuna is told not to create tables. Other
    databases are refused rather than opened writable."""
    url = given = url or DEFAULT_STORAGE  # the URL as given: what every message names
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
        if not _database_file_exists(url, path):
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
        raise StorageError(f"storage {redact_url(given)}: database driver missing ({e.name or e}); "
                           "for PostgreSQL: pip install 'autotune[postgres]'") from None
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError, ValueError) as e:
        if (refused := _refused_for_the_url(e, given)) is not None:
            raise refused from None
        unreachable = backend == "postgresql" and _raised_from(e, OperationalError)
        e = _driver_error(e)  # type: ignore[assignment]
        if unreachable:  # the server does not answer, as for `run` and a worker: not the URL's fault
            raise StorageUnavailable(f"cannot reach storage {redact_url(given)}: {_first_line(e)}") from None
        raise StorageError(f"cannot open storage {redact_url(given)} read-only: {_first_line(e)}") from None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from, outermost first: Optuna wraps SQLAlchemy's error, which wraps the
    driver's."""
    current: BaseException | None = error
    while current is not None:
        yield current
        current = current.__cause__


def _driver_error(error: BaseException) -> BaseException:
    """The error ``error`` was first raised as, in the driver's words (connection refused, ...), without the
    wrappers' (SQLAlchemy's names the driver's exception class before them)."""
    *_, innermost = _causes(error)
    return innermost


def _raised_from(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` or an error it was raised from is a ``kind``."""
    return any(isinstance(cause, kind) for cause in _causes(error))


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """The storage's studies by name. Not through Optuna's study summaries: they read every trial of every study
    (6 s of a `best` on a storage of 30 studies of 100 trials)."""
    return optuna.get_all_study_names(storage)


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    names = study_names(storage)
    if name not in names:
        known = ", ".join(names) or "none"
        raise UsageError(f"no study named {name!r} in this storage (studies: {known})")
    return optuna.load_study(study_name=name, storage=storage)

"""One exception root; the CLI maps each class to an exit code and a one-line message."""
from __future__ import annotations

__all__ = [
    "AutotuneError",
    "UsageError",
    "NoFeasibleConfigError",
    "EngineStartError",
    "StorageError",
    "StorageUnavailable",
    "ServerUnreachable",
    "Stopped",
]


class AutotuneError(Exception):
    """Root of every error the tool reports on one line. Exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class UsageError(AutotuneError):
    """Bad input from the user: flags, files, presets, URLs. Exit code 2."""

    exit_code = 2


class NoFeasibleConfigError(AutotuneError):
    """The study ended without any configuration meeting the latency limit. Exit code 3."""

    exit_code = 3


class ServerUnreachable(UsageError):
    """The server does not answer ``/v1/models``, or does not serve the model asked for: in a study, between
    levels, its server died or stopped answering (a trial's crash); given by the user, a bad URL."""


class StorageError(UsageError):
    """The study storage cannot be opened (bad URL, a user, password or database the server refuses, an unreadable
    file)."""


class StorageUnavailable(AutotuneError):
    """The study storage does not answer (the database is down or unreachable): exit code 1, nothing written."""


class RunHoldLost(AutotuneError):
    """A run's hold on its PostgreSQL study ended with its database connection (an administrator's
    pg_terminate_backend, a server restart, a pooler that recycled it) and another run took the study meanwhile:
    exit code 1, before the final comparison, which that run makes."""


class EngineStartError(AutotuneError):
    """A server did not become ready. ``failure_class`` is one of oom, kv_too_small, crash, timeout,
    port_in_use, bad_flags; ``log_tail`` holds the last lines of its log."""

    def __init__(self, message: str, failure_class: str = "crash", log_tail: str = "") -> None:
        super().__init__(message)
        self.failure_class = failure_class
        self.log_tail = log_tail


class Stopped(KeyboardInterrupt):
    """SIGTERM/SIGHUP arrived during a trial. A KeyboardInterrupt so that Optuna records the trial as FAIL
    (it leaves one that ends in SystemExit RUNNING forever); ``exit_code`` is 128 + the signal number."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"stopped by signal {exit_code - 128}")
        self.exit_code = exit_code

"""The servers a tuner started, one small JSON file each in a folder (per study: ``<out>/<study>/servers/``), so
that the next run can stop any that a dead run left behind.

The launcher writes an entry when a server's process group exists and removes it once the group is gone. An
entry that remains means its tuner ended without stopping the server (SIGKILL, a crash, the machine's OOM
killer). The watchdog (:mod:`autotune.engines.watchdog`) already stops such a group within seconds; the ledger
is the second line, for what outlived even that (the watchdog killed with its tuner).

:func:`stop_leftovers` only touches a group it can prove is the one recorded: same machine and boot, its tuner
gone (a live tuner, e.g. a second worker on this machine, keeps its servers), and a member of the group with the
recorded start time whose command line holds the launch's unique served-model-name. Nothing is ever stopped by
name pattern.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from autotune.engines.watchdog import group_members
from autotune.gpu_ids import GpuId

__all__ = ["ServerEntry", "record_server", "forget_server", "stop_leftovers", "process_start_ticks"]

logger = logging.getLogger(__name__)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (``/proc/PID/stat`` field 22): with the pid, it names
    one process for the life of the machine (a pid alone is reused). None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # field 3 (state) is fields[0]
    return int(fields[19]) if len(fields) > 19 else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class ServerEntry:
    """One started server: its process group (led by its watchdog), the server's own process, and its tuner."""

    served_model_name: str
    pgid: int
    pgid_start_ticks: int  # the group leader's (the watchdog's) start
    server_pid: int
    server_start_ticks: int
    port: int
    gpu_ids: tuple[GpuId, ...]  # as the server's CUDA_VISIBLE_DEVICES named them: reported, not used to find it
    host: str
    boot_id: str
    tuner_pid: int
    tuner_start_ticks: int

    @classmethod
    def for_group(cls, served_model_name: str, pgid: int, server_pid: int, port: int,
                  gpu_ids: tuple[GpuId, ...]) -> ServerEntry:
        tuner = os.getpid()
        return cls(served_model_name, pgid, process_start_ticks(pgid) or 0, server_pid,
                   process_start_ticks(server_pid) or 0, port, tuple(gpu_ids), socket.gethostname(), _boot_id(),
                   tuner, process_start_ticks(tuner) or 0)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "gpu_ids": list(self.gpu_ids)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ServerEntry:
        # str(): an older tuner's entry holds integer indices
        return cls(**{**data, "gpu_ids": tuple(str(g) for g in data["gpu_ids"])})  # type: ignore[arg-type, union-attr]

    def on_this_machine(self) -> bool:
        return self.host == socket.gethostname() and self.boot_id == _boot_id()

    def tuner_alive(self) -> bool:
        return process_start_ticks(self.tuner_pid) == self.tuner_start_ticks

    def identified_members(self) -> list[int]:
        """The group's live members, when a member proves the group is the one recorded (its start time as
        recorded and the served name in its command line); else empty."""
        members = group_members(self.pgid)
        recorded = {self.pgid: self.pgid_start_ticks, self.server_pid: self.server_start_ticks}
        for pid in members:
            if pid in recorded and process_start_ticks(pid) == recorded[pid] \
                    and self.served_model_name in _cmdline(pid):
                return members
        return []


def _entry_path(folder: Path, served_model_name: str) -> Path:
    return folder / f"{served_model_name}.json"


def record_server(folder: Path, entry: ServerEntry) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = _entry_path(folder, entry.served_model_name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry.to_json()))
    os.replace(tmp, path)  # never a half-written entry


def forget_server(folder: Path, served_model_name: str) -> None:
    _entry_path(folder, served_model_name).unlink(missing_ok=True)


def stop_leftovers(folder: Path, grace_s: float = 5.0) -> list[ServerEntry]:
    """Stop every recorded server of this machine whose tuner is gone; returns those stopped. Entries whose
    group is gone (or is no longer provably ours) are removed; those of a live tuner are left alone."""
    stopped = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            entry = ServerEntry.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            logger.warning("unreadable server entry %s (%s): removed", path, e)
            path.unlink(missing_ok=True)
            continue
        if not entry.on_this_machine():
            continue  # another machine's, or a boot ago (then nothing of it runs)
        if entry.tuner_alive():
            continue
        if entry.identified_members():
            # the run says it through its progress (Progress.leftover_stopped): a warning would print it twice
            logger.info("stopping server %s (group %d, port %d, GPUs %s) left by a tuner that is gone",
                        entry.served_model_name, entry.pgid, entry.port, ",".join(entry.gpu_ids))
            _stop_group(entry, grace_s)
            stopped.append(entry)
        path.unlink(missing_ok=True)
    return stopped


def _stop_group(entry: ServerEntry, grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(entry.pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and group_members(entry.pgid):
            time.sleep(0.1)
        if not group_members(entry.pgid):
            return

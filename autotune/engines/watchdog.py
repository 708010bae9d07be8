"""The dead-man switch of one server's process group. Standard library only: the launcher runs this file by its
path, so that it starts in a few tens of milliseconds without importing the package.

    python watchdog.py FD GRACE_S SERVED_NAME

The launcher starts it first, as the leader of a new process group, then starts the server inside that group.
It blocks reading FD, the read end of a pipe whose write end only the tuner holds. However the tuner ends
(SIGKILL and crashes included), the kernel closes that write end; the read returns end-of-file and the watchdog
stops the whole group: SIGTERM, up to GRACE_S seconds for the other members to exit, then SIGKILL (itself
included). A server therefore never outlives its tuner by more than GRACE_S and a few tenths of a second.

Why a process and not ``prctl(PR_SET_PDEATHSIG)`` in the child: the death signal reaches only the direct child
(vLLM's engine-core processes are grandchildren), and it fires when the *thread* that forked the child ends,
which for trials run on worker threads is long before the tuner dies. SERVED_NAME (the launch's unique
``--served-model-name``) is only there to make this process's command line identify the group
(:mod:`autotune.engines.ledger`).

It ignores SIGTERM: a normal stop SIGTERMs the group, and a tuner that dies while it waits for a server that holds
on (SIGKILL, a third Ctrl-C) must still leave a watchdog to stop that server. Once the server is gone the tuner
closes its end of the pipe, and this process, finding no one else in the group, ends.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """Every process's /proc/PID/stat fields after its command name (state, ppid, pgrp, session, ...; utime and
    stime at 11 and 12), with its pid; one gone meanwhile is skipped."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry), stat[stat.rfind(")") + 2:].split()


def group_members(pgid: int) -> list[int]:
    """The live members of a process group, by pid. Zombies (dead, awaiting a reaper that may never come in a
    container whose PID 1 does not reap) hold no resources and do not count."""
    return [pid for pid, fields in proc_stats()
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X")]


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the server
    fd, grace_s = int(argv[0]), float(argv[1])
    while True:
        try:
            if not os.read(fd, 64):
                break  # end of file: the tuner is gone
        except InterruptedError:
            continue
        except OSError:
            break
    me = os.getpid()
    pgid = os.getpgid(0)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:
        return 0
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and set(group_members(pgid)) - {me}:
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

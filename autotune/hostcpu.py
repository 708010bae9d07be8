"""How busy the host's CPUs were while a level ran, and how much of that was other processes'.

On an H200 lease, busy loops on the host's 16 CPUs doubled what a ~1,000-token prefill added to its engine step,
put P99 TTFT up 89% and throughput down 20%, while the GPU did the same work (docs/results/sim-accuracy.md,
"A host's own card"): vLLM's steps that carry a prefill wait on the CPU. A level measured while other processes
take the host's CPUs measures the host as much as the configuration, so each level records what they took.

"Ours" is the tuner's own process (the load generator runs in it) and every process it started, theirs included
(the servers of every trial it runs: vLLM's API server, engine core and workers, and their watchdogs); everything
else busy on the host is "others", other tuners' servers among them. Linux only (/proc): elsewhere nothing is
measured.
"""
from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from autotune.engines.watchdog import proc_stats
from autotune.records import HostCpuRecord

__all__ = ["HostCpuMeter", "cpu_line_jiffies", "cpus_jiffies", "descendants_jiffies", "OTHERS_NOTED_CORES",
           "PREFILL_WAITS", "saturated", "others_note", "host_text", "busy_host_caveat", "winner_notes"]

# A level says so where the host's CPUs were saturated (less than one idle) and other processes held a whole CPU
# or more of them. On an H200 lease (16 CPUs), busy loops on 4 of them left the host 33% busy and changed nothing
# measurable (a prefill −0.7% [−24, +29], two levels a side); on all 16 they doubled every prefill step. What
# lies between was not measured: the engine's threads wait once no CPU is idle, so saturation is the line drawn.
OTHERS_NOTED_CORES = 1.0
# vLLM's, and the sim server's, which paces its modelled steps on the wall clock in one Python process
PREFILL_WAITS = "a served engine's steps wait on the host's CPU (vLLM's that carry a prefill among them)"


@dataclass(frozen=True)
class _Snapshot:
    busy_jiffies: int
    idle_jiffies: int
    steal_jiffies: int
    ours_jiffies: int  # of this process and its descendants


def cpu_line_jiffies(fields: Sequence[str]) -> tuple[int, int, int]:
    """(busy, idle, steal) jiffies of a /proc/stat "cpu" line, its fields after the name: busy is user, nice,
    system, irq and softirq (guest time is inside user), idle is idle and iowait, steal what the hypervisor gave to
    other guests."""
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq, idle + iowait, steal


def cpus_jiffies(cpus: Collection[int]) -> tuple[int, int, int] | None:
    """(busy, idle, steal) jiffies since boot of the CPUs ``cpus`` summed, from /proc/stat's per-CPU lines; None
    without them."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = idle = steal = 0
    seen = False
    for line in lines:
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus and len(fields) >= 8:
            b, i, s = cpu_line_jiffies(fields)
            busy, idle, steal, seen = busy + b, idle + i, steal + s, True
    return (busy, idle, steal) if seen else None


def descendants_jiffies(root: int) -> int:
    """CPU jiffies (user and system, threads included) of the process ``root`` and of every process it started,
    theirs included. Each counts its reaped children's too (cutime, cstime), so a descendant that exits keeps its
    time in the sum, in its parent's."""
    jiffies: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    for pid, fields in proc_stats():
        if len(fields) > 14:
            jiffies[pid] = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
            children.setdefault(int(fields[1]), []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += jiffies.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


class HostCpuMeter:
    """``start()`` before a level, ``stop()`` after it: the CPUs this process may run on (its affinity: a
    container's cpuset) over the level, as a :class:`~autotune.records.HostCpuRecord`; ours being this process and
    its descendants."""

    def __init__(self) -> None:
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._start: _Snapshot | None = None

    def _snapshot(self) -> _Snapshot | None:
        host = cpus_jiffies(set(self.cpus))
        if host is None:
            return None
        return _Snapshot(*host, ours_jiffies=descendants_jiffies(os.getpid()))

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> HostCpuRecord | None:
        """None where /proc is missing, or no CPU time passed."""
        start, end = self._start, self._snapshot()
        if start is None or end is None:
            return None
        busy = end.busy_jiffies - start.busy_jiffies
        total = busy + end.idle_jiffies - start.idle_jiffies + end.steal_jiffies - start.steal_jiffies
        if total <= 0:
            return None
        # ours may also run on CPUs outside the affinity, and a descendant re-parented away takes its time along:
        # others stay within [0, busy]
        others = min(busy, max(0, busy - (end.ours_jiffies - start.ours_jiffies)))
        n = len(self.cpus)
        return HostCpuRecord(cpus=n, busy_cores=n * busy / total, others_cores=n * others / total,
                             steal_share=(end.steal_jiffies - start.steal_jiffies) / total)


def saturated(host: HostCpuRecord | None) -> bool:
    """The host's CPUs had less than one idle on average, and other processes held OTHERS_NOTED_CORES or more."""
    return host is not None and host.cpus - host.busy_cores < 1.0 and host.others_cores >= OTHERS_NOTED_CORES


def others_note(levels: Iterable[HostCpuRecord | None]) -> str:
    """"other processes took up to 7.9 of the host's 16 CPUs, all of them busy" where any of ``levels`` ran on a
    :func:`saturated` host; "" otherwise."""
    busiest = max((h for h in levels if saturated(h)), key=lambda h: h.others_cores, default=None)
    if busiest is None:
        return ""
    return f"other processes took up to {busiest.others_cores:.1f} of the host's {busiest.cpus} CPUs, all of them busy"


def host_text(host: HostCpuRecord) -> str:
    """One level's host CPUs in a few words: "host CPUs: 3.2 of 16 busy, 0.4 by other processes, 0.1% stolen"."""
    return (f"host CPUs: {host.busy_cores:.1f} of {host.cpus} busy, {host.others_cores:.1f} by other processes, "
            f"{100 * host.steal_share:.1f}% stolen")


def busy_host_caveat(sample_s: float = 0.5) -> str:
    """Before a study on a served engine: a caution where the host is :func:`saturated` over ``sample_s``, saying
    how many CPUs other processes take and what it does to the figures; "" otherwise."""
    meter = HostCpuMeter()
    meter.start()
    time.sleep(sample_s)
    host = meter.stop()
    if not saturated(host):
        return ""
    assert host is not None
    return (f"other processes are taking {host.others_cores:.1f} of the host's {host.cpus} CPUs, all of them busy, "
            f"as the study starts: {PREFILL_WAITS}; busy loops on all of an H200 host's CPUs doubled vLLM's prefill "
            "steps (P99 TTFT +89%), so its figures would measure the host as much as the configurations")


def winner_notes(hosts: Iterable[HostCpuRecord | None]) -> list[str]:
    """The profile's note where the winner was measured (its trial's levels and its re-measurements, ``hosts``) on a
    :func:`saturated` host; none otherwise."""
    note = others_note(hosts)
    if not note:
        return []
    return [f"{note}, while the winner was measured: {PREFILL_WAITS}, so its figures may be lower than this "
            "configuration gives on a quiet host (each level's host CPUs are in the study's records)"]

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
from collections.abc import Iterable
from dataclasses import dataclass

from autotune.engines.watchdog import proc_stats
from autotune.records import HostCpuRecord

__all__ = ["HostCpuMeter", "host_cpu_jiffies", "descendants_jiffies", "OTHERS_NOTED_CORES", "others_note",
           "host_text", "busy_host_caveat", "winner_notes"]

# From one whole CPU of other processes on, a level says so. vLLM's API server and engine core each keep a CPU
# busy, so on a small host one more busy CPU already competes with them; the effect measured (busy loops on 16 of
# 16 CPUs: prefill steps twice as long) is the far end.
OTHERS_NOTED_CORES = 1.0


@dataclass(frozen=True)
class _Snapshot:
    busy: int  # jiffies of every CPU: user, nice, system, irq, softirq (guest time is inside user)
    idle: int  # idle and iowait
    steal: int  # given by the hypervisor to other guests
    ours: int  # user and system jiffies of our processes


def host_cpu_jiffies() -> tuple[int, int, int] | None:
    """(busy, idle, steal) jiffies of all the host's CPUs since boot, from /proc/stat; None without it."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return user + nice + system + irq + softirq, idle + iowait, steal


def descendants_jiffies(root: int) -> int:
    """User and system jiffies of the process ``root`` and of every process it started, theirs included, threads
    included (a process's /proc stat sums its threads)."""
    jiffies: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    for pid, fields in proc_stats():
        if len(fields) > 12:
            jiffies[pid] = int(fields[11]) + int(fields[12])
            children.setdefault(int(fields[1]), []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += jiffies.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


class HostCpuMeter:
    """``start()`` before a level, ``stop()`` after it: the host's CPUs over the level as a
    :class:`~autotune.records.HostCpuRecord`, ours being this process and its descendants."""

    def __init__(self) -> None:
        self._start: _Snapshot | None = None

    def _snapshot(self) -> _Snapshot | None:
        host = host_cpu_jiffies()
        if host is None:
            return None
        return _Snapshot(*host, ours=descendants_jiffies(os.getpid()))

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> HostCpuRecord | None:
        """None where /proc is missing, or no CPU time passed."""
        start, end = self._start, self._snapshot()
        if start is None or end is None:
            return None
        busy, idle, steal = end.busy - start.busy, end.idle - start.idle, end.steal - start.steal
        total = busy + idle + steal
        if total <= 0:
            return None
        cpus = os.cpu_count() or 1
        # a process of ours that ended during the level took its time with it: others can come out a little high,
        # never below zero
        others = max(0, busy - (end.ours - start.ours))
        return HostCpuRecord(cpus=cpus, busy_cores=cpus * busy / total, others_cores=cpus * others / total,
                             steal_share=steal / total)


def others_note(levels: Iterable[HostCpuRecord | None]) -> str:
    """"other processes used up to 7.9 of 16 CPUs" where any of ``levels`` had OTHERS_NOTED_CORES or more of
    them; "" otherwise."""
    busiest = max((h for h in levels if h is not None), key=lambda h: h.others_cores, default=None)
    if busiest is None or busiest.others_cores < OTHERS_NOTED_CORES:
        return ""
    return f"other processes used up to {busiest.others_cores:.1f} of {busiest.cpus} CPUs"


def host_text(host: HostCpuRecord) -> str:
    """One level's host CPUs in a few words: "host CPUs: 3.2 of 16 busy, 0.4 by other processes, 0.1% stolen"."""
    return (f"host CPUs: {host.busy_cores:.1f} of {host.cpus} busy, {host.others_cores:.1f} by other processes, "
            f"{100 * host.steal_share:.1f}% stolen")


def busy_host_caveat(sample_s: float = 0.5) -> str:
    """Before a study on a served engine: "" on a quiet host; where other processes use OTHERS_NOTED_CORES or
    more of its CPUs over ``sample_s``, a caution saying how many and what it does to the figures."""
    meter = HostCpuMeter()
    meter.start()
    time.sleep(sample_s)
    host = meter.stop()
    if host is None or host.others_cores < OTHERS_NOTED_CORES:
        return ""
    return (f"other processes are using {host.others_cores:.1f} of {host.cpus} CPUs as the study starts: vLLM's "
            "steps that carry a prefill wait on the CPU (busy loops on all of an H200 host's CPUs doubled them, "
            "P99 TTFT +89%), so its figures would measure the host as much as the configurations")


def winner_notes(hosts: Iterable[HostCpuRecord | None]) -> list[str]:
    """The profile's note where other processes used a whole CPU or more while the winner was measured (its
    trial's levels and its re-measurements, ``hosts``); none otherwise."""
    note = others_note(hosts)
    if not note:
        return []
    return [f"{note} while the winner was measured: vLLM's steps that carry a prefill wait on the CPU, so its "
            "figures may be lower than this configuration gives on a quiet host (each level's host CPUs are in the "
            "study's records)"]

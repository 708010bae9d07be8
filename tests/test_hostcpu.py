"""autotune.hostcpu: what the host's CPUs did during a level, ours (this process and the server's process group)
told apart from other processes'; and how a level and a trial say so."""
from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from rich.console import Console

from autotune import hostcpu
from autotune.cli.ui import StudyView
from autotune.hostcpu import HostCpuMeter, busy_host_caveat, host_text, others_note, saturated, winner_notes
from autotune.metrics import Distribution, BenchResult, pool
from autotune.records import HostCpuRecord, LevelRecord, Measurement, P99Record, TrialResult

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the meter reads Linux's /proc")

# a busy loop that ends by itself after 30 s, should a test die before killing it
SPIN = [sys.executable, "-c", "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass"]
CPUS = len(os.sched_getaffinity(0))


def _stranger() -> int:
    """A busy loop started by a shell that exits at once: nobody's child here."""
    return int(subprocess.run(["sh", "-c", '"$0" "$@" > /dev/null 2>&1 & echo $!', *SPIN], capture_output=True,
                              text=True, check=True).stdout)


TICKS_S = os.sysconf("SC_CLK_TCK")


class _FakeProc:
    """/proc as the meter reads it, scripted: each read of the host's CPUs and of our processes' jiffies takes the
    next value of its list (a start and a stop per level)."""

    def __init__(self, monkeypatch, cpus: list[tuple[int, int, int]], ours: list[int]) -> None:
        self.cpus, self.ours = iter(cpus), iter(ours)
        monkeypatch.setattr(hostcpu, "cpus_jiffies", lambda _cpus: next(self.cpus))
        monkeypatch.setattr(hostcpu, "descendants_jiffies", lambda _root: next(self.ours))


def _measure() -> HostCpuRecord | None:
    meter = HostCpuMeter()
    meter.start()
    return meter.stop()


def test_a_busy_server_of_ours_and_a_busy_stranger(monkeypatch) -> None:
    """Over a level of 100 jiffies per CPU, a loop this process started (as it starts a trial's server) and one
    it did not each keep about one CPU busy: only the stranger's counts as other processes'."""
    n = CPUS
    _FakeProc(monkeypatch, cpus=[(1000, 5000, 0), (1000 + 195, 5000 + 100 * n - 195, 0)], ours=[300, 300 + 97])
    host = _measure()
    assert host is not None and host.cpus == CPUS
    assert 0.5 < host.others_cores < 1.5  # the stranger, not ours
    assert host.busy_cores - host.others_cores > 0.5  # our loop
    assert 0.0 <= host.steal_share < 0.5
    assert host.others_cores == pytest.approx(n * 98 / (100 * n)) and host.busy_cores == pytest.approx(1.95)


def test_a_server_of_ours_that_ends_during_the_level_stays_ours(monkeypatch) -> None:
    """A child stopped and reaped in the level: its time moves into this process's reaped children's (cutime,
    cstime), so ours keeps it and none of it shows as other processes'; a descendant re-parented away takes its
    time out of ours, and others never exceed what was busy."""
    _FakeProc(monkeypatch, cpus=[(0, 0, 0), (100, 100 * CPUS - 100, 0)], ours=[500, 600])
    host = _measure()
    assert host is not None and host.others_cores < 0.5
    _FakeProc(monkeypatch, cpus=[(0, 0, 0), (100, 100 * CPUS - 100, 0)], ours=[500, 300])  # ours fell by 200
    assert _measure().others_cores == pytest.approx(100 / (100 * CPUS) * CPUS)  # clamped to the busy


@pytest.mark.slow
def test_ours_are_this_process_and_its_children_reaped_ones_included() -> None:
    """On the live /proc: a child's busy second counts in ours while it runs and stays there once it is reaped;
    a stranger's does not."""
    before = hostcpu.descendants_jiffies(os.getpid())
    ours = subprocess.Popen(SPIN)
    try:
        # until the child has a third of a CPU-second of its own: on a busy host that takes longer than a second
        deadline = time.monotonic() + 25
        while (child := hostcpu.descendants_jiffies(ours.pid)) < 0.3 * TICKS_S and time.monotonic() < deadline:
            time.sleep(0.1)
        running = hostcpu.descendants_jiffies(os.getpid())
    finally:
        ours.kill()
        ours.wait()
    reaped = hostcpu.descendants_jiffies(os.getpid())
    assert child >= 0.3 * TICKS_S, "the spinning child got no third of a CPU-second in 25 s"
    assert running - before >= child  # its time counts in ours while it runs
    assert reaped >= running  # in this process's cutime now
    stranger = _stranger()
    try:
        time.sleep(1.0)
        assert hostcpu.descendants_jiffies(os.getpid()) - reaped < 0.3 * TICKS_S  # this process sleeps
    finally:
        os.kill(stranger, signal.SIGKILL)


def test_the_host_cpus_jiffies_are_the_cpus_time() -> None:
    """On the live /proc: over half a second, busy + idle + stolen jiffies of the CPUs this process may use add up
    to their number times half a second."""
    cpus = set(os.sched_getaffinity(0))
    start = hostcpu.cpus_jiffies(cpus)
    t0 = time.monotonic()
    time.sleep(0.5)
    end = hostcpu.cpus_jiffies(cpus)
    elapsed_s = time.monotonic() - t0
    assert start is not None and end is not None
    spent = sum(e - s for s, e in zip(start, end))
    assert spent == pytest.approx(len(cpus) * elapsed_s * TICKS_S, rel=0.2)


def test_a_study_on_a_busy_host_starts_with_a_caution(monkeypatch) -> None:
    _FakeProc(monkeypatch, cpus=[(0, 0, 0), (20, 100 * CPUS - 20, 0)], ours=[0, 0])
    assert busy_host_caveat(0.0) == ""  # a quiet host
    # every CPU this process may use taken by others
    _FakeProc(monkeypatch, cpus=[(0, 0, 0), (100 * CPUS, 0, 0)], ours=[0, 0])
    caveat = busy_host_caveat(0.0)
    assert caveat.startswith("other processes are taking ") and "CPUs, all of them busy, as the study starts" in caveat


def test_a_meter_never_started_measures_nothing() -> None:
    assert HostCpuMeter().stop() is None


BUSY = HostCpuRecord(cpus=16, busy_cores=15.8, others_cores=12.5, steal_share=0.002)
QUIET = HostCpuRecord(cpus=16, busy_cores=3.1, others_cores=0.3, steal_share=0.0)


# 4 busy loops on 16 CPUs changed nothing measurable on an H200 lease; 16 of 16 doubled every prefill step
SOME = HostCpuRecord(cpus=16, busy_cores=5.3, others_cores=4.0, steal_share=0.0)


def test_a_note_only_where_the_cpus_were_saturated_by_other_processes() -> None:
    assert others_note([QUIET, SOME, None]) == ""
    assert others_note([QUIET, BUSY, None]) == "other processes took up to 12.5 of the host's 16 CPUs, all of them busy"
    assert others_note([]) == ""
    ours_alone = HostCpuRecord(cpus=2, busy_cores=1.95, others_cores=0.4, steal_share=0.0)  # our own load saturates
    assert not saturated(ours_alone) and saturated(BUSY) and not saturated(None)
    assert host_text(QUIET) == "host CPUs: 3.1 of 16 busy, 0.3 by other processes, 0.0% stolen"


def test_the_profile_notes_a_winner_measured_on_a_busy_host() -> None:
    assert winner_notes([QUIET, None]) == []
    [note] = winner_notes([QUIET, BUSY])
    assert note.startswith("other processes took up to 12.5 of the host's 16 CPUs, all of them busy, while the winner")


def _level(host: HostCpuRecord | None) -> LevelRecord:
    return LevelRecord(concurrency=16, output_tok_s=1000.0, total_tok_s=9000.0, request_s=8.0,
                       p99={"ttft": P99Record(150.0, 140.0, 160.0, math.nan)}, runs=1, feasible=True,
                       p99_ttft_ms=150.0, p99_tpot_ms=11.0, p99_itl_ms=45.0, p99_e2el_ms=1500.0, completed=48,
                       failed=0, duration_s=7.0, wall_s=25.0, status="ok", host_cpu=host)


def test_levels_and_measurements_keep_the_host() -> None:
    assert LevelRecord.from_json(_level(BUSY).to_json()) == _level(BUSY)
    assert LevelRecord.from_json(_level(None).to_json()).host_cpu is None
    older = _level(None).to_json()
    del older["host_cpu"]  # a level recorded before autotune measured the host
    assert LevelRecord.from_json(older).host_cpu is None
    measurement = Measurement(1000.0, {"ttft": 150.0}, {"host_cpu": BUSY.to_json()})
    assert Measurement.from_json(measurement.to_json()).host_cpu == BUSY
    assert Measurement(1000.0, {"ttft": 150.0}).host_cpu is None


def _run(host: HostCpuRecord | None) -> BenchResult:
    d = Distribution(1.0, 1.0, 1.0, 1.0, 1.0)
    return BenchResult(completed=1, failed=0, duration_s=1.0, output_tok_s=1.0, total_tok_s=1.0, request_s=1.0,
                       ttft_ms=d, tpot_ms=d, itl_ms=d, e2el_ms=d,
                       extra={"host_cpu": host.to_json()} if host else {})


def test_a_pooled_level_keeps_its_busiest_host() -> None:
    assert pool([_run(QUIET), _run(BUSY), _run(None)]).extra["host_cpu"] == BUSY.to_json()
    assert "host_cpu" not in pool([_run(None), _run(None)]).extra


def test_the_console_says_when_other_processes_took_the_cpus() -> None:
    out = io.StringIO()
    view = StudyView(Console(file=out, width=200, force_terminal=False))
    view.trial_started(0, {}, "vllm-defaults")
    view.load_level(_level(BUSY), {"ttft": 500.0})
    assert "other processes took up to 12.5 of the host's 16 CPUs" in view.rows[0]["state"]
    result = TrialResult(flags={}, feasible=True, output_tok_s=1000.0, concurrency=16,
                         levels=(_level(QUIET), _level(BUSY)), trial_wall_s=60.0)
    view.trial_finished(0, "vllm-defaults", result)
    assert ("other processes took up to 12.5 of the host's 16 CPUs, all of them busy, while it measured"
            in out.getvalue().splitlines()[-1])
    view.trial_finished(0, "vllm-defaults", TrialResult(flags={}, feasible=True, output_tok_s=1000.0,
                                                        concurrency=16, levels=(_level(QUIET),)))
    assert "trial 0 (vllm-defaults)" in out.getvalue().splitlines()[-1]
    assert "other processes" not in out.getvalue().splitlines()[-1]

"""EngineServer against tests/fake_engine.py: readiness, failure classes, teardown, orphans, stale ports."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from autotune.engines import launcher, ledger
from autotune.engines.base import LaunchSpec
from autotune.engines.launcher import EngineServer, live_servers, pick_free_port, port_is_free, stop_all
from autotune.errors import EngineStartError
from autotune.models import PRESETS
from autotune.progress import Progress

FAKE = str(Path(__file__).with_name("fake_engine.py"))
REPO = str(Path(__file__).resolve().parents[1])
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
GPU_UUID = "GPU-5f2c0d1e-8a3b-4c6d-9e0f-1a2b3c4d5e6f"
MIG_UUID = "MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"


def _spec(tmp_path: Path, mode: str, *, timeout_s: float = 20.0, gpu_ids: tuple[str, ...] = (),
          extra: tuple[str, ...] = (), **kw: object) -> LaunchSpec:
    return LaunchSpec(engine="vllm", model=PRESETS["flash"], flags={"max-num-seqs": 8}, gpu_ids=gpu_ids,
                      served_model_name=f"autotune-test-{uuid.uuid4().hex[:8]}",
                      log_path=tmp_path / "trials" / f"{mode}.log", startup_timeout_s=timeout_s,
                      vllm_cmd=(sys.executable, FAKE, "--mode", mode, *extra), **kw)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (PID 1 here may never reap orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with _NO_PROXY.open(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    leftovers = live_servers()
    stop_all()
    assert not leftovers, "a test left a server running"


def test_ready_serves_and_stops_clean(tmp_path: Path) -> None:
    events: list[str] = []

    class Events(Progress):
        def engine_starting(self, engine: str, port: int, command: str, log_path: Path,
                            gpu_ids: tuple[str, ...] = (), trial: int | None = None) -> None:
            events.append(f"engine_starting on {','.join(gpu_ids)}")

        def engine_ready(self, startup: dict, trial: int | None = None) -> None:
            events.append("engine_ready")

        def engine_stopped(self, port: int, gpu_ids: tuple[str, ...], problems: tuple[str, ...],
                           trial: int | None = None) -> None:
            events.append(f"engine_stopped on {','.join(gpu_ids)}, port free: {port_is_free(port)}")

    spec = _spec(tmp_path, "ok", gpu_ids=(GPU_UUID,), extra_env={"FAKE_EXTRA": "yes"})
    with EngineServer(spec, grace_s=2, progress=Events()) as server:
        assert server.alive() and server in live_servers()
        pid, port = server.pid, server.port
        assert pid is not None and not port_is_free(port)
        models = _get_json(server.url + "/v1/models")
        assert [m["id"] for m in models["data"]] == [spec.served_model_name]
        out = _get_json(server.url + "/v1/completions",
                        {"model": spec.served_model_name, "prompt": "Hi", "max_tokens": 3})
        assert out["usage"]["completion_tokens"] == 3
        info = server.startup
        assert info.kv_cache_tokens == 1_369_488 and info.max_concurrency == 10.45 and info.compile_s == 38.45
        assert info.ready_s is not None and 0 < info.ready_s < 10
        log = server.log_path.read_text()
        # the child's environment: GPUs (a UUID verbatim), the NVLS rule, unbuffered output, extra_env
        assert (f"FAKE_ENV CUDA_VISIBLE_DEVICES={GPU_UUID} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 "
                "NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 FAKE_EXTRA=yes") in log
        assert "Maximum concurrency for 131,072 tokens" in server.log_tail(40)
    assert not server.alive() and not _alive(pid) and port_is_free(port)
    assert server not in live_servers() and server.teardown_problems == []
    assert events == [f"engine_starting on {GPU_UUID}", "engine_ready", f"engine_stopped on {GPU_UUID}, port free: True"]
    server.stop()  # idempotent


def test_crash_fails_fast_with_oom_and_log_tail(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(EngineStartError) as err:
        with EngineServer(_spec(tmp_path, "crash", timeout_s=60)):
            pytest.fail("a crashing engine must not become ready")
    assert time.monotonic() - t0 < 5  # the exit is noticed, not the 60 s timeout
    assert err.value.failure_class == "oom"
    assert "torch.OutOfMemoryError: CUDA out of memory" in err.value.log_tail
    assert len(err.value.log_tail.splitlines()) <= 40
    assert "oom" in str(err.value) and "crash.log" in str(err.value)
    assert live_servers() == []


def test_bad_flags_class(tmp_path: Path) -> None:
    with pytest.raises(EngineStartError) as err:
        EngineServer(_spec(tmp_path, "bad_flags")).start()
    assert err.value.failure_class == "bad_flags"
    assert "unrecognized arguments" in err.value.log_tail


@pytest.mark.slow  # a second or more: launches and kills a fake engine with its watchdog
def test_hang_times_out_and_is_killed(tmp_path: Path) -> None:
    server = EngineServer(_spec(tmp_path, "hang", timeout_s=1.5), grace_s=1)
    t0 = time.monotonic()
    with pytest.raises(EngineStartError) as err:
        server.start()
    assert err.value.failure_class == "timeout"
    assert 1.5 <= time.monotonic() - t0 < 8
    assert server.pid is not None and not _alive(server.pid)
    assert "Graph capturing finished" in err.value.log_tail


@pytest.mark.slow  # a second or more: launches and kills a fake engine with its watchdog
def test_sigterm_ignored_escalates_to_sigkill(tmp_path: Path) -> None:
    server = EngineServer(_spec(tmp_path, "ignore_sigterm"), grace_s=0.6)
    server.start()
    pid = server.pid
    assert pid is not None
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 >= 0.6  # waited the grace, then SIGKILL
    assert not _alive(pid) and port_is_free(server.port)


@pytest.mark.slow  # a second or more: launches and kills a fake engine with its watchdog
def test_grandchild_is_not_orphaned(tmp_path: Path) -> None:
    with EngineServer(_spec(tmp_path, "spawn_child"), grace_s=0.6) as server:
        match = re.search(r"GRANDCHILD_PID=(\d+)", server.log_path.read_text())
        assert match
        grandchild = int(match[1])
        assert _alive(grandchild)
    # the engine dies on SIGTERM, its grandchild ignores it: only SIGKILL of the group gets it
    assert not _alive(grandchild)


def test_keyboard_interrupt_inside_with_stops_server(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with EngineServer(_spec(tmp_path, "ok"), grace_s=2) as server:
            pid, port = server.pid, server.port
            raise KeyboardInterrupt
    assert pid is not None and not _alive(pid) and port_is_free(port)


@pytest.mark.parametrize("blind_prelaunch_check", [False, True])
def test_stale_server_on_port_is_never_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 blind_prelaunch_check: bool) -> None:
    port = pick_free_port()
    stale_log = tmp_path / "stale.log"
    with open(stale_log, "wb") as log:
        stale = subprocess.Popen([sys.executable, FAKE, "--mode", "ok", "--port", str(port),
                                  "--served-model-name", "stale-server"], stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while port_is_free(port):
            assert time.monotonic() < deadline and stale.poll() is None
            time.sleep(0.05)
        if blind_prelaunch_check:
            # the H100 story: the port looked free, the new server dies with "Address already in use"
            # while the stale one keeps answering /health
            real = launcher.port_is_free
            monkeypatch.setattr(launcher, "port_is_free", lambda p: True if p == port else real(p))
        launches: list[int] = []

        class Launches(Progress):
            def engine_starting(self, engine: str, port: int, command: str, log_path: Path,
                                gpu_ids: tuple[str, ...] = (), trial: int | None = None) -> None:
                launches.append(port)

        with EngineServer(_spec(tmp_path, "ok"), port=port, grace_s=2, progress=Launches()) as server:
            assert server.port != port  # re-picked after the stale server held the port
            models = _get_json(server.url + "/v1/models")
            assert [m["id"] for m in models["data"]] == [server.spec.served_model_name]
            # blind check: a first launch was made on the taken port, caught (the stale server answers with the
            # wrong name, or the new one dies of its bind error) and retried; else no launch there at all
            assert launches == ([port, server.port] if blind_prelaunch_check else [server.port])
        assert stale.poll() is None  # not ours: left alone
    finally:
        os.killpg(stale.pid, signal.SIGKILL)
        stale.wait(5)


@pytest.mark.slow  # a second or more: launches and kills a fake engine with its watchdog
def test_wrong_name_is_port_in_use_error(tmp_path: Path) -> None:
    server = EngineServer(_spec(tmp_path, "wrong_name"), grace_s=1)
    with pytest.raises(EngineStartError) as err:
        server.start()
    assert err.value.failure_class == "port_in_use"
    assert "someone-else" in str(err.value)
    assert "relaunch on port" in server.log_path.read_text()  # retried once on a new port
    assert server.pid is not None and not _alive(server.pid)


@pytest.mark.slow  # a second or more: launches and kills a fake engine with its watchdog
def test_stop_all_stops_every_live_server(tmp_path: Path) -> None:
    servers = [EngineServer(_spec(tmp_path / str(i), "ok"), grace_s=2) for i in range(2)]
    for s in servers:
        s.start()
    pids = [s.pid for s in servers]
    assert set(live_servers()) == set(servers)
    stop_all()
    assert live_servers() == [] and not any(_alive(p) for p in pids if p)
    stop_all()  # twice is fine


_PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from autotune.engines.base import LaunchSpec
    from autotune.engines.launcher import EngineServer
    from autotune.models import PRESETS
    spec = LaunchSpec(engine="vllm", model=PRESETS["flash"], flags={{}}, gpu_ids=(), served_model_name={name!r},
                      log_path=Path({log!r}), vllm_cmd=(sys.executable, {fake!r}, "--mode", "spawn_child"),
                      ledger_dir=Path({ledger!r}))
    server = EngineServer(spec, grace_s=60.0 if {how!r} == "stop" else 0.5)
    server.start()
    print(server.pid, server._pgid, flush=True)
    if {how!r} == "exit":
        sys.exit(0)  # no stop(): the atexit hook must do it
    if {how!r} == "stop":
        server.stop()  # the grandchild ignores the SIGTERM: this waits the whole grace
    time.sleep(60)  # waits for a signal
""")


def _start_parent(tmp_path: Path, how: str) -> tuple[subprocess.Popen[str], int, int, int]:
    """A tuner that starts a server (with a grandchild that ignores SIGTERM): (tuner, server pid, its process
    group (the watchdog's pid), the grandchild's pid)."""
    log = tmp_path / "parent-child.log"
    code = _PARENT.format(repo=REPO, log=str(log), fake=FAKE, how=how, ledger=str(tmp_path / "ledger"),
                          name=f"autotune-parent-{uuid.uuid4().hex[:8]}")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert parent.stdout is not None
    engine_pid, pgid = map(int, parent.stdout.readline().split())
    grandchild = int(re.search(r"GRANDCHILD_PID=(\d+)", log.read_text())[1])  # type: ignore[index]
    return parent, engine_pid, pgid, grandchild


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow  # a second or more: launches and kills a fake engine with its watchdog
@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_parent_exit_or_sigterm_leaves_no_orphan(tmp_path: Path, how: str) -> None:
    parent, engine_pid, pgid, grandchild = _start_parent(tmp_path, how)
    try:
        assert _alive(engine_pid) or how == "exit"
        if how == "sigterm":
            parent.send_signal(signal.SIGTERM)
        assert parent.wait(15) == (0 if how == "exit" else 128 + signal.SIGTERM)
        assert not _alive(engine_pid) and not _alive(grandchild) and not _alive(pgid)
        assert not list((tmp_path / "ledger").glob("*.json"))  # a stopped server leaves no entry
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(5)


@pytest.mark.slow
def test_sigkill_of_the_tuner_stops_its_server_within_seconds(tmp_path: Path) -> None:
    """No hook of the tuner runs on SIGKILL: the watchdog sees its pipe close and stops the group, the grandchild
    that ignores SIGTERM included, within its grace and a little more."""
    parent, engine_pid, pgid, grandchild = _start_parent(tmp_path, "sigkill")
    assert _alive(engine_pid) and _alive(grandchild) and _alive(pgid)
    t0 = time.monotonic()
    parent.kill()
    parent.wait(5)
    assert _gone_within([engine_pid, grandchild, pgid], launcher.WATCHDOG_GRACE_S + 5)
    assert time.monotonic() - t0 >= launcher.WATCHDOG_GRACE_S - 0.5  # the grandchild needed the SIGKILL
    # the entry stays (its tuner never removed it); the next run finds nothing left to stop, and drops it
    assert len(list((tmp_path / "ledger").glob("*.json"))) == 1
    assert ledger.stop_leftovers(tmp_path / "ledger") == []
    assert not list((tmp_path / "ledger").glob("*.json"))


@pytest.mark.slow
def test_a_tuner_killed_while_it_stops_its_server_leaves_nothing(tmp_path: Path) -> None:
    """The tuner SIGTERMs its server's group to stop it, then dies (SIGKILL, or a third Ctrl-C) while a member that
    ignores SIGTERM holds on: the watchdog, in the same group, was ended by that SIGTERM, so nothing stopped the
    member until the next run read the ledger (it kept its port)."""
    parent, engine_pid, pgid, grandchild = _start_parent(tmp_path, "stop")
    try:
        assert _gone_within([engine_pid], 10)  # the SIGTERM has landed: the stop is under way
        assert _alive(grandchild)
        parent.kill()
        parent.wait(5)
        assert _gone_within([grandchild, pgid], launcher.WATCHDOG_GRACE_S + 5)
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in (grandchild, pgid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_the_next_run_stops_what_a_dead_tuner_left(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The watchdog killed with its tuner (as a machine's OOM killer might): the server survives them both. The
    ledger names it; stop_leftovers proves it is the one recorded and stops its group, and leaves a live tuner's
    server and an unrelated process alone. It logs no warning: the run says it once, through its progress
    (Progress.leftover_stopped); a warning printed it a second time."""
    parent, engine_pid, pgid, grandchild = _start_parent(tmp_path, "sigkill")
    live = EngineServer(_spec(tmp_path, "ok", ledger_dir=tmp_path / "ledger"), grace_s=2)  # this tuner's: alive
    live.start()
    try:
        os.kill(pgid, signal.SIGKILL)  # the watchdog first, then its tuner
        parent.kill()
        parent.wait(5)
        time.sleep(0.5)
        assert _alive(engine_pid) and _alive(grandchild)  # nothing stops them now but the next run
        with caplog.at_level(logging.INFO, logger="autotune.engines.ledger"):
            stopped = ledger.stop_leftovers(tmp_path / "ledger", grace_s=0.5)
        assert [e.server_pid for e in stopped] == [engine_pid]
        assert [r.levelno for r in caplog.records if r.name == "autotune.engines.ledger"] == [logging.INFO]
        assert _gone_within([engine_pid, grandchild], 5)
        assert live.alive()  # a live tuner's server is not a leftover
        assert [p.stem for p in (tmp_path / "ledger").glob("*.json")] == [live.spec.served_model_name]
    finally:
        live.stop()
        for pid in (engine_pid, grandchild):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not list((tmp_path / "ledger").glob("*.json"))


def test_a_ledger_entry_keeps_gpu_ids_as_given(tmp_path: Path) -> None:
    """UUIDs are written and read back verbatim; an entry an older tuner wrote, with integer indices, reads as the
    same indices in the one type GPU ids have."""
    entry = ledger.ServerEntry.for_group("autotune-ids-0", os.getpid(), os.getpid(), 1, (GPU_UUID, MIG_UUID))
    ledger.record_server(tmp_path, entry)
    data = json.loads((tmp_path / "autotune-ids-0.json").read_text())
    assert data["gpu_ids"] == [GPU_UUID, MIG_UUID] and ledger.ServerEntry.from_json(data) == entry
    assert ledger.ServerEntry.from_json({**data, "gpu_ids": [0, 3]}).gpu_ids == ("0", "3")


def test_a_recorded_group_that_is_not_provably_ours_is_left_alone(tmp_path: Path) -> None:
    """An entry whose process group now holds another process (same pid, another start time or command line)
    is dropped, and that process is not touched."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        entry = ledger.ServerEntry.for_group("autotune-gone-0", other.pid, other.pid, 1, ())
        stale = ledger.ServerEntry(**{**entry.to_json(), "gpu_ids": (), "tuner_pid": other.pid,
                                      "tuner_start_ticks": -1})  # its tuner gone
        ledger.record_server(tmp_path, stale)
        assert ledger.stop_leftovers(tmp_path, grace_s=0.5) == []  # the served name is not in its command line
        assert other.poll() is None and not list(tmp_path.glob("*.json"))
    finally:
        other.kill()
        other.wait(5)


def _fake_smi(folder: Path, value_file: Path) -> None:
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {value_file}\n")
    smi.chmod(0o755)


@pytest.mark.slow  # a second or more: launches and kills a fake engine with its watchdog
def test_stop_waits_for_gpu_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    used = tmp_path / "used"
    used.write_text("1000\n")
    _fake_smi(bindir, used)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    # memory comes back: no problem reported
    server = EngineServer(_spec(tmp_path, "ok", gpu_ids=("0",)), grace_s=2, gpu_release_timeout_s=5)
    server.start()
    used.write_text("40000\n")  # the engine holds memory while it runs
    freer = subprocess.Popen(["sh", "-c", f"sleep 0.5; echo 1500 > {used}"])  # ...and frees it after a while
    t0 = time.monotonic()
    server.stop()
    freer.wait(5)
    assert 0.4 < time.monotonic() - t0 < 5 and server.teardown_problems == []
    # memory stays taken: stop gives up after the timeout and says so
    server = EngineServer(_spec(tmp_path, "ok", gpu_ids=("0",)), grace_s=2, gpu_release_timeout_s=0.5)
    used.write_text("1000\n")
    server.start()
    used.write_text("40000\n")
    server.stop()
    assert any("GPU memory" in p for p in server.teardown_problems)


@pytest.mark.slow  # a second or more: launches and kills fake engines with their watchdogs
def test_stop_checks_gpu_memory_by_uuid_and_not_on_a_mig_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server on a GPU UUID: nvidia-smi is asked about that UUID, and memory that stays taken is reported. On a MIG
    slice nvidia-smi's GPU query would give the parent GPU's memory (here held by another slice's tenant): the
    stop relies on the process group and the port, and reports nothing."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    used = tmp_path / "used"
    smi = bindir / "nvidia-smi"  # answers for the GPU UUID only, as nvidia-smi does for a device it has
    smi.write_text(f'#!/bin/sh\ncase "$*" in *"-i {GPU_UUID}"*) cat {used};; *) echo "No devices were found"; exit 6;;'
                   " esac\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    server = EngineServer(_spec(tmp_path, "ok", gpu_ids=(GPU_UUID,)), grace_s=2, gpu_release_timeout_s=0.5)
    used.write_text("1000\n")
    server.start()
    used.write_text("40000\n")  # the engine's memory stays taken
    server.stop()
    assert any("GPU memory [40000] MiB not back to [1000] MiB" in p for p in server.teardown_problems)
    smi.write_text(f"#!/bin/sh\ncat {used}\n")  # the parent GPU's memory, whatever -i names
    server = EngineServer(_spec(tmp_path, "ok", gpu_ids=(MIG_UUID,)), grace_s=2, gpu_release_timeout_s=5)
    used.write_text("1000\n")
    server.start()
    used.write_text("40000\n")  # another slice's tenant took memory on the parent GPU meanwhile
    t0 = time.monotonic()
    server.stop()
    assert server.teardown_problems == [] and time.monotonic() - t0 < 4


def test_a_signal_while_the_stop_runs_is_noted_and_a_third_quits_at_once(monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The first signal starts the orderly stop; one more, raised inside it, cut it short (the cut trial's levels
    and its retry were lost): it is only noted. A third ends the process by its own signal."""
    monkeypatch.setattr(launcher, "_received", [])
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(launcher.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(launcher.signal, "signal", lambda *_: None)  # keep the test process's own handlers
    with pytest.raises(KeyboardInterrupt):
        launcher._on_signal(signal.SIGINT, None)
    launcher._on_signal(signal.SIGTERM, None)  # returns: the stop goes on
    assert launcher.STILL_STOPPING in capsys.readouterr().err and not killed
    launcher._on_signal(signal.SIGINT, None)
    assert killed == [(os.getpid(), signal.SIGINT)]
    monkeypatch.setattr(launcher, "_received", [])
    with pytest.raises(SystemExit) as stopped:
        launcher._on_signal(signal.SIGHUP, None)
    assert stopped.value.code == 128 + signal.SIGHUP

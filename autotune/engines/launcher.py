"""Start an engine server (vLLM or sim) as a subprocess, prove it is ready, and tear it down cleanly.

Contract: the launcher owns the port, the environment, the log file and the process group. Readiness
means: /health answers 200, /v1/models lists exactly our unique served-model-name (so a stale server
left on the port is never measured), one real completion succeeds, and the child is still alive.
Teardown: SIGTERM the group, wait, SIGKILL the group, until no live member remains; then wait for the
port and (vLLM) the GPU memory to come back. Every live server is in a registry that an atexit hook
and SIGTERM/SIGHUP handlers drain. Against what no hook sees (SIGKILL of the tuner, a crash of the
interpreter), each server's process group is led by a watchdog (:mod:`autotune.engines.watchdog`) that stops the
group within seconds of its tuner's death, and each server is recorded in a ledger
(:mod:`autotune.engines.ledger`) that the next run reads to stop what a dead run left.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from autotune.engines import watchdog
from autotune.engines.base import LaunchSpec, StartupInfo, classify_failure, parse_startup_log
from autotune.engines.ledger import ServerEntry, forget_server, record_server
from autotune.errors import EngineStartError
from autotune.flags import flags_to_argv
from autotune.gpu_ids import GpuId, is_mig_device
from autotune.progress import NULL_PROGRESS, Progress

__all__ = ["EngineServer", "stop_all", "live_servers", "gpu_memory_used_mib", "port_is_free", "pick_free_port",
           "install_signal_handlers"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Hard rule of the GPU host: no NVLink multicast / NVLS.
_FORCED_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
_LOG_TAIL_LINES = 40
# How long a server whose tuner died gets between SIGTERM and SIGKILL: nobody waits for its graceful exit, and the
# GPU memory it holds is what the next run needs.
WATCHDOG_GRACE_S = 3.0
# No proxy for loopback requests, whatever http_proxy says.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_LIVE: list[EngineServer] = []  # servers started and not yet fully stopped (list: no locks, signal-safe)


# --- ports -------------------------------------------------------------------------------------------

def port_is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:port now (SO_REUSEADDR, as uvicorn sets: TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- GPU memory --------------------------------------------------------------------------------------

def gpu_memory_used_mib(gpu_ids: Sequence[GpuId]) -> list[int] | None:
    """Used memory of each GPU in MiB, in the order given; None if it cannot be read. Indices are physical (PCI bus
    order, as nvidia-smi numbers them); a GPU UUID goes to ``nvidia-smi -i`` as written.

    None for a MIG slice: ``nvidia-smi --query-gpu`` lists whole GPUs only, so it would give the parent GPU's
    memory, which the other slices' tenants move; a slice's own memory is in nvidia-smi's MIG table or NVML's MIG
    handles, which this does not read. A server on MIG slices is therefore deemed stopped on the other checks alone:
    its process group gone (every process that held the slice's memory) and its port free."""
    if not gpu_ids or any(is_mig_device(g) for g in gpu_ids):
        return None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", ",".join(gpu_ids)],
                                 capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
            values = [int(float(line.strip())) for line in out.stdout.splitlines() if line.strip()]
            if out.returncode == 0 and len(values) == len(gpu_ids):
                return values
            logger.debug("nvidia-smi gave rc=%s out=%r", out.returncode, out.stdout[-200:])
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            logger.debug("nvidia-smi failed: %s", e)
        return None
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(int(g)) if g.isdigit() else pynvml.nvmlDeviceGetHandleByUUID(g)
                       for g in gpu_ids]
            return [int(pynvml.nvmlDeviceGetMemoryInfo(h).used // 2**20) for h in handles]
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - NVML raises its own error classes
        logger.debug("pynvml failed: %s", e)
        return None


# --- process groups ----------------------------------------------------------------------------------

def _group_alive(pgid: int, besides: int | None = None) -> bool:
    """Whether a live (non-zombie) process of the group remains, ``besides`` (the group's watchdog) not counted."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(set(watchdog.group_members(pgid)) - {besides})


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- the server --------------------------------------------------------------------------------------

class EngineServer:
    """A vLLM or sim server for one trial. Use as a context manager::

        with EngineServer(spec) as server:
            run_load(server.url, spec.served_model_name)

    ``__enter__`` starts and waits until ready (raising EngineStartError with the failure class and the
    log tail); ``__exit__`` stops, also on exceptions and KeyboardInterrupt. ``stop()`` is idempotent and
    may be called from a signal handler or an atexit hook. Not thread-safe: one owner per server.
    """

    def __init__(self, spec: LaunchSpec, *, port: int | None = None, grace_s: float = 20.0,
                 port_release_timeout_s: float = 30.0, gpu_release_timeout_s: float = 120.0,
                 gpu_release_tolerance_mib: int = 1024, progress: Progress = NULL_PROGRESS) -> None:
        self.spec = spec
        self.grace_s = grace_s
        self.port_release_timeout_s = port_release_timeout_s
        self.gpu_release_timeout_s = gpu_release_timeout_s
        self.gpu_release_tolerance_mib = gpu_release_tolerance_mib
        self.progress = progress
        self._port = port if port is not None else pick_free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._tuner_alive_fd: int | None = None  # the write end of the watchdog's pipe: closed when we die
        self._pgid: int | None = None
        self._t_spawn = 0.0
        self._gpu_baseline_mib: list[int] | None = None
        self._stopped = True
        self._stop_lock = threading.Lock()  # the trial's thread and an interrupted main thread may both stop it
        self._owns_port = False  # our server answered on the port: wait for it to come free on stop
        self.startup: StartupInfo = StartupInfo()
        self.teardown_problems: list[str] = []  # what stop() could not confirm (port, GPU memory)

    # -- properties --
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.spec.log_path

    @property
    def command(self) -> list[str]:
        """The argv this launch runs (with the current port)."""
        spec = self.spec
        flags = flags_to_argv(spec.flags)
        tail = ["--port", str(self._port), "--host", HOST, "--served-model-name", spec.served_model_name]
        if spec.engine == "vllm":
            return [*spec.serve_cmd, spec.model_ref, *flags, *tail]
        argv = [spec.python, "-m", "autotune.sim", "serve", spec.model_ref, *flags, *tail]
        if spec.gpu_type:
            argv += ["--gpu-type", spec.gpu_type]
        if spec.sim_fault:
            argv += ["--fault", spec.sim_fault]
        return argv + ["--time-scale", repr(float(spec.time_scale))]

    @property
    def vllm_serve_cmd(self) -> str:
        """`vllm serve MODEL --flags...` for the exported profile (no port, host or served name)."""
        return self.spec.vllm_serve_cmd

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def answers(self, within_s: float = 10.0) -> bool:
        """Alive and ``/health`` 200 within ``within_s``. After a level whose requests failed: vLLM's API server
        outlives its dead engine by seconds (answering 500, /health 503), so a process still running is not yet
        a server still serving."""
        deadline = time.monotonic() + within_s
        while self.alive():
            try:
                if self._request("/health", timeout_s=2.0)[0] == 200:
                    return True
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)
        return False

    def log_tail(self, n: int = _LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * 1024))
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-n:])

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    # -- context manager --
    def __enter__(self) -> EngineServer:
        self.start()
        return self

    def __exit__(self, _exc_type: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.stop()

    # -- start --
    def start(self) -> None:
        """Launch and wait until ready. On port_in_use, retries once on a freshly picked port."""
        if not self._stopped:
            raise RuntimeError("server already started")
        install_signal_handlers()
        for attempt in (1, 2):
            try:
                self._start_once(append_log=attempt > 1)
                return
            except EngineStartError as e:
                self.stop()
                if e.failure_class != "port_in_use" or attempt == 2:
                    raise
                logger.warning("port %d answered by another server or taken; retrying on a new port", self._port)
                self._port = pick_free_port()
            except BaseException:
                self.stop()  # KeyboardInterrupt, SystemExit, bugs: never leave the child behind
                raise

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.spec.extra_env}
        if self.spec.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.spec.gpu_ids)  # verbatim: indices, GPU or MIG UUIDs
            # so indices mean what nvidia-smi -i means (a UUID names one device in any order)
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(_FORCED_ENV)
        return env

    def _spawn_watchdog(self, log: Any) -> None:
        """The group's leader: it stops the group when this process dies (see :mod:`autotune.engines.watchdog`).
        Started before the server, so that no instant exists where a server runs without it."""
        read_fd, write_fd = os.pipe()  # not inheritable: only the watchdog gets the read end, nobody the write end
        try:
            self._watchdog = subprocess.Popen(
                [self.spec.python, watchdog.__file__, str(read_fd), repr(WATCHDOG_GRACE_S),
                 self.spec.served_model_name],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(read_fd,),
                process_group=0, close_fds=True)
        except OSError as e:
            os.close(write_fd)
            raise EngineStartError(f"the server's watchdog could not be spawned: {e}", "crash", "") from e
        finally:
            os.close(read_fd)
        self._tuner_alive_fd = write_fd
        self._pgid = self._watchdog.pid

    def _start_once(self, append_log: bool) -> None:
        spec = self.spec
        if not port_is_free(self._port):
            raise EngineStartError(f"port {self._port} is taken before launch", "port_in_use", "")
        if spec.engine == "vllm":
            self._gpu_baseline_mib = gpu_memory_used_mib(spec.gpu_ids)
            if any(is_mig_device(g) for g in spec.gpu_ids):
                logger.info("MIG devices %s: a stop checks the process group and the port, not the memory "
                            "(nvidia-smi's GPU query reports the parent GPU)", ",".join(spec.gpu_ids))
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command
        logger.info("starting %s server on port %d: %s", spec.engine, self._port, shlex.join(argv))
        self.progress.engine_starting(spec.engine, self._port, shlex.join(argv), spec.log_path, spec.gpu_ids)
        with open(spec.log_path, "ab" if append_log else "wb") as log:
            if append_log:
                log.write(f"\n----- autotune: relaunch on port {self._port} -----\n".encode())
                log.flush()
            self._t_spawn = time.monotonic()
            self._proc = None
            self._stopped = False
            _LIVE.append(self)  # from here on, stop() cleans up whatever was started
            self._spawn_watchdog(log)
            try:
                # In the watchdog's group (not a session of its own: a process may join only a group of its own
                # session). Not the terminal's foreground group either, so a terminal's Ctrl-C reaches the tuner
                # alone, which then stops the server itself.
                self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=self._env(), process_group=self._pgid, close_fds=True)
            except OSError as e:
                raise EngineStartError(f"{spec.engine} server could not be spawned ({argv[0]}): {e}", "crash",
                                       "") from e
        self._owns_port = False
        if spec.ledger_dir is not None:
            assert self._pgid is not None
            record_server(spec.ledger_dir, ServerEntry.for_group(spec.served_model_name, self._pgid, self._proc.pid,
                                                                 self._port, spec.gpu_ids))
        self._wait_ready()
        ready_s = time.monotonic() - self._t_spawn
        self.startup = replace(parse_startup_log(self._log_text()), ready_s=round(ready_s, 3))
        logger.info("%s server ready on port %d in %.1f s", spec.engine, self._port, ready_s)
        self.progress.engine_ready(self.startup.as_dict())

    def _fail(self, message: str, *, timed_out: bool = False, failure_class: str | None = None) -> EngineStartError:
        exited = not self.alive()
        cls = failure_class or classify_failure(self._log_text(), exited=exited, timed_out=timed_out)
        tail = self.log_tail()
        last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
        detail = f"; last log line: {last[:300]}" if last else ""
        return EngineStartError(f"{self.spec.engine} server failed to start ({cls}): {message}{detail}; "
                                f"log: {self.log_path}", cls, tail)

    def _deadline_left(self) -> float:
        return self.spec.startup_timeout_s - (time.monotonic() - self._t_spawn)

    def _request(self, path: str, body: dict[str, Any] | None = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with _HTTP.open(req, timeout=timeout_s) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read() if e.fp else b""

    def _wait_ready(self) -> None:
        assert self._proc is not None
        interval_s = 0.05
        while True:
            if self._proc.poll() is not None:
                raise self._fail(f"process exited with code {self._proc.returncode} before it was ready")
            if self._deadline_left() <= 0:
                raise self._fail(f"not ready after {self.spec.startup_timeout_s:.0f} s", timed_out=True)
            try:
                status, _ = self._request("/health", timeout_s=min(5.0, max(0.5, self._deadline_left())))
                if status == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass  # not listening yet (or a connection reset while it starts)
            time.sleep(interval_s)
            interval_s = min(1.0, interval_s * 1.5)
        self._check_identity()
        self._check_completion()
        time.sleep(0.05)
        if self._proc.poll() is not None:
            raise self._fail(f"process exited with code {self._proc.returncode} right after readiness")

    def _check_identity(self) -> None:
        """/v1/models must list exactly our served name; anything else is another server on our port."""
        name = self.spec.served_model_name
        try:
            status, body = self._request("/v1/models", timeout_s=10.0)
            ids = [m.get("id") for m in json.loads(body).get("data", [])] if status == 200 else []
        except (OSError, urllib.error.URLError, ValueError, AttributeError) as e:
            raise self._fail(f"/v1/models failed: {e}") from None
        if ids != [name]:
            raise self._fail(f"/v1/models on port {self._port} lists {ids}, not [{name!r}]: another server "
                             "answers on this port", failure_class="port_in_use")
        self._owns_port = True

    def _check_completion(self) -> None:
        body = {"model": self.spec.served_model_name, "prompt": "Hello", "max_tokens": 4,
                "ignore_eos": True, "temperature": 0.0}
        timeout_s = min(300.0, max(10.0, self._deadline_left()))
        try:
            status, data = self._request("/v1/completions", body, timeout_s=timeout_s)
            if status != 200:
                raise self._fail(f"test completion answered HTTP {status}: {data[:200]!r}")
            if not json.loads(data).get("choices"):
                raise self._fail(f"test completion has no choices: {data[:200]!r}")
        except (OSError, urllib.error.URLError, ValueError) as e:
            raise self._fail(f"test completion failed: {e}") from None

    # -- stop --
    def stop(self) -> None:
        """Stop the whole process group and wait for the port and GPU memory. Idempotent, safe from two threads
        (the second waits for the first), never raises for a process that is already gone."""
        with self._stop_lock:
            self._stop()

    def _stop(self) -> None:
        if self._stopped or self._pgid is None:
            self._stopped = True
            return
        proc, pgid = self._proc, self._pgid
        keeper = self._watchdog.pid if self._watchdog is not None else None

        def serving() -> bool:  # the server, or anything it started; the watchdog, which ignores SIGTERM, aside
            return (proc is not None and proc.poll() is None) or _group_alive(pgid, besides=keeper)

        t0 = time.monotonic()
        if serving():
            logger.info("stopping %s server (group %d)", self.spec.engine, pgid)
            _signal_group(pgid, signal.SIGTERM)
            deadline = t0 + self.grace_s
            while time.monotonic() < deadline and serving():
                time.sleep(0.05)
        if serving():
            logger.warning("server group %d still alive after %.0f s grace: SIGKILL", pgid, self.grace_s)
            _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and serving():
            time.sleep(0.05)
            _signal_group(pgid, signal.SIGKILL)
        if serving():
            self.teardown_problems.append(f"process group {pgid} survived SIGKILL")
            logger.error("process group %d survived SIGKILL", pgid)
        self._release_watchdog()
        if self._owns_port:
            self._wait_port_free()
        if self.spec.engine == "vllm":
            self._wait_gpu_released()
        if self.spec.ledger_dir is not None and not self.teardown_problems:
            forget_server(self.spec.ledger_dir, self.spec.served_model_name)
        self._stopped = True
        try:
            _LIVE.remove(self)
        except ValueError:
            pass  # a nested stop() (signal handler) got there first
        logger.info("%s server on port %d stopped in %.1f s", self.spec.engine, self._port, time.monotonic() - t0)
        self.progress.engine_stopped(self._port, self.spec.gpu_ids, tuple(self.teardown_problems))

    def _release_watchdog(self) -> None:
        """Close our end of the watchdog's pipe, so that it ends (the group has no one else left to stop), and reap
        it."""
        if self._tuner_alive_fd is not None:
            os.close(self._tuner_alive_fd)
            self._tuner_alive_fd = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(5.0)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                try:
                    self._watchdog.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.teardown_problems.append(f"the watchdog {self._watchdog.pid} survived SIGKILL")

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + self.port_release_timeout_s
        while not port_is_free(self._port):
            if time.monotonic() > deadline:
                self.teardown_problems.append(f"port {self._port} still taken {self.port_release_timeout_s:.0f} s "
                                              "after stop")
                logger.warning("port %d still taken after stop", self._port)
                return
            time.sleep(0.1)

    def _wait_gpu_released(self) -> None:
        baseline = self._gpu_baseline_mib
        if not baseline:
            return
        deadline = time.monotonic() + self.gpu_release_timeout_s
        while True:
            used = gpu_memory_used_mib(self.spec.gpu_ids)
            if used is None or all(u <= b + self.gpu_release_tolerance_mib for u, b in zip(used, baseline)):
                return
            if time.monotonic() > deadline:
                self.teardown_problems.append(f"GPU memory {used} MiB not back to {baseline} MiB "
                                              f"{self.gpu_release_timeout_s:.0f} s after stop")
                logger.warning("GPU memory on %s still %s MiB (before launch: %s)", ",".join(self.spec.gpu_ids), used,
                               baseline)
                return
            time.sleep(0.5)


# --- registry, atexit, signals -----------------------------------------------------------------------

def live_servers() -> list[EngineServer]:
    return list(_LIVE)


def stop_all() -> None:
    """Stop every server this process started and has not stopped (atexit hook; safe to call twice)."""
    for server in list(reversed(_LIVE)):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - keep stopping the others
            logger.exception("stopping server on port %d failed", server.port)


atexit.register(stop_all)

_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# The signals received so far; the first one started the stop. A stop takes a moment (the servers' teardown, the
# cut trial's record, its retry, the run's record), and a second Ctrl-C pressed meanwhile, raised inside it, cut it
# short: the cut trial lost the levels it had measured and was never queued again.
_received: list[int] = []
STILL_STOPPING = ("autotune: still stopping: the servers, then what was measured is saved; signal once more to quit "
                  "at once (the cut trial's levels are then lost; its servers still stop within seconds)")


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must not keep the process from stopping


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    """The first signal unwinds like Ctrl-C does (`with` blocks stop their servers, then atexit runs stop_all): a
    KeyboardInterrupt for SIGINT, SystemExit(128 + signal) for the others. The next one, while that stop runs, is
    only noted; a third ends the process by its own signal at once (each server's watchdog stops it)."""
    _received.append(signum)
    if len(_received) == 1:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
    if len(_received) == 2:
        _say(STILL_STOPPING)
        return
    _say("autotune: quitting at once")
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers(sigint: bool = False) -> None:
    """Turn SIGTERM/SIGHUP (and SIGINT with ``sigint``: a command that ends once interrupted) into an orderly stop
    (:func:`_on_signal`) where they still have their default action. Only from the main thread; a handler the
    application set, or a signal it ignores, is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    defaults = {sig: signal.SIG_DFL for sig in _HANDLED_SIGNALS}
    if sigint:
        defaults[signal.SIGINT] = signal.default_int_handler
    for sig, default in defaults.items():
        if signal.getsignal(sig) == default:
            signal.signal(sig, _on_signal)

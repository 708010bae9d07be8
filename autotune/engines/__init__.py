"""Engine launchers: one contract (LaunchSpec -> EngineServer) for real vLLM and the sim engine."""
from __future__ import annotations

from autotune.engines.base import FAILURE_CLASSES, LaunchSpec, StartupInfo, classify_failure, parse_startup_log
from autotune.engines.launcher import EngineServer, gpu_memory_used_mib, install_signal_handlers, stop_all

__all__ = ["FAILURE_CLASSES", "LaunchSpec", "StartupInfo", "classify_failure", "parse_startup_log", "EngineServer",
           "gpu_memory_used_mib", "install_signal_handlers", "stop_all"]

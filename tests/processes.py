"""Signalling a command the tests started, as a user's Ctrl-C or a service manager's SIGTERM would."""
from __future__ import annotations

import subprocess


def signal_and_collect(proc: subprocess.Popen[str], sig: int, timeout_s: float) -> tuple[str, str]:
    """Send ``sig`` to ``proc`` and return its stdout and stderr once it ends; never left running after a failed
    wait (killed)."""
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()

"""The `autotune` command's entry point. The CLI's imports (Optuna, NumPy, the engines) take a second or more, and a
Ctrl-C that lands in them must end the command as one landing later does: one line, exit 130, no traceback.
(A SIGTERM there ends the process by its default action: nothing has started yet.)"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended


@contextmanager
def interrupts_in_callbacks() -> Iterator[list[BaseException]]:
    """The KeyboardInterrupts raised meanwhile in callbacks that cannot pass them on (the import machinery's module
    locks are released by a weakref callback): Python would print each as "Exception ignored", traceback and all,
    and go on as if no Ctrl-C had come. They are collected here instead; anything else is reported as before."""
    caught: list[BaseException] = []
    report = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            caught.append(unraisable.exc_value)
        else:
            report(unraisable)
    sys.unraisablehook = hook
    try:
        yield caught
    finally:
        sys.unraisablehook = report


def main() -> int:
    try:
        with interrupts_in_callbacks() as caught:
            from autotune.cli import main as cli_main
        if caught:
            raise caught[0]
    except KeyboardInterrupt:
        if os.environ.get("AUTOTUNE_DEBUG") == "1":
            raise
        print("autotune: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    return cli_main()

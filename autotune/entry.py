"""The `autotune` command's entry point. The CLI's imports (Optuna, NumPy, the engines) take a second or more, and a
Ctrl-C that lands in them must end the command as one landing later does: one line, exit 130, no traceback.
(A SIGTERM there ends the process by its default action: nothing has started yet.)"""
from __future__ import annotations

import os
import sys

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended


def main() -> int:
    try:
        from autotune.cli import main as cli_main
    except KeyboardInterrupt:
        if os.environ.get("AUTOTUNE_DEBUG") == "1":
            raise
        print("autotune: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    return cli_main()

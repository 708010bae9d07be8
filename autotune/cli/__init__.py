"""Command line: a thin layer that maps options to the core and errors to exit codes.

Exit codes: 0 success, 2 usage or bad input, 3 no feasible configuration, 1 anything else.
Tracebacks only with AUTOTUNE_DEBUG=1.
"""
from __future__ import annotations

import os
import sys
import threading

import click

from autotune import __version__
from autotune.errors import AutotuneError

__all__ = ["cli", "main"]


# Each command's module by the command's name: it is imported when that command runs. A command then does not pay
# for the others' imports (`run`'s, the tuner's core with its samplers and statistics, took about a second more of
# every `best` or `bench`).
_COMMAND_MODULES = {"run": "run", "worker": "worker", "bench": "bench", "sim": "sim", "best": "studies",
                    "studies": "studies", "export": "export", "compare": "compare", "dashboard": "dashboard"}
# The line `autotune --help` lists each command with, so that the listing imports none of their modules (together
# 1.4 s of a bare `autotune --help`); the command's own --help has its whole text.
COMMAND_SUMMARIES = {
    "run": "Tune: the most throughput whose P99s meet the limits.",
    "worker": "Run a shared study's trials on this machine's GPUs.",
    "bench": "Benchmark a running OpenAI-compatible server at one load level, or check it against a profile.",
    "sim": "The sim engine: serve, predict, calibrate.",
    "best": "A study's winner and verdict.",
    "studies": "The studies in a storage, each with its winner.",
    "export": "The winner as deploy files in a git work tree.",
    "compare": "Studies' winners side by side (--html: with charts).",
    "dashboard": "A local web page over a storage's studies.",
}


class _LazyGroup(click.Group):
    """click's group whose commands are imported on demand (click's documented pattern for lazy subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMAND_MODULES)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMAND_SUMMARIES[name]) for name in self.list_commands(ctx)])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        import importlib

        from autotune.entry import interrupts_in_callbacks

        if cmd_name not in _COMMAND_MODULES:
            return None
        # a Ctrl-C inside the import ends the command as one landing later does (entry.py says why this way)
        with interrupts_in_callbacks() as caught:
            module = importlib.import_module(f"autotune.cli.{_COMMAND_MODULES[cmd_name]}")
        if caught:
            raise caught[0]
        return next(command for command in module.commands if command.name == cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="autotune")  # also where the package is on the path, not installed
def cli() -> None:
    """Find the vLLM serving configuration with the most throughput under a P99 latency limit."""


# click >= 8.2 raises it for a group called without a command; older ones print the help themselves
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _thread_error(args: threading.ExceptHookArgs) -> None:
    """A background thread's error (Optuna's heartbeat thread when the database is lost): one line, no traceback;
    what it means for the study, the study says."""
    first = (str(args.exc_value).strip().splitlines() or [""])[0]
    name = args.thread.name if args.thread else "a thread"
    click.echo(f"autotune: warning: {name}: {args.exc_type.__name__}: {first}", err=True)


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("AUTOTUNE_DEBUG") == "1"
    if not debug:
        threading.excepthook = _thread_error
    try:
        # without standalone mode click returns a command's click.exceptions.Exit code instead of raising it (and
        # a command's own return value, None from every command here)
        code = cli.main(args=argv, standalone_mode=False, prog_name="autotune")
        return code if type(code) is int else 0
    except click.exceptions.Abort as e:  # click turns KeyboardInterrupt into Abort
        click.echo("autotune: interrupted", err=True)
        return getattr(e.__cause__ or e.__context__, "exit_code", 130)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP during a trial (errors.Stopped: 128 + signal)
        click.echo("autotune: interrupted", err=True)
        return getattr(e, "exit_code", 130)
    except _NO_ARGS_IS_HELP as e:  # `autotune` or `autotune sim` alone: its help, as click prints it (exit 2)
        click.echo(e.format_message(), err=True)
        return 2
    except click.ClickException as e:  # usage errors: one line, exit 2
        if debug:
            raise
        click.echo(f"autotune: error: {e.format_message()}", err=True)
        return 2
    except AutotuneError as e:
        if debug:
            raise
        click.echo(f"autotune: error: {e}", err=True)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - last resort: one line, never a traceback
        if debug:
            raise
        click.echo(f"autotune: error: {type(e).__name__}: {e} (AUTOTUNE_DEBUG=1 shows the traceback)", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

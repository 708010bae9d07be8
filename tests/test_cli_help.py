"""Every command's --help renders: no literal ``%%`` (click does not %-format help texts, so ``1%%`` shows as
written) and nothing that breaks the rendering."""
from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from autotune.cli import cli, main


def _paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the top group's commands are imported on demand: not in .commands
        command = group.get_command(ctx, name)
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _paths(command, (*prefix, name))


@pytest.mark.parametrize("path", [(), *_paths(cli)],
                         ids=lambda p: " ".join(p) or "autotune")
def test_help_has_no_literal_percent_escapes(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out.lower()  # click's "Usage:"; `sim serve` shows its flags' parser's "usage:"
    assert "%%" not in out


def test_each_command_is_found_where_the_lazy_group_looks_and_imports_only_its_module() -> None:
    """The CLI imports a command's module when that command runs: the table names every command of every module,
    and `best` no longer imports the tuner's core (`run`'s), a second of every command's start before."""
    import importlib
    import subprocess
    import sys

    from autotune.cli import _COMMAND_MODULES

    for module in set(_COMMAND_MODULES.values()):
        names = [c.name for c in importlib.import_module(f"autotune.cli.{module}").commands]
        assert all(_COMMAND_MODULES.get(name) == module for name in names), (module, names)
    probe = ("import sys; from autotune.cli import main; code = main(['best', '--help']); "
             "print(code, 'autotune.study' in sys.modules, 'scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout
    assert out.splitlines()[-1] == "0 False False"


def test_the_command_list_imports_no_command_and_lists_each_with_its_summary() -> None:
    """`autotune --help` lists the commands from the table (every command's module together took 1.4 s to import)."""
    import subprocess
    import sys

    from autotune.cli import _COMMAND_MODULES, COMMAND_SUMMARIES

    assert set(COMMAND_SUMMARIES) == set(_COMMAND_MODULES)
    probe = ("import sys; from autotune.cli import main; code = main(['--help']); "
             "print(code, sorted(m for m in sys.modules if m.startswith('autotune.cli.')), 'optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout
    assert out.splitlines()[-1] == "0 [] False"
    listed = out[out.index("Commands:"):]
    for name, summary in COMMAND_SUMMARIES.items():
        assert f"  {name} " in listed and " ".join(summary.split()[:4]) in listed, (name, listed)


def test_a_group_without_its_command_prints_its_help_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    for args, listed in (([], "dashboard"), (["sim"], "calibrate")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("Usage: autotune") and "error" not in err and listed in err, err

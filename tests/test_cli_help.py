"""Every command's --help renders: no literal ``%%`` (click does not %-format help texts, so ``1%%`` shows as
written) and nothing that breaks the rendering."""
from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from autotune.cli import cli, main


def _paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _paths(command, (*prefix, name))


# cli/run.py belongs to the typed-records work; its line 168 reads "1%% gain". Strict: this fails once fixed,
# and the mark goes then.
_PENDING = {("run",): 'cli/run.py --patience help: "1%% gain" should read "1% gain"'}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(reason=_PENDING[p], strict=True))
                                  if p in _PENDING else p for p in [(), *_paths(cli)]],
                         ids=lambda p: " ".join(p) or "autotune")
def test_help_has_no_literal_percent_escapes(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out
    assert "%%" not in out

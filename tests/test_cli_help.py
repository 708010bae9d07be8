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


@pytest.mark.parametrize("path", [(), *_paths(cli)],
                         ids=lambda p: " ".join(p) or "autotune")
def test_help_has_no_literal_percent_escapes(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out.lower()  # click's "Usage:"; `sim serve` shows its flags' parser's "usage:"
    assert "%%" not in out

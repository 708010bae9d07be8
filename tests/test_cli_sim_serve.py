"""`autotune sim serve`'s command line: its help is the flags' own parser's, so it lists what the server takes."""
from __future__ import annotations

import pytest

from autotune.cli import main


@pytest.mark.parametrize("args", [["--help"], ["flash", "-h"]])
def test_help_lists_the_servers_flags(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sim", "serve", *args])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for flag in ("--port", "--host", "--max-num-seqs", "--gpu-type", "--time-scale", "--startup-delay-s"):
        assert flag in out


def test_no_model_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sim", "serve"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.strip().splitlines() == ["autotune sim serve: error: the following arguments are required: model"]

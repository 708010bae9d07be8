"""`autotune sim serve`'s command line: its help is the flags' own parser's, so it lists what the server takes."""
from __future__ import annotations

import pytest

from autotune.cli import main


@pytest.mark.parametrize("args", [["--help"], ["flash", "-h"]])
def test_help_lists_the_servers_flags(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "serve", *args]) == 0
    out = capsys.readouterr().out
    for flag in ("--port", "--host", "--max-num-seqs", "--gpu-type", "--time-scale", "--startup-delay-s"):
        assert flag in out


def test_no_model_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "serve"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["autotune sim serve: error: the following arguments are required: model"]


def test_a_server_that_cannot_start_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """As vLLM does where the KV cache gets no memory; `autotune` once turned the server's exit status into 0."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["sim", "serve", "flash", "--gpu-memory-utilization", "0.2", "--port", str(port)]) == 1
    assert "No available memory for the cache blocks" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["no-such-model"], "unknown model preset 'no-such-model'"),
    (["flash", "--gpu-type", "h999"], "unknown GPU type 'h999'"),
])
def test_a_bad_model_or_card_is_the_commands_own_error(capsys: pytest.CaptureFixture[str], args: list[str],
                                                       words: str) -> None:
    """Its errors start with its own name, as argparse's do; the launcher's `python -m autotune.sim serve` keeps
    vLLM's (`vllm serve: error:`), the way vLLM's own log reads."""
    from autotune.sim.__main__ import main as launched_main

    assert main(["sim", "serve", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune sim serve: error: ") and words in err[0]
    assert launched_main(["serve", *args]) == 2
    assert capsys.readouterr().err.startswith("vllm serve: error: ")

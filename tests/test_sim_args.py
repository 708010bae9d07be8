from __future__ import annotations

import pytest

from autotune.flags import VLLM_FLAGS, flags_to_argv
from autotune.sim.args import parse_serve_args


def test_every_known_flag_round_trips() -> None:
    flags = {"max-num-seqs": 8, "kv-cache-dtype": "fp8", "enable-chunked-prefill": False, "async-scheduling": True,
             "limit-mm-per-prompt": {"image": 2}, "gpu-memory-utilization": 0.8, "tensor-parallel-size": 2}
    args = parse_serve_args(["flash", *flags_to_argv(flags), "--time-scale", "4", "--gpu-type", "h200"])
    assert args.flags == flags
    assert args.time_scale == 4.0 and args.gpu_type == "h200" and args.served_model_name == "flash"


def test_parser_knows_all_vllm_flags() -> None:
    from autotune.sim.args import build_parser

    known = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert all(f"--{name}" in known for name in VLLM_FLAGS)
    assert {"-tp", "-dp", "--no-enforce-eager"} <= known


def test_aliases_and_underscores() -> None:
    args = parse_serve_args(["m", "-tp", "4", "--max_num_seqs", "16", "--port", "9000", "--served-model-name", "x"])
    assert args.flags == {"tensor-parallel-size": 4, "max-num-seqs": 16}
    assert args.port == 9000 and args.served_model_name == "x" and args.host == "127.0.0.1"


def test_unknown_flag_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_serve_args(["flash", "--max-num-seqz", "8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "vllm serve: error: unrecognized arguments: --max-num-seqz 8"


@pytest.mark.parametrize("argv", [["m", "--max-num-seqs", "x"], ["m", "--kv-cache-dtype", "int3"],
                                  ["m", "--limit-mm-per-prompt", "{bad"], ["m", "--gpu-memory-utilization", "1.5"],
                                  ["m", "--port", "70000"]])  # was bind()'s OverflowError, exit 1
def test_bad_values_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_serve_args(argv)
    assert exc.value.code == 2

"""benchmarks/host_card_grid.py (issue #21): which host term on the sim's card fits a set of H200 levels."""
from __future__ import annotations

import argparse
import math
import sys

import pytest

from tests.benchmark_scripts import REPO, load_benchmark

grid = load_benchmark("host_card_grid")
SIZES = REPO / "docs/results/raw/h200-host-calibration/contention-sizes-lease9"
CARD = grid.load_gpu("h200").extra


def _side(prefill_ms: float | None, tok_s: float = 1000.0, tpot_ms: float = 10.0) -> dict:
    steps = {"prefill_adds_ms": prefill_ms} if prefill_ms is not None else None
    return {"client_steps": steps, "output_tok_s": tok_s, "p50_tpot_ms": tpot_ms}


def test_a_levels_errors_are_the_logs_of_sim_over_gpu() -> None:
    row = {"gpu": _side(50.0, 1000.0, 10.0), "sim": _side(25.0, 1100.0, 10.0)}
    assert grid.level_log_errors(row) == pytest.approx((math.log(0.5), math.log(1.1), 0.0))


def test_cached_levels_and_levels_without_records_are_not_scored() -> None:
    def row(cached: bool, gpu: dict) -> dict:
        return {"cached": cached, "gpu": gpu, "sim": _side(25.0)}
    assert grid.scored(row(False, _side(50.0)))
    assert not grid.scored(row(True, _side(50.0)))  # the prefix cache served its prompts: no prefill to score
    assert not grid.scored(row(False, _side(None)))  # no request records on the GPU side
    assert not grid.scored(row(False, _side(0.0)))


def test_each_axis_gets_the_cards_value_and_bad_axes_are_refused(capsys) -> None:
    ap = argparse.ArgumentParser()
    axes = grid.parse_grid(["host_step_ms=60,20", "eager_step_overhead_ms=10"], CARD, ap)
    assert axes["host_step_ms"] == sorted({20.0, 60.0, float(CARD["host_step_ms"])})
    assert axes["eager_step_overhead_ms"] == sorted({10.0, float(CARD["eager_step_overhead_ms"])})
    for bad, message in ((["host_ms=1"], "no constant 'host_ms'"), (["host_step_ms=a,b"], "finite numeric"),
                         (["host_step_ms=nan"], "finite numeric"),
                         (["host_step_ms=1", "host_step_ms=2"], "host_step_ms given twice")):
        with pytest.raises(SystemExit) as e:
            grid.parse_grid(bad, CARD, ap)
        assert e.value.code == 2 and message in capsys.readouterr().err


def _main(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["host_card_grid.py", *argv])
    assert grid.main() == 0


@pytest.mark.slow  # ~3 s: one H200 level replayed on two cards
def test_a_floor_explains_a_busy_hosts_1024_token_level(monkeypatch, capsys) -> None:
    """On the H200 a busy host's 1,024-token prefills took ~50 ms where the card's GPU work is ~24 ms: a 60 ms floor
    brings the sim to the GPU, the built-in card (no floor) stays half of it."""
    _main(monkeypatch, str(SIZES), "--config-prefix", "busy.in1024.1", "--grid", "host_step_ms=60")
    out = capsys.readouterr().out
    assert "the best combination: host_step_ms=60, loss" in out
    assert "the card as it is: host_step_ms=0, loss" in out
    assert "- contention-sizes-lease9/busy.in1024.1 c16: " in out
    assert "quiet" not in out  # --config-prefix: the quiet levels are not replayed
    losses = dict(line.removeprefix("loss ").split(": ") for line in out.splitlines() if line.startswith("loss "))
    assert float(losses["host_step_ms=60"]) < float(losses["host_step_ms=0"]) / 5


def test_no_level_of_that_name_or_no_such_folder_is_a_one_line_error(monkeypatch, capsys, tmp_path) -> None:
    for argv, message in (([str(SIZES), "--config-prefix", "nothing"], "no level to score"),
                          ([str(tmp_path)], "not a folder of step_counts.sh")):
        monkeypatch.setattr(sys, "argv", ["host_card_grid.py", *argv, "--grid", "host_step_ms=60"])
        with pytest.raises(SystemExit) as e:
            grid.main()
        assert e.value.code == 2 and message in capsys.readouterr().err

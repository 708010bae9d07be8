"""benchmarks/host_card_grid.py (issue #21): which host term on the sim's card fits a set of H200 levels."""
from __future__ import annotations

import math
import sys

import pytest

from tests.benchmark_scripts import REPO, load_benchmark

grid = load_benchmark("host_card_grid")
SIZES = REPO / "docs/results/raw/h200-host-calibration/contention-sizes-lease9"


def test_a_levels_errors_are_the_logs_of_sim_over_gpu() -> None:
    def side(prefill_ms: float, tok_s: float, tpot_ms: float) -> dict:
        return {"client_steps": {"prefill_adds_ms": prefill_ms}, "output_tok_s": tok_s, "p50_tpot_ms": tpot_ms}
    errors = grid.level_errors({"gpu": side(50.0, 1000.0, 10.0), "sim": side(25.0, 1100.0, 10.0)})
    assert errors == pytest.approx((math.log(0.5), math.log(1.1), 0.0))


def test_each_axis_gets_the_cards_value_and_an_unknown_constant_is_refused(monkeypatch, capsys) -> None:
    ap = grid.argparse.ArgumentParser()
    axes = grid.parse_grid(["host_step_ms=60,20", "eager_step_overhead_ms=10"], ap)
    card = grid.load_gpu("h200").extra
    assert axes["host_step_ms"] == sorted({20.0, 60.0, float(card["host_step_ms"])})
    assert float(card["eager_step_overhead_ms"]) in axes["eager_step_overhead_ms"]
    with pytest.raises(SystemExit) as e:
        grid.parse_grid(["host_ms=1"], ap)
    assert e.value.code == 2 and "no constant 'host_ms'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grid.parse_grid(["host_step_ms=a,b"], ap)


@pytest.mark.slow  # ~3 s: one H200 level replayed on two cards
def test_a_floor_explains_a_busy_hosts_1024_token_level(monkeypatch, capsys) -> None:
    """On the H200 a busy host's 1,024-token prefills took ~50 ms where the card's GPU work is ~24 ms: a 60 ms floor
    brings the sim to the GPU, the built-in card (no floor) stays half of it."""
    monkeypatch.setattr(sys, "argv", ["host_card_grid.py", str(SIZES), "--levels", "busy.in1024.1",
                                      "--grid", "host_step_ms=60"])
    assert grid.main() == 0
    out = capsys.readouterr().out
    assert "the best combination: host_step_ms=60, loss" in out
    losses = dict(line.removeprefix("loss ").split(": ") for line in out.splitlines() if line.startswith("loss "))
    assert float(losses["host_step_ms=60"]) < float(losses["host_step_ms=0"]) / 5


def test_no_levels_of_that_name_is_a_one_line_error(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["host_card_grid.py", str(SIZES), "--levels", "nothing",
                                      "--grid", "host_step_ms=60"])
    with pytest.raises(SystemExit) as e:
        grid.main()
    assert e.value.code == 2 and "no levels named 'nothing'" in capsys.readouterr().err

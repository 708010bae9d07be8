"""benchmarks/host_noise.py (issue #21): the sim's spread with the host's step time drawn per run, beside the
spread of fresh H200 servers sent the same requests."""
from __future__ import annotations


import pytest

from tests.benchmark_scripts import REPO, load_benchmark

hn = load_benchmark("host_noise")
LEASE = REPO / "docs/results/raw/h200-host-calibration/servers-lease4"  # three fresh servers, C = 16 and 24


def test_the_gpus_spread_is_pooled_per_load_over_the_folders() -> None:
    loads = hn.gpu_spread([LEASE])
    assert sorted(loads) == [16, 24]
    cv, (low, high), dof = loads[16]["cv"]["output_tok_s"]
    assert dof == 2 and low < cv < high
    flags, run = loads[16]["template"]
    assert int(run["concurrency"]) == 16 and isinstance(flags, dict)


@pytest.mark.slow  # ~4 s: four replays of a level of 64 requests
def test_a_drawn_host_time_spreads_the_sims_runs_and_none_drawn_does_not() -> None:
    flags, run = hn.gpu_spread([LEASE])[16]["template"]
    constants = {"host_step_ms": 38.0}
    exact = hn.sim_spread(flags, run, constants, 0.0, 2, seed=0)
    assert all(cv == 0.0 for cv, _, _ in exact.values())  # the same requests, the same host: the same run
    drawn = hn.sim_spread(flags, run, constants, 0.15, 2, seed=0)
    # at C = 16 a step that carries a prefill takes the host's time: a slower host is a slower run
    assert drawn["output_tok_s"][0] > 0.0 and drawn["prefill_adds_ms"][0] > 0.0

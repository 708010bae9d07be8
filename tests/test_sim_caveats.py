"""What the sim engine is known to get wrong per card and limit (its calibration's ``sim_caveats``), said by a sim
study at its start and kept in its profile's notes; nothing on vLLM."""
from __future__ import annotations

import dataclasses
import json

import pytest

from autotune.gpus import known_gpus, load_gpu, sim_caveats
from autotune.loadgen.workload import parse_workload
from autotune.loadsearch import LoadSearchConfig
from autotune.metrics import LATENCY_METRICS
from autotune.models import PRESETS
from autotune.trial import TrialSettings


def test_each_card_names_limits_it_measured() -> None:
    for name in known_gpus():
        caveats = load_gpu(name).sim_caveats or {}
        assert set(caveats) <= set(LATENCY_METRICS), name  # keyed by limit metric
        assert all("sim-accuracy.md" in text for text in caveats.values()), name  # where the figures come from
    # the H100's calibration has no API server: its TTFT knees lie high; the H200's ITL knees lie low
    assert set(load_gpu("h100").sim_caveats or {}) == {"ttft"}
    assert set(load_gpu("h200").sim_caveats or {}) == {"itl"}


def test_a_sim_study_gets_the_caveats_of_its_limits_only() -> None:
    h200 = load_gpu("h200")
    (itl,) = sim_caveats(h200, ["ttft", "itl"])
    assert itl.startswith("the sim engine on the h200 card, P99 ITL limit: ")
    assert sim_caveats(h200, ["ttft"]) == []
    settings = TrialSettings(engine="sim", model=PRESETS["flash"], gpu=h200, gpus=1,
                             workload=parse_workload("random:512:64", seed=0),
                             search=LoadSearchConfig(limits_ms={"ttft": 500.0, "itl": 50.0}))
    assert settings.sim_caveats() == [itl]
    assert dataclasses.replace(settings, engine="vllm").sim_caveats() == []  # measured, not modelled


@pytest.mark.slow
def test_sim_predict_says_what_its_card_is_known_to_get_wrong(capsys) -> None:
    """A what-if is a sim answer as much as a sim study is: `sim predict` gave its P99 ITL on the h200 card, 19-64%
    high at the GPU's ITL knees, without a word. Now it carries the card's caveats, in JSON and below the table."""
    from autotune.cli import main

    argv = ["sim", "predict", "--model", "flash", "--gpu-type", "h200", "--workload", "random:64:4", "--concurrency",
            "4"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (itl,) = sim_caveats(load_gpu("h200"), LATENCY_METRICS)
    assert data["notes"] == [itl]
    assert main(argv) == 0
    assert f"note: {itl}" in capsys.readouterr().out
    assert main([*argv[:5], "h100", *argv[6:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == sim_caveats(load_gpu("h100"), ["ttft"])

from __future__ import annotations

import pytest

from autotune.gpus import load_gpu
from autotune.models import PRESETS
from autotune.sim.engine import setup_engine
from autotune.space import load_space
from autotune.study import BASELINES, baseline_flags, baseline_layout_note


def test_flash_baselines_on_one_gpu():
    assert baseline_flags("vllm-defaults", PRESETS["flash"], 1) == {}
    seed = baseline_flags("seed-profile", PRESETS["flash"], 1)
    assert seed == {"kv-cache-dtype": "fp8", "max-num-seqs": 1024, "enable-chunked-prefill": True}


def test_moe_seed_profile_is_the_tp4_ep_recipe_and_lies_in_the_space():
    model = PRESETS["glm-4.6v"]
    seed = baseline_flags("seed-profile", model, 4)
    assert seed["tensor-parallel-size"] == 4 and seed["enable-expert-parallel"] is True
    assert seed["mm-encoder-tp-mode"] == "data" and seed["kv-cache-dtype"] == "fp8"
    assert baseline_flags("vllm-defaults", model, 4) == {"tensor-parallel-size": 4}
    space = load_space(None, model, 4, preset="glm-4.6v")
    params = space.params_for(seed, model, 4)
    assert params["tensor-parallel-size"] == 4 and params["enable-expert-parallel"] is True


@pytest.mark.parametrize("preset, gpus, layout", [
    # flash: 32 attention heads, 2 KV heads; GLM-4.6V: 96 attention heads, 8 KV heads
    ("flash", 2, {"tensor-parallel-size": 2}),
    ("flash", 3, {"tensor-parallel-size": 1, "data-parallel-size": 3}),
    ("flash", 6, {"tensor-parallel-size": 2, "data-parallel-size": 3}),
    ("glm-4.6v", 6, {"tensor-parallel-size": 2, "data-parallel-size": 3}),
    ("glm-4.6v", 8, {"tensor-parallel-size": 8}),
])
def test_baselines_run_the_largest_tp_the_model_splits_by_and_dp_over_the_rest(preset, gpus, layout):
    """--gpus 3 and 6 were refused outright: the baselines ran TP over every GPU, which the heads do not divide."""
    model = PRESETS[preset]
    assert baseline_flags("vllm-defaults", model, gpus) == layout
    tp = layout["tensor-parallel-size"]
    assert not model.tensor_parallel_problem(tp) and tp * layout.get("data-parallel-size", 1) == gpus
    seed = baseline_flags("seed-profile", model, gpus)
    assert {k: seed[k] for k in layout} == layout
    assert ("mm-encoder-tp-mode" in seed) == (tp > 1)  # the encoder's data mode only where TP splits it
    assert seed.get("enable-expert-parallel", False) == model.is_moe
    note = baseline_layout_note(model, gpus)
    if tp == gpus:
        assert note == ""
    else:
        assert note.startswith(f"the baselines run tensor-parallel-size {tp} with data-parallel-size {gpus // tp} "
                               f"on the {gpus} GPUs") and model.tensor_parallel_problem(gpus) in note


@pytest.mark.parametrize("gpus", [3, 6])
def test_the_sim_engine_starts_the_baselines_on_gpu_counts_the_heads_do_not_divide(gpus):
    """The sim refuses to start what vLLM refuses (a TP the heads do not divide): the baselines' TP x DP starts."""
    model, gpu = PRESETS["flash"], load_gpu("h100")
    for name in BASELINES:
        setup = setup_engine(model, gpu, baseline_flags(name, model, gpus))
        assert setup.perf.tp * setup.perf.dp == gpus

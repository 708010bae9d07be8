from __future__ import annotations

from autotune.models import PRESETS
from autotune.space import load_space
from autotune.study import baseline_flags


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

from __future__ import annotations

import json

import optuna
import pytest

from autotune.errors import UsageError
from autotune.flags import flags_to_argv
from autotune.models import PRESETS
from autotune.space import default_space_path, load_space

FLASH = PRESETS["flash"]
MOE = PRESETS["glm-4.6v"]


def write(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def test_flash_space_holds_vllm_defaults_and_samples_in_range():
    space = load_space(None, FLASH, 1, preset="flash")
    assert space.tp_choices == [1]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        flags = space.sample(trial, FLASH, 1)
        assert 128 <= flags["max-num-seqs"] <= 1024 and flags["max-num-seqs"] % 128 == 0
        assert flags["kv-cache-dtype"] in ("auto", "fp8")
        assert "mm-encoder-tp-mode" not in flags  # VLM but TP 1: the condition is false
        assert "tensor-parallel-size" not in flags
        assert flags["enable-chunked-prefill"] is True
        study.tell(trial, 1.0)
    params = space.params_for({}, FLASH, 1)
    assert params["max-num-seqs"] == 1024 and params["max-num-batched-tokens"] == 8192
    assert params["gpu-memory-utilization"] == 0.9


# The MoE spaces: TP x DP = GPUs, expert parallel on several GPUs (TP or DP), the encoder mode only with TP > 1.


def test_tp_choices_filtered_by_gpu_count():
    assert load_space(None, MOE, 2, preset="glm-4.6v").tp_choices == [1, 2]


def test_tp_choices_the_model_cannot_split_are_never_proposed(tmp_path):
    # flash: 32 attention heads, 2 KV heads; vLLM refuses TP 3 and 6 on them
    space = load_space(write(tmp_path, "parallel: {tensor-parallel-size: [1, 2, 3, 6]}\n"), FLASH, 6)
    assert space.tp_choices == [1, 2]
    with pytest.raises(UsageError) as err:
        load_space(write(tmp_path, "parallel: {tensor-parallel-size: [3]}\n"), FLASH, 3)
    assert "has 32 attention heads, which tensor-parallel-size 3 does not divide" in str(err.value)
    with pytest.raises(UsageError, match="has 8 KV heads, which tensor-parallel-size 6 neither divides"):
        load_space(write(tmp_path, "parallel: {tensor-parallel-size: [6]}\n"), MOE, 6)  # 96 heads, 8 KV heads


def test_the_generic_space_searches_expert_parallel_over_data_parallel_ranks_too():
    """vLLM spreads an MoE's experts over TP x DP: with --enable-expert-parallel as whole experts. The generic space
    searched EP only with TP > 1, never at TP 1 x DP 4 (the glm-4.6v space and the seed profile did)."""
    space = load_space(default_space_path("generic"), MOE, 4)
    params = space.params_for({"tensor-parallel-size": 1, "enable-expert-parallel": True}, MOE, 4)
    assert params["tensor-parallel-size"] == 1 and params["enable-expert-parallel"] is True
    trial = optuna.trial.FixedTrial({**space.params_for({}, MOE, 4), **params})
    assert space.sample(trial, MOE, 4)["enable-expert-parallel"] is True


def test_a_space_without_tp_choices_lays_an_moe_out_as_the_baselines_do(tmp_path):
    """An MoE over 6 GPUs, TP 6 by default, was refused (8 KV heads): the largest TP they split by, DP over the rest."""
    space = load_space(write(tmp_path, "params: {}\n"), MOE, 6)
    assert space.tp_choices == [2]
    assert space.try_flags({}, 6) == {"tensor-parallel-size": 2, "data-parallel-size": 3}
    assert load_space(write(tmp_path, "params: {}\n"), MOE, 4).tp_choices == [4]
    assert load_space(write(tmp_path, "params: {}\n"), FLASH, 6).tp_choices == [1]


@pytest.mark.parametrize("text, message", [
    ("params:\n  max-num-seqz: {type: int, low: 1, high: 2}\n", "unknown vLLM flag 'max-num-seqz'"),
    ("params:\n  kv-cache-dtype: {type: categorical, choices: []}\n", "non-empty 'choices'"),
    ("params:\n  max-num-seqs: {type: int, low: 512, high: 64}\n", "low (512.0) > high (64.0)"),
    ("params:\n  kv-cache-dtype: {type: categorical, choices: [auto, fp4]}\n", "not one of"),
    ("params:\n  max-num-seqs: {type: int, low: 1, high: 2, when: [sometimes]}\n", "unknown condition"),
    ("params:\n  max-num-seqs: {type: integer, low: 1, high: 2}\n", "params.max-num-seqs.type"),
    ("params: [1, 2\n", "invalid YAML"),
    ("- just a list\n", "expected a mapping"),
    ("params: {}\nfixed: {port: 8000}\n", "set by the launcher"),
    ("params:\n  max-num-seqs: {type: int, low: 1, high: 2}\nbogus: 1\n", "bogus"),
    ("params:\n  max-num-seqs: {type: int, low: 1, high: 2}\nfixed: {max-num-seqs: 4}\n", "both searched and fixed"),
])
def test_bad_spaces_give_one_line_errors(tmp_path, text, message):
    with pytest.raises(UsageError) as err:
        load_space(write(tmp_path, text), FLASH, 1)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read search space"):
        load_space(tmp_path / "nope.yaml", FLASH, 1)


def test_flags_to_argv_spelling():
    argv = flags_to_argv({"max_num_seqs": 256, "enable-prefix-caching": False, "async-scheduling": True,
                          "compilation-config": {"level": 3}, "quantization": None, "tp": 2})
    assert argv == ["--async-scheduling", "--compilation-config", '{"level":3}', "--no-enable-prefix-caching",
                    "--max-num-seqs", "256", "--tensor-parallel-size", "2"]


def test_vision_knobs_only_for_an_image_workload_and_limits_that_admit_it():
    text = load_space(None, FLASH, 1, preset="flash")
    images = load_space(None, FLASH, 1, preset="flash", images_per_request=8)
    vision_knobs = {"limit-mm-per-prompt", "mm-processor-cache-gb", "mm-processor-cache-type"}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen_limits = []
    for _ in range(30):
        trial = study.ask()
        assert not vision_knobs & set(text.sample(trial, FLASH, 1))
        study.tell(trial, 1.0)
        trial = study.ask()
        flags = images.sample(trial, FLASH, 1)
        assert vision_knobs <= set(flags)
        seen_limits.append(flags["limit-mm-per-prompt"])
        study.tell(trial, 1.0)
    # {image: 4} cannot carry 8 images: dropped; the flag value is the mapping, Optuna's param its JSON text
    assert {json.dumps(v, sort_keys=True) for v in seen_limits} == {"null", '{"image": 16, "video": 0}'}
    assert trial.params["limit-mm-per-prompt"] in (None, '{"image":16,"video":0}')
    assert flags_to_argv({"limit-mm-per-prompt": {"image": 16, "video": 0}}) == \
        ["--limit-mm-per-prompt", '{"image":16,"video":0}']
    # vLLM's defaults are a point of the space: a baseline can be queued
    params = images.params_for({"limit-mm-per-prompt": {"image": 16, "video": 0}}, FLASH, 1)
    assert params["limit-mm-per-prompt"] == '{"image":16,"video":0}' and params["mm-processor-cache-gb"] == 4.0
    study.enqueue_trial(images.params_for({}, FLASH, 1))
    queued = images.sample(study.ask(), FLASH, 1)
    assert queued["limit-mm-per-prompt"] is None and queued["mm-processor-cache-type"] == "lru"


def test_no_limit_choice_admitting_the_workload_is_one_line(tmp_path):
    path = write(tmp_path, "params:\n  limit-mm-per-prompt: {type: categorical, choices: [{image: 2}], when: [vlm]}\n")
    assert load_space(path, FLASH, 1, images_per_request=2).params["limit-mm-per-prompt"].choices == [{"image": 2}]
    with pytest.raises(UsageError, match="no limit-mm-per-prompt choice allows the workload's 3 images per request"):
        load_space(path, FLASH, 1, images_per_request=3)
    bad = write(tmp_path, "params:\n  limit-mm-per-prompt: {type: categorical, choices: [{image: -2}]}\n")
    with pytest.raises(UsageError, match="'image' must be a count >= 0"):
        load_space(bad, FLASH, 1)


def test_a_baseline_outside_the_choices_is_projected_onto_the_space(tmp_path):
    """A user's space that leaves vLLM's defaults out: the baselines are still queued (their own flags run; the
    sampler learns them as the nearest point of the space)."""
    space = load_space(write(tmp_path, "params:\n  max-num-seqs: {type: categorical, choices: [128, 256]}\n"
                                       "  kv-cache-dtype: {type: categorical, choices: [fp8]}\n"
                                       "  gpu-memory-utilization: {type: float, low: 0.8, high: 0.85, step: 0.05}\n"),
                       FLASH, 1)
    params = space.params_for({}, FLASH, 1)  # vLLM's defaults: 1024 seqs, auto KV, 0.9 memory
    assert params == {"max-num-seqs": 256, "gpu-memory-utilization": 0.85}  # auto KV: left to the sampler
    study = optuna.create_study()
    study.enqueue_trial(params)
    trial = study.ask()
    flags = space.sample(trial, FLASH, 1)
    assert flags["max-num-seqs"] == 256 and flags["gpu-memory-utilization"] == 0.85 and flags["kv-cache-dtype"] == "fp8"

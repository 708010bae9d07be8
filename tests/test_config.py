"""`build_study_config`: what is checked before a study touches a storage or starts a server (the workload against
the model and the flags; `--try` points)."""
from __future__ import annotations

from pathlib import Path

import pytest

from autotune.config import EngineChoice, RunOptions, build_study_config
from autotune.errors import UsageError

SIM = EngineChoice("sim", "")


def _config(tmp_path: Path, **options):
    return build_study_config(RunOptions(p99_ms=500, storage=f"sqlite:///{tmp_path}/s.db", **options), SIM)


def test_an_image_workload_binds_the_space_to_its_images(tmp_path: Path) -> None:
    cfg = _config(tmp_path, model="flash", workload="mm:64:16:1-8:448x448")
    assert cfg.space.images_per_request == 8
    assert cfg.space.params["limit-mm-per-prompt"].choices == [None, {"image": 16, "video": 0}]
    assert _config(tmp_path, model="flash").space.images_per_request == 0


def test_try_points_may_set_tp_where_the_space_searches_it(tmp_path: Path) -> None:
    points = tmp_path / "try.yaml"
    points.write_text("- {tensor-parallel-size: 1}\n- {tensor-parallel-size: 2, mm-encoder-tp-mode: data}\n")
    cfg = _config(tmp_path, model="flash", gpus=2, try_file=str(points))
    assert cfg.tries == ({"tensor-parallel-size": 1}, {"tensor-parallel-size": 2, "mm-encoder-tp-mode": "data"})
    assert cfg.space.params_for(cfg.tries[0], cfg.settings.model, 2)["tensor-parallel-size"] == 1
    points.write_text("{tensor-parallel-size: 4}\n")
    with pytest.raises(UsageError, match=r"tensor-parallel-size 4 is not among the space's choices .*\(1, 2\)"):
        _config(tmp_path, model="flash", gpus=2, try_file=str(points))
    points.write_text("{tensor-parallel-size: 1}\n")
    with pytest.raises(UsageError, match="tensor-parallel-size is not searched by the space"):
        _config(tmp_path, model="flash", gpus=1, try_file=str(points))  # one GPU: TP 1 only, not searched


def test_a_try_point_leaves_data_parallel_to_the_gpus_and_tp(tmp_path: Path) -> None:
    """A point setting data-parallel-size was refused as "not searched by the space", as if the space could
    search it: DP is GPUs / TP, so the point gives TP where the space searches it."""
    points = tmp_path / "try.yaml"
    points.write_text("{tensor-parallel-size: 2, data-parallel-size: 3}\n")
    with pytest.raises(UsageError) as e:
        _config(tmp_path, model="flash", gpus=6, try_file=str(points))
    assert str(e.value) == (f"--try {points}: data-parallel-size is not set by hand: it follows from --gpus / "
                            "tensor-parallel-size; give tensor-parallel-size instead")
    points.write_text("{tensor-parallel-size: 2}\n")
    cfg = _config(tmp_path, model="flash", gpus=6, try_file=str(points))
    assert cfg.space.try_flags(cfg.tries[0], 6)["data-parallel-size"] == 3


def test_a_try_point_must_admit_the_workload_images(tmp_path: Path) -> None:
    points = tmp_path / "try.yaml"
    points.write_text("{limit-mm-per-prompt: {image: 16, video: 0}}\n")
    assert _config(tmp_path, model="flash", workload="mm:64:16:8:448x448", try_file=str(points)).tries
    points.write_text("{limit-mm-per-prompt: {image: 4}}\n")
    with pytest.raises(UsageError, match=r"--try .*: limit-mm-per-prompt allows 4 image\(s\) per prompt"):
        _config(tmp_path, model="flash", workload="mm:64:16:8:448x448", try_file=str(points))


def test_an_unreadable_or_malformed_try_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read --try file .*no-such\.yaml: No such file") as e:
        _config(tmp_path, model="flash", try_file=str(tmp_path / "no-such.yaml"))
    assert "\n" not in str(e.value)
    points = tmp_path / "try.yaml"
    points.write_text("{max-num-seqs: [1\n")
    with pytest.raises(UsageError, match=r"--try file .*try\.yaml: invalid YAML: ") as e:
        _config(tmp_path, model="flash", try_file=str(points))
    assert "\n" not in str(e.value)


def test_the_load_search_starts_at_or_below_its_ceiling(tmp_path: Path) -> None:
    """--start-concurrency above --max-concurrency was taken and the search started at the ceiling without a word;
    it is refused when given, and the default start comes down to a lower ceiling."""
    with pytest.raises(UsageError, match="--start-concurrency 128 is above --max-concurrency 64"):
        _config(tmp_path, model="flash", start_concurrency=128, max_concurrency=64)
    assert _config(tmp_path, model="flash", max_concurrency=4).settings.search.start_concurrency == 4
    assert _config(tmp_path, model="flash").settings.search.start_concurrency == 8
    assert _config(tmp_path, model="flash", start_concurrency=16).settings.search.start_concurrency == 16


def test_the_default_ceiling_grows_with_the_gpus(tmp_path: Path) -> None:
    """At a fixed default of 1024 every trial on 4-8 GPUs met its limits at the ceiling: a data-parallel layout's
    engines run max-num-seqs x DP requests at once. The default is per GPU; a given one holds, and is stored as given
    (a resumed study keeps its ceiling)."""
    assert _config(tmp_path, model="flash").settings.search.max_concurrency == 1024
    assert _config(tmp_path, model="flash", gpus=4).settings.search.max_concurrency == 4096
    given = _config(tmp_path, model="flash", gpus=4, max_concurrency=512)
    assert given.settings.search.max_concurrency == 512 and given.run_options["max_concurrency"] == 512
    assert _config(tmp_path, model="flash", gpus=4).run_options["max_concurrency"] is None

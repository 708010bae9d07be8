from __future__ import annotations

from autotune.gpus import load_gpu
from autotune.loadgen.workload import parse_workload
from autotune.loadsearch import LoadSearchConfig
from autotune.models import PRESETS
from autotune import trial as trial_mod


def test_levels_on_one_server_never_reuse_prompts(monkeypatch, tmp_path):
    seen: list[list] = []
    records: list[str] = []

    def fake_run_bench(url, name, requests, cfg):
        seen.append([tuple(r.prompt) for r in requests])
        records.append(cfg.records_path)
        from autotune.metrics import summarize
        return summarize([], 1.0)

    monkeypatch.setattr(trial_mod, "run_bench", fake_run_bench)
    settings = trial_mod.TrialSettings(engine="sim", model=PRESETS["flash"], gpu=load_gpu("h100"), gpus=1,
                                       workload=parse_workload("random:16:4", seed=3),
                                       search=LoadSearchConfig(limits_ms={"ttft": 500.0}))
    measure = trial_mod._measure_fn(settings, server=type("S", (), {"url": "http://x"})(), name="m",
                                  records_dir=tmp_path / "levels")
    for c in (8, 16, 8):
        measure(c)
    flat = [p for level in seen for p in level]
    assert len(flat) == len(set(flat))  # no prompt twice, not even at the same concurrency again
    assert seen[0] == [tuple(r.prompt) for r in settings.workload.requests(len(seen[0]))]  # deterministic
    # every level keeps its requests in its own file, also the same concurrency measured again
    assert records == [str(tmp_path / "levels" / f) for f in ("00-c8.jsonl.gz", "01-c16.jsonl.gz", "02-c8.jsonl.gz")]

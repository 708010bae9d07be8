"""A host's own card (`autotune sim calibrate`): the card file, the records it reads back, and the fit recovering a
step constant it was not told."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from autotune.cli import main
from autotune.errors import UsageError
from autotune.gpus import load_gpu
from autotune.loadgen.runner import read_records, steady_level_result
from autotune.loadgen.workload import parse_workload
from autotune.models import resolve_model
from autotune.sim import calibrate as cal
from autotune.sim.engine import setup_engine
from autotune.sim.inproc import bench_in_process
from autotune.loadsearch import LoadSearchConfig
from autotune.testing.models import WEIGHTLESS_FLASH_CONFIG
from autotune.trial import TrialSettings, level_load_config


def _card(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_card_file_is_its_base_with_its_own_constants(tmp_path: Path) -> None:
    h200 = load_gpu("h200")
    card = load_gpu(_card(tmp_path / "host.yaml", "base: h200\neager_step_overhead_ms: 7.5\n"
                                                  "calibrated_from: {study: s, runs: 3}\n"))
    assert card.extra["eager_step_overhead_ms"] == 7.5
    assert {k: v for k, v in card.extra.items() if k != "eager_step_overhead_ms"} == \
        {k: v for k, v in h200.extra.items() if k != "eager_step_overhead_ms"}
    assert (card.hbm_tb_s, card.memory_gib, card.sim_caveats) == (h200.hbm_tb_s, h200.memory_gib, h200.sim_caveats)
    assert card.name == str((tmp_path / "host.yaml").resolve()) and card.base == "h200"
    assert card.calibrated_from == {"study": "s", "runs": 3}


@pytest.mark.parametrize("text, message", [
    ("base: h300\n", "unknown GPU type 'h300'"),
    ("eager_step_overhead_ms: 7\n", "expected a mapping with 'base: CARD'"),
    ("base: h200\nwarp_speed: 9\n", "'warp_speed' is not a constant of the h200 card"),
    ("base: h200\nname: h100\n", "'name' is not a constant"),
    ("base: h200\nhbm_efficiency: fast\n", "hbm_efficiency must be a number"),
    ("base: [h200\n", "invalid YAML"),
    ("base: h200\ncalibrated_from: 5\n", "calibrated_from must be a mapping"),
    ("base: h200\ncalibrated_from: {interval_90: {eager_step_overhead_ms: [2]}}\n",
     "interval_90 maps constants of the h200 card to [low, high], not eager_step_overhead_ms: [2]"),
    ("base: h200\ncalibrated_from: {interval_90: {warp: [1, 2]}}\n", "not warp: [1, 2]"),
])
def test_a_bad_card_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[")) as e:
        load_gpu(_card(tmp_path / "bad.yaml", text))
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="no-such.yaml"):
        load_gpu(str(tmp_path / "no-such.yaml"))


def test_a_levels_records_read_back_give_its_figures(tmp_path: Path, weightless_flash_dir: Path) -> None:
    model = resolve_model(str(weightless_flash_dir))
    settings = TrialSettings(engine="sim", model=model, gpu=load_gpu("h200"), gpus=1,
                             workload=parse_workload("random:512:64:0.5", seed=3),
                             search=LoadSearchConfig(limits_ms={"ttft": 500.0}))
    cfg = level_load_config(settings, 24, tmp_path / "level.jsonl.gz")
    live = bench_in_process(setup_engine(model, settings.gpu, {}), settings.workload.requests(
        cfg.warmup_prompts + cfg.num_prompts), cfg)
    rows = read_records(tmp_path / "level.jsonl.gz")
    assert len(rows) == cfg.warmup_prompts + cfg.num_prompts and sum(w for _, w in rows) == cfg.warmup_prompts
    again = steady_level_result(rows)
    # the records keep times to the microsecond: the figures agree to far better than any effect the fit sees
    assert again.output_tok_s == pytest.approx(live.output_tok_s, rel=1e-4)
    assert again.tpot_ms.p99 == pytest.approx(live.tpot_ms.p99, rel=1e-3)
    assert again.ttft_ms.p99 == pytest.approx(live.ttft_ms.p99, rel=1e-3)


def _flash_dir(folder: Path) -> Path:
    (folder / "flash-weightless").mkdir(exist_ok=True)
    (folder / "flash-weightless" / "config.json").write_text(json.dumps(WEIGHTLESS_FLASH_CONFIG))
    return folder / "flash-weightless"


def _host_study(folder: Path, truth_card: str) -> tuple[str, Path]:
    """A study "measured on a host" whose steps differ from the h200 card's as ``truth_card`` says: the sim
    engine on that card file, standing in for a GPU whose constants the calibration is not told. Its storage URL
    and model."""
    truth = _card(folder / "truth.yaml", truth_card)
    storage = f"sqlite:///{folder}/host.db"
    model_dir = _flash_dir(folder)
    code = main(["run", "--model", str(model_dir), "--engine", "sim", "--gpu-type", truth, "--p99-ms", "300",
                 "--workload", "random:512:64:0.5", "--trials", "2", "--max-concurrency", "64", "--top-k", "1",
                 "--study", "host", "--storage", storage, "--json"])
    assert code in (0, 3)
    return storage, model_dir


@pytest.fixture(scope="module")
def host_study(tmp_path_factory) -> tuple[str, Path]:
    """Mixed steps 8 ms longer than the h200 card says."""
    return _host_study(tmp_path_factory.mktemp("host"), "base: h200\neager_step_overhead_ms: 9.5\n")


@pytest.fixture(scope="module")
def floored_host_study(tmp_path_factory) -> tuple[str, Path]:
    """Steps outside CUDA graphs that last at least 30 ms (the host's time for them; the card has no such floor)."""
    return _host_study(tmp_path_factory.mktemp("floored-host"), "base: h200\nhost_step_ms: 30\n")


@pytest.mark.slow  # ~4 s: one fit of 6 runs
def test_calibrate_finds_the_hosts_step_floor(capsys, tmp_path: Path, floored_host_study: tuple[str, Path]) -> None:
    storage, _ = floored_host_study
    capsys.readouterr()
    card_path = tmp_path / "my-host.yaml"
    code = main(["sim", "calibrate", "--study", "host", "--storage", storage, "--base", "h200", "--fit",
                 "host_step_ms", "--max-runs", "6", "--to", str(card_path), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    # the card has no floor (0 ms): the fit starts there and finds the host's
    assert data["constants"]["host_step_ms"] == pytest.approx(30.0, abs=1.0)
    assert data["loss"]["fitted"] < 0.1 * data["loss"]["start"]
    assert load_gpu(str(card_path)).extra["host_step_ms"] == pytest.approx(data["constants"]["host_step_ms"], abs=1e-3)


@pytest.mark.slow  # ~6 s: one fit of 6 runs, refitted without each trial and over resampled servers
def test_calibrate_finds_the_hosts_step_constant_and_its_card_predicts(capsys, tmp_path: Path,
                                                                      host_study: tuple[str, Path]) -> None:
    storage, model_dir = host_study
    capsys.readouterr()
    card_path = tmp_path / "my-host.yaml"
    code = main(["sim", "calibrate", "--study", "host", "--storage", storage, "--base", "h200", "--fit",
                 "eager_step_overhead_ms", "--max-runs", "6", "--spread", "--to", str(card_path), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["base"] == "h200" and data["runs"] == 6
    # the replay is the study's own engine on its own requests: the constant comes back, not the card's 1.5
    assert data["constants"]["eager_step_overhead_ms"] == pytest.approx(9.5, abs=0.4)
    assert data["loss"]["fitted"] < 0.1 * data["loss"]["start"]
    assert data["errors"]["output_tok_s"]["start"]["median_pct"] > 2.0  # the card's steps were too short
    assert abs(data["errors"]["output_tok_s"]["fitted"]["median_pct"]) < 0.5
    # every server ran on the same host: resampling them, the constant comes back the same, to the search's grain;
    # the one caution is that a sim study stands in for the host here
    assert data["servers"] >= 3 and data["caution"] == cal.SIM_STUDY_CAUTION
    low, high = data["interval_90"]["eager_step_overhead_ms"]
    assert low - 1e-3 <= data["constants"]["eager_step_overhead_ms"] <= high + 1e-3  # the card's 4 decimals
    assert 9.0 <= low <= high <= 10.0
    # every trial ran on the same host: without either one the constant comes back the same
    assert set(data["without_trial"]) == {"0", "1"}
    for constants in data["without_trial"].values():
        assert constants["eager_step_overhead_ms"] == pytest.approx(9.5, abs=0.5)
    card = load_gpu(str(card_path))
    assert card.base == "h200" and card.calibrated_from["study"] == "host"
    assert card.calibrated_from["without_trial"].keys() == {0, 1}
    assert card.extra["eager_step_overhead_ms"] == pytest.approx(data["constants"]["eager_step_overhead_ms"],
                                                                 abs=1e-3)
    code = main(["sim", "predict", "--model", str(model_dir), "--gpu-type", str(card_path),
                 "--workload", "random:512:64:0.5", "--concurrency", "16", "--json"])
    predicted = json.loads(capsys.readouterr().out)
    assert code == 0 and predicted["gpu_type"] == str(card_path) and predicted["output_tok_s"] > 0
    assert set(predicted["interval_90"]["eager_step_overhead_ms"]) == {"low", "high"}


def test_predict_on_a_host_card_gives_the_answer_at_its_intervals_ends(capsys, tmp_path: Path) -> None:
    """The same level with the fitted constant at its 90% interval's ends: a longer mixed step, a slower level."""
    card = _card(tmp_path / "host.yaml", "base: h200\neager_step_overhead_ms: 6.0\n"
                                         "calibrated_from: {interval_90: {eager_step_overhead_ms: [2.0, 20.0]}}\n")
    args = ["sim", "predict", "--model", "flash", "--gpu-type", card, "--workload", "random:1024:128:0.5",
            "--concurrency", "24"]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ends = data["interval_90"]["eager_step_overhead_ms"]
    assert (ends["low"]["value"], ends["high"]["value"]) == (2.0, 20.0)
    assert ends["low"]["output_tok_s"] > data["output_tok_s"] > ends["high"]["output_tok_s"]
    assert ends["low"]["p99_ms"]["tpot"] < data["tpot_ms"]["p99"] < ends["high"]["p99_ms"]["tpot"]
    assert main(args) == 0
    assert "with eager_step_overhead_ms at its 90% interval's ends (2 / 20): output" in capsys.readouterr().out
    assert main(["sim", "predict", "--model", "flash", "--gpu-type", "h200", "--workload", "random:1024:128:0.5",
                 "--concurrency", "24", "--json"]) == 0
    assert "interval_90" not in json.loads(capsys.readouterr().out)  # a built-in card has none


@pytest.fixture(scope="module")
def one_trial_study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibrate")
    assert main(["run", "--model", str(_flash_dir(folder)), "--engine", "sim", "--gpu-type", "h200",
                 "--p99-ms", "300", "--workload", "random:512:64:0.5", "--trials", "1", "--max-concurrency", "16",
                 "--top-k", "0", "--study", "host", "--storage", f"sqlite:///{folder}/host.db", "--json"]) in (0, 3)
    return folder


@pytest.mark.parametrize("args, message", [
    (["--study", "nope"], "no study named 'nope'"),
    (["--study", "host", "--to", "card.txt"], "a card file's name ends in .yaml"),
    (["--study", "host", "--fit", "warp_speed"], "--fit takes some of hbm_efficiency"),
    (["--study", "host", "--base", "other.yaml"], "--base is a built-in card"),
    (["--study", "host", "--out", "elsewhere"], "has no measured run to calibrate on: no level records under"),
    (["--study", "host", "--model", "nosuchpreset"], "unknown model preset 'nosuchpreset'"),
    (["--study", "host", "--spread"], "--spread refits without each trial in turn: study 'host' has runs of one"),
    (["--study", "host", "--to", "no-such-folder/card.yaml"], "no-such-folder does not exist"),  # before the fit
])
def test_calibrate_bad_input_is_one_line(capsys, tmp_path: Path, one_trial_study: Path, args: list[str],
                                         message: str) -> None:
    capsys.readouterr()
    full = ["sim", "calibrate", "--storage", f"sqlite:///{one_trial_study}/host.db", "--to",
            str(tmp_path / "card.yaml"),
            *[str(tmp_path / a) if a in ("elsewhere", "no-such-folder/card.yaml") else a for a in args]]
    code = main(full)
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "card.yaml").exists()


@pytest.mark.slow  # ~4 s: one fit of one trial's runs
def test_a_card_fitted_on_few_servers_says_so(capsys, tmp_path: Path, one_trial_study: Path) -> None:
    """One trial and its winner's re-measurement: two fresh servers, whose luck the constant carries; the console,
    the JSON and the card file's header say so."""
    card_path = tmp_path / "card.yaml"
    common = ["sim", "calibrate", "--storage", f"sqlite:///{one_trial_study}/host.db", "--study", "host",
              "--max-runs", "2", "--to", str(card_path)]
    capsys.readouterr()
    assert main([*common, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["servers"] == 2 and data["caution"].startswith("fitted on the runs of 2 fresh servers: ")
    assert "# Caution: fitted on the runs of 2 fresh servers" in card_path.read_text()
    assert load_gpu(str(card_path)).calibrated_from["servers"] == 2
    assert main(common) == 0
    assert "caution: fitted on the runs of 2 fresh servers" in capsys.readouterr().out


def test_a_study_whose_card_file_is_gone_asks_for_base(capsys, tmp_path: Path) -> None:
    card = Path(_card(tmp_path / "host.yaml", "base: h200\neager_step_overhead_ms: 6.0\n"))
    storage = f"sqlite:///{tmp_path}/s.db"
    main(["run", "--model", "flash", "--engine", "sim", "--gpu-type", str(card), "--trials", "0", "--p99-ms", "500",
          "--study", "x", "--storage", storage, "--json"])
    card.unlink()
    capsys.readouterr()
    code = main(["sim", "calibrate", "--study", "x", "--storage", storage, "--to", str(tmp_path / "new.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"cannot read card file {card}" in err and "(the study's card; give --base" in err


def test_runs_count_their_servers_and_three_need_no_caution(tmp_path: Path) -> None:
    from autotune.sim.calibrate import FEW_SERVERS, Calibration, MeasuredRun

    def runs(folders: list[str]) -> tuple[MeasuredRun, ...]:
        return tuple(MeasuredRun(0, {}, 8, 0, tmp_path / f / "levels" / f"0{i}-c8.jsonl.gz", 100.0, 10.0)
                     for f in folders for i in range(2))

    def calibration(folders: list[str]) -> Calibration:
        return Calibration("h200", {}, {}, 1.0, 0.5, runs(folders), {}, {}, 1, ())

    two = calibration(["trials/0", "remeasure/0-1"])
    assert two.servers == 2 and "2 fresh servers" in two.caution()
    assert FEW_SERVERS == 3 and calibration(["trials/0", "trials/1", "remeasure/0-1"]).caution() is None
    on_sim = dataclasses.replace(calibration(["trials/0", "trials/1", "remeasure/0-1"]), engine="sim")
    assert on_sim.caution() == cal.SIM_STUDY_CAUTION


@pytest.mark.parametrize("flat", [True, False])
def test_a_constant_the_runs_do_not_pin_is_cautioned(monkeypatch, tmp_path: Path, flat: bool) -> None:
    """Runs whose loss does not move with host_step_ms over its whole range (prefills whose GPU work outlasts any
    floor) do not pin it: the card says so, beside the few-servers caution; a loss that moves pins it."""
    from types import SimpleNamespace

    from autotune.progress import NULL_PROGRESS

    def replay(runs, settings, constants):  # noqa: ANN001, ANN202 - _replay_errors' stand-in
        loss = 0.02 if flat else 0.02 + (constants["host_step_ms"] - 30.0) ** 2 / 1e3
        return {"output_tok_s": (0.0,), "p99_tpot_ms": (0.0,)}, np.array([loss])
    monkeypatch.setattr(cal, "_replay_errors", replay)
    fit = cal._fit([], SimpleNamespace(gpu=load_gpu("h200")), ("host_step_ms",), NULL_PROGRESS)
    assert set(cal.PINNED_BY) == set(cal.CALIBRATED_CONSTANTS)  # the caution knows what pins each
    assert fit.start == {"host_step_ms": 0.0} and len(fit.grid_losses["host_step_ms"]) == 9
    assert fit.unpinned == (("host_step_ms",) if flat else ())
    if not flat:
        assert fit.constants["host_step_ms"] == pytest.approx(30.0, abs=0.5)
    runs = tuple(cal.MeasuredRun(0, {}, 8, 0, tmp_path / f / "levels" / "00-c8.jsonl.gz", 100.0, 10.0)
                 for f in ("trials/0", "trials/1", "trials/2"))
    card = cal.Calibration("h200", fit.start, fit.constants, fit.loss_start, fit.loss, runs, {}, {}, 1, (),
                           unpinned=fit.unpinned)
    if flat:
        assert "do not pin host_step_ms" in card.caution() and "0 to 80" in card.caution()
    else:
        assert card.caution() is None

def test_the_server_interval_resamples_servers_on_the_fits_own_replays(tmp_path: Path) -> None:
    """Four servers whose runs each want another constant (2, 4, 6, 8 ms: a run's loss term is its squared
    distance): the pooled fit is 5, and resampling the servers moves it within [2, 8]; servers that agree give a
    zero-width interval; the interval is seeded."""
    from autotune.sim.calibrate import MeasuredRun, server_interval

    values = np.arange(0.0, 10.01, 0.5)
    runs = [MeasuredRun(s, {}, 8, 0, tmp_path / "trials" / str(s) / "levels" / f"0{i}-c8.jsonl.gz", 100.0, 10.0)
            for s in range(4) for i in range(2)]

    def evaluated(wanted: list[float]) -> tuple:
        return tuple(({"eager_step_overhead_ms": float(v)}, np.array([(v - w) ** 2 for w in wanted]))
                     for v in values)
    apart = evaluated([2, 2, 4, 4, 6, 6, 8, 8])
    low, high = server_interval(runs, apart)["eager_step_overhead_ms"]
    assert 2.0 <= low < 5.0 < high <= 8.0
    assert server_interval(runs, apart) == {"eager_step_overhead_ms": (low, high)}  # seeded
    assert server_interval(runs, evaluated([5] * 8)) == {"eager_step_overhead_ms": (5.0, 5.0)}


def test_a_real_h200_studys_runs_are_found_with_their_requests(tmp_path: Path, weightless_flash_dir: Path) -> None:
    """The study `benchmarks/gpu/host_calibration.sh` ran on an H200 (docs/results/raw/h200-host-calibration): every
    run its folder keeps is the study's stream slice, and a run's figure read back is its level's."""
    import gzip
    import shutil

    import optuna

    from autotune import records
    from autotune.sim.calibrate import measured_runs, study_settings

    raw = Path(__file__).resolve().parent.parent / "docs" / "results" / "raw" / "h200-host-calibration"
    with gzip.open(raw / "autotune.db.gz", "rb") as src, open(tmp_path / "host.db", "wb") as dst:
        shutil.copyfileobj(src, dst)
    study = optuna.load_study(study_name="host", storage=f"sqlite:///{tmp_path}/host.db")
    settings = study_settings(study, resolve_model(str(weightless_flash_dir)), load_gpu("h200"))
    runs, left_out = measured_runs(study, raw / "host", settings)
    assert len(runs) == 15 and left_out == []
    assert {r.trial_number for r in runs} == {0, 1, 2}
    assert {r.server.name for r in runs} == {"0", "1", "2"}  # one fresh server a trial (no re-measurement)
    for t in records.read_trials(study):
        first = [r for r in runs if r.trial_number == t.number]
        assert first[0].first_request == 0 and all(b.first_request > a.first_request for a, b in zip(first, first[1:]))
        for level in t.result.levels:
            if level.runs == 1:  # a level the search did not extend: its one run is its figure
                (run,) = [r for r in first if r.concurrency == level.concurrency]
                assert run.output_tok_s == pytest.approx(level.output_tok_s, rel=1e-3)


def test_runs_whose_flags_the_sim_does_not_start_are_left_out_with_why(tmp_path: Path,
                                                                       weightless_flash_dir: Path) -> None:
    from autotune.sim.calibrate import MeasuredRun, _startable

    settings = TrialSettings(engine="sim", model=resolve_model(str(weightless_flash_dir)), gpu=load_gpu("h200"),
                             gpus=1, workload=parse_workload("random:512:64:0.5", seed=0),
                             search=LoadSearchConfig(limits_ms={"ttft": 500.0}))
    path = tmp_path / "trials" / "3" / "levels" / "00-c8.jsonl.gz"
    ok = MeasuredRun(3, {}, 8, 0, path, 100.0, 10.0)
    starved = MeasuredRun(4, {"gpu-memory-utilization": 0.05}, 8, 0, path, 100.0, 10.0)  # no room for the weights
    kept, left_out = _startable([ok, starved], settings, tmp_path)
    assert kept == [ok]
    assert len(left_out) == 1 and left_out[0].startswith("trials/3/levels/00-c8.jsonl.gz: the sim engine does not "
                                                          "start trial 4's flags (")


@pytest.mark.slow  # ~4 s: an image study first
def test_calibrate_an_image_study_on_a_text_only_model_is_refused(capsys, tmp_path: Path) -> None:
    """Every replayed request of the image workload would be refused by a model without a vision tower: the fit
    had no loss to minimize and ended in KeyError: 'errors' (exit 1)."""
    storage = f"sqlite:///{tmp_path}/mm.db"
    assert main(["run", "--model", "flash", "--engine", "sim", "--p99-ms", "500", "--gpus", "1",
                 "--workload", "mm:128:16:1:224x224", "--trials", "1", "--max-concurrency", "4", "--top-k", "0",
                 "--study", "mm", "--storage", storage, "--json"]) in (0, 3)
    capsys.readouterr()
    code = main(["sim", "calibrate", "--storage", storage, "--study", "mm", "--to", str(tmp_path / "card.yaml"),
                 "--model", str(_flash_dir(tmp_path))])  # GLM-4.6V-Flash's text backbone: no vision tower
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "sends images, but model" in err and "has no vision tower" in err and "give --model the study's model" in err
    assert not (tmp_path / "card.yaml").exists()

"""`autotune bench --profile`: a deployed server checked against the profile its study wrote, at the profile's level,
within the run-to-run noise of fresh servers."""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from autotune.cli import main
from autotune.config import REAL_GPU_NOISE_FLOOR
from autotune.metrics import BenchResult, Distribution, RequestOutput
from autotune.profile import ServeLoad, read_profile, write_profile
from autotune.profile_check import check_against_profile
from autotune.testing.fakeserver import FakeServer


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profile a sim study wrote, at concurrency 16 of random:16:4 under P99 TTFT <= 500 ms."""
    folder = tmp_path_factory.mktemp("profile")
    code = main(["run", "--model", "flash", "--engine", "sim", "--storage", f"sqlite:///{folder}/s.db", "--study", "p",
                 "--p99-ms", "500", "--trials", "1", "--top-k", "1", "--repeats", "1", "--workload", "random:16:4",
                 "--max-concurrency", "16", "--start-concurrency", "16", "--json"])
    assert code == 0
    path = folder / "p" / "profile.yaml"
    assert read_profile(path).concurrency == 16
    first, second = path.read_text().splitlines()[:2]  # where a reader of the file goes next
    # the study's storage named where it is not the default one, which export would open instead
    assert first == (f"# autotune profile of study 'p'. Deploy it: autotune export --study p --storage "
                     f"sqlite:///{folder}/s.db --to REPO")
    assert second.endswith(f"autotune bench --url URL --model SERVED_NAME --profile {path}")
    return path


def test_the_profile_header_names_the_default_storage_by_leaving_it_out(profile_file, tmp_path):
    from autotune.profile import write_profile
    from autotune.storage import DEFAULT_STORAGE

    profile = read_profile(profile_file)
    profile = profile.model_copy(update={"study": profile.study.model_copy(update={"storage": DEFAULT_STORAGE})})
    first = write_profile(profile, tmp_path / "profile.yaml").read_text().splitlines()[0]
    assert first == "# autotune profile of study 'p'. Deploy it: autotune export --study p --to REPO"


def with_throughput(profile_file: Path, folder: Path, mean: float, values: list[float]) -> Path:
    """The profile with its runs' throughput set (the fake server's speed is not the sim's)."""
    data = yaml.safe_load(profile_file.read_text())
    std = float(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    data["metrics"]["output_tok_s"].update(mean=mean, std=std, min=min(values), max=max(values), n=len(values))
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def result(output_tok_s: float, ttft_s: float) -> BenchResult:
    outputs = tuple(RequestOutput(True, 16, 4, ttft_s, (0.01, 0.01, 0.01), ttft_s + 0.03, i * 0.1) for i in range(64))
    nan = Distribution(math.nan, math.nan, math.nan, math.nan, math.nan)
    return BenchResult(64, 0, 6.4, output_tok_s, output_tok_s * 5, 10.0, nan, nan, nan, nan, outputs=outputs)


def test_one_run_is_judged_with_the_spread_one_more_run_has(profile_file):
    """Two runs of 1,000 and 1,040: one more run lies within z * sigma * sqrt(1 + 1/2) of their mean, sigma their
    own spread or, were it smaller, the GPU's 3% run-to-run floor."""
    profile = read_profile(profile_file).model_copy(deep=True)
    tput = profile.metrics.output_tok_s.model_copy(update={"mean": 1020.0, "std": 28.28, "min": 1000.0,
                                                             "max": 1040.0, "n": 2})
    profile = profile.model_copy(update={"metrics": profile.metrics.model_copy(update={"output_tok_s": tput})})
    half = 1.6449 * max(28.28, REAL_GPU_NOISE_FLOOR * 1020.0) * math.sqrt(1.5)
    inside = check_against_profile(profile, result(1020.0 - 0.95 * half, 0.1))
    assert inside.expected_low_tok_s == pytest.approx(1020.0 - half, rel=1e-3)
    assert inside.holds is True and not inside.slower and "as profiled, within noise" in inside.lines()[0]
    below = check_against_profile(profile, result(1020.0 - 1.05 * half, 0.1))
    assert below.slower and below.holds is False and below.lines()[-1] == "the deployment does NOT hold its profile"
    assert "faster than profiled" in check_against_profile(profile, result(1020.0 + 1.05 * half, 0.1)).lines()[0]


def test_a_p99_is_judged_as_a_study_level_judges_it(profile_file):
    """P99 TTFT 560 ms against 500: within the GPU's 17% run-to-run spread of a P99, so at the limit, not over it;
    900 ms is over it beyond noise; 300 ms holds."""
    profile = read_profile(profile_file)
    mean = profile.metrics.output_tok_s.mean
    sides = {ttft_ms: check_against_profile(profile, result(mean, ttft_ms / 1000)).p99[0].within
             for ttft_ms in (300, 560, 900)}
    assert sides == {300: True, 560: None, 900: False}
    assert check_against_profile(profile, result(mean, 0.9)).holds is False
    unsettled = check_against_profile(profile, result(mean, 0.56))
    assert unsettled.holds is None and unsettled.lines()[-1].startswith("not settled by one run")
    # two runs pooled narrow the run-to-run part by sqrt(2): 640 ms is within noise of 500 after one, over after two
    assert check_against_profile(profile, result(mean, 0.64)).p99[0].within is None
    assert check_against_profile(profile, result(mean, 0.64), runs=2).p99[0].within is False


def test_the_mean_of_several_runs_is_judged_with_the_spread_of_a_mean(profile_file):
    profile = read_profile(profile_file)
    tput = profile.metrics.output_tok_s
    one, four = (check_against_profile(profile, result(tput.mean, 0.1), runs=m) for m in (1, 4))
    sigma = max(tput.std if tput.n > 1 else 0.0, REAL_GPU_NOISE_FLOOR * tput.mean)
    for check, m in ((one, 1), (four, 4)):
        assert check.expected_high_tok_s - tput.mean == pytest.approx(1.6449 * sigma * math.sqrt(1 / m + 1 / tput.n),
                                                                      rel=1e-3)
    assert "(the mean of 4 runs)" in four.lines()[0] and four.to_json()["runs"] == 4
    # the mean lies in the interval, as one run does
    assert "; one run of it lies in [" in one.lines()[0] and "; the mean of 4 runs of it lies in [" in four.lines()[0]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


def bench(server: FakeServer, profile: Path, *args: str) -> list[str]:
    return ["bench", "--url", server.url, "--model", "fake-model", "--profile", str(profile), *args]


@pytest.mark.slow  # two load levels on the fake server: a 2 s ramp each
def test_bench_profile_runs_the_profiles_level_and_exits_3_where_it_does_not_hold(server, profile_file, tmp_path,
                                                                                  capsys):
    server.configure(ttft_ms=2, itl_ms=1)
    slow = with_throughput(profile_file, tmp_path, 1e9, [1e9, 1e9])  # a profile no server reaches
    code = main(bench(server, slow, "--json"))
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert code == 3 and data["concurrency"] == 16 and data["workload"] == {**data["workload"], "spec": "random:16:4"}
    check = data["profile_check"]
    assert check["slower"] and check["holds"] is False and check["concurrency"] == 16
    assert [p["metric"] for p in check["p99"]] == ["ttft"] and check["p99"][0]["within"] is True
    assert captured.err.strip().endswith("slower than profiled beyond noise") and captured.err.count("\n") == 1

    fast = with_throughput(profile_file, tmp_path, 1.0, [1.0, 1.0])  # a profile every server beats
    code = main(bench(server, fast))
    out = capsys.readouterr().out
    assert code == 0 and "above it: faster than profiled" in out and "the deployment holds its profile" in out


@pytest.mark.slow  # one load level at 0.9 s per request
def test_a_p99_over_its_limit_beyond_noise_does_not_hold(server, profile_file, tmp_path, capsys):
    server.configure(ttft_ms=900, itl_ms=1)
    code = main(bench(server, with_throughput(profile_file, tmp_path, 1.0, [1.0, 1.0]), "--json"))
    captured = capsys.readouterr()
    assert code == 3 and json.loads(captured.out)["profile_check"]["p99"][0]["within"] is False
    assert "a P99 over its limit beyond noise, where the profile's was within it" in captured.err


@pytest.mark.slow  # two load levels at 0.56 s per request
def test_a_p99_within_noise_of_its_limit_is_measured_again_as_a_study_level_is(server, profile_file, tmp_path,
                                                                                capsys):
    server.configure(ttft_ms=560, itl_ms=1)
    profile = with_throughput(profile_file, tmp_path, 1.0, [1.0, 1.0])
    code = main(bench(server, profile, "--json"))
    captured = capsys.readouterr()
    check = json.loads(captured.out)["profile_check"]
    assert code == 0 and check["runs"] == 2 and check["holds"] is None and check["p99"][0]["within"] is None
    assert "the level again (run 2 of at most 2, other requests)" in captured.err
    assert main(bench(server, profile, "--max-runs", "1", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["profile_check"]["runs"] == 1


@pytest.mark.parametrize("args, words", [
    (["--concurrency", "8"], "--profile sets the load level (the profile's concurrency, workload and limits): not "
                             "with --concurrency"),
    (["--workload", "random:8:8"], "not with --workload"),
    (["--slo", "ttft=100"], "not with --slo"),
    (["--whole-run"], "not with --whole-run"),
])
def test_bench_profile_refuses_what_would_change_its_level(server, profile_file, capsys, args, words):
    assert main(bench(server, profile_file, *args)) == 2
    assert words in capsys.readouterr().err


def test_max_runs_without_a_profile_is_refused(server, capsys):
    assert main(["bench", "--url", server.url, "--model", "fake-model", "--concurrency", "2", "--max-runs", "3"]) == 2
    assert "--max-runs is for --profile" in capsys.readouterr().err


def test_a_file_that_is_not_a_profile_is_one_line(server, tmp_path, capsys):
    for body, words in (("a: [", "not YAML"), ("autotune_profile: 6\n", "not a profile `autotune run` wrote")):
        path = tmp_path / "p.yaml"
        path.write_text(body)
        assert main(bench(server, path)) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert main(bench(server, tmp_path / "missing.yaml")) == 2
    assert "No such file" in capsys.readouterr().err


def test_a_binary_file_given_as_the_profile_is_one_line(server, tmp_path, capsys):
    """A study's database given for its profile (s.db beside the study's folder): it was Python's
    UnicodeDecodeError, exit 1, as for a fault of autotune's."""
    path = tmp_path / "s.db"
    path.write_bytes(b"SQLite format 3\x00\xfb\xff\x00")
    assert main(bench(server, path)) == 2
    err = capsys.readouterr().err
    assert f"--profile {path}: not a text file" in err and err.count("\n") == 1


def test_a_p99_over_its_limit_as_the_profiles_own_runs_were_is_as_profiled(profile_file):
    """A winner can meet the limits below its load, where its throughput at the limit lies, with its mean P99 at its
    load over a limit (the profile's note says to serve below it): over the limit there is what the profile says,
    not a deployment that fails it."""
    profile = read_profile(profile_file)
    ttft = profile.metrics.p99["ttft"].model_copy(update={"mean_ms": 540.0, "values_ms": [520.0, 560.0]})
    over = profile.model_copy(update={"metrics": profile.metrics.model_copy(update={"p99": {"ttft": ttft}})})
    mean = profile.metrics.output_tok_s.mean
    check = check_against_profile(over, result(mean, 0.9))
    assert check.p99[0].within is False and check.p99[0].profile_over_limit and check.holds is True
    assert "as the profile's own runs were at this load (its note: serve below it)" in check.lines()[1]
    assert check_against_profile(profile, result(mean, 0.9)).holds is False  # the profile's own runs were within


def test_a_profile_without_throughput_gives_no_ratio_rather_than_an_error(profile_file):
    profile = read_profile(profile_file)
    tput = profile.metrics.output_tok_s.model_copy(update={"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0})
    edited = profile.model_copy(update={"metrics": profile.metrics.model_copy(update={"output_tok_s": tput})})
    check = check_against_profile(edited, result(100.0, 0.1))
    assert math.isnan(check.change_pct) and "(one run), its mean 0 " in check.lines()[0]


def with_serve(profile_file: Path, concurrency: int = 12):
    """The sim study's profile with a serve load below its concurrency 16, as a GPU study's has."""
    profile = read_profile(profile_file)
    serve = ServeLoad(concurrency=concurrency, runs_within_limits=0.95,
                      output_tok_s=0.9 * profile.metrics.output_tok_s_at_limit.mean, p99_ms={"ttft": 350.0},
                      p99_run_cv={"ttft": 0.172}, below_searched_loads=False)
    return profile.model_copy(update={"serve": serve})


def test_a_p99_at_or_over_its_limit_names_the_profiles_serve_load(profile_file):
    """The profile's concurrency is its knee, where a P99 lies near its limit: a deployment checked there comes out
    not settled, or over, as often as not. The check says where a deployment that must hold the limits serves."""
    profile = with_serve(profile_file)
    mean = profile.metrics.output_tok_s.mean
    advice = ("the profile's concurrency 16 is its knee, where a P99 lies near its limit: a deployment that must hold "
              "the limits in most runs should serve at concurrency ≤ 12 for its P99s within the limits in 19 runs of "
              "20 (P99 ttft 350 ms expected there, run-to-run spread 17.2%): about "
              f"{profile.serve.output_tok_s:,.0f} output tok/s, 10.0% below its throughput at the limit (check a "
              "deployment there: add --serve-load)")
    for ttft_s, holds in ((0.56, None), (0.9, False)):
        check = check_against_profile(profile, result(mean, ttft_s))
        assert check.holds is holds and check.lines()[-1] == advice
        assert check.to_json()["serve_concurrency"] == 12
        assert check.to_json()["serve_output_tok_s"] == pytest.approx(profile.serve.output_tok_s)
    # what the check judges is the same with a serve load or without
    assert check_against_profile(read_profile(profile_file), result(mean, 0.9)).holds is False
    held = check_against_profile(profile, result(mean, 0.3))
    assert held.holds is True and "should serve at" not in "\n".join(held.lines())
    assert held.to_json()["serve_concurrency"] is None
    # without a serve load, or with none below the profile's own, nothing to add
    for other in (read_profile(profile_file), with_serve(profile_file, 16)):
        unsettled = check_against_profile(other, result(mean, 0.56))
        assert unsettled.holds is None and unsettled.lines()[-1].startswith("not settled")
        assert unsettled.to_json()["serve_concurrency"] is None


@pytest.mark.slow  # two load levels at 0.56 s per request
def test_bench_profile_names_the_serve_load_in_words_and_in_json(server, profile_file, tmp_path, capsys):
    server.configure(ttft_ms=560, itl_ms=1)
    slow = with_throughput(profile_file, tmp_path, 1.0, [1.0, 1.0])  # the fake server's speed is not the sim's
    path = write_profile(with_serve(slow), tmp_path / "served.yaml")
    assert main(bench(server, path, "--max-runs", "1", "--json")) == 0
    check = json.loads(capsys.readouterr().out)["profile_check"]
    assert check["holds"] is None and check["serve_concurrency"] == 12
    assert main(bench(server, path, "--max-runs", "1")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("not settled by one run") and out[-1].startswith(
        "the profile's concurrency 16 is its knee, where a P99 lies near its limit: a deployment that must hold the "
        "limits in most runs should serve at concurrency ≤ 12 for its P99s within the limits in 19 runs of 20")


def test_at_the_serve_load_the_check_judges_against_what_the_profile_expects_there(profile_file):
    """At the serve load nothing was measured: the throughput is judged against the serve load's expected figure,
    with the profile's own relative spread; each P99 against its limit, beside the P99 the profile expects there."""
    profile = with_serve(profile_file)
    tput = profile.metrics.output_tok_s
    expected = profile.serve.output_tok_s
    at_knee = check_against_profile(profile, result(tput.mean, 0.3))
    check = check_against_profile(profile, result(expected, 0.3), at_serve_load=True)
    assert check.concurrency == 12 and check.at_serve_load and check.holds is True
    assert check.profile_mean_tok_s == pytest.approx(expected)
    scale = expected / tput.mean  # the knee's interval scaled to the serve load's expected throughput
    assert check.expected_low_tok_s == pytest.approx(at_knee.expected_low_tok_s * scale)
    assert check.expected_high_tok_s == pytest.approx(at_knee.expected_high_tok_s * scale)
    lines = check.lines()
    assert lines[0].startswith(f"against the profile's serve load, concurrency 12: {expected:,.0f} output tok/s "
                               f"(one run), +0.0% from the {expected:,.0f} it expects there")
    assert lines[0].endswith("as expected, within noise")
    assert lines[1].endswith("holds (the profile expects 350 ms there)")
    assert lines[-1] == "the deployment holds its profile's serve load"  # and no advice to serve elsewhere
    data = check.to_json()
    assert data["at_serve_load"] is True and data["concurrency"] == 12 and data["serve_concurrency"] is None
    assert data["p99"][0]["expected_ms"] == 350.0 and data["p99"][0]["profile_over_limit"] is False
    slow = check_against_profile(profile, result(0.97 * check.expected_low_tok_s, 0.3), at_serve_load=True)
    assert slow.slower and slow.holds is False and "slower than expected, beyond noise" in slow.lines()[0]
    assert slow.lines()[-1] == "the deployment does NOT hold its profile's serve load"
    # over the limit beyond noise is a failure there even where the profile's own runs at its knee were over
    over = profile.model_copy(update={"metrics": profile.metrics.model_copy(update={"p99": {
        "ttft": profile.metrics.p99["ttft"].model_copy(update={"mean_ms": 540.0, "values_ms": [520.0, 560.0]})}})})
    assert check_against_profile(over, result(tput.mean, 0.9)).holds is True  # at the knee: as profiled
    assert check_against_profile(over, result(expected, 0.9), at_serve_load=True).holds is False


@pytest.mark.slow  # one load level at 0.9 s per request
def test_bench_serve_load_runs_the_serve_load_and_exits_3_over_its_limit(server, profile_file, tmp_path, capsys):
    server.configure(ttft_ms=900, itl_ms=1)
    slow = with_throughput(profile_file, tmp_path, 1.0, [1.0, 1.0])
    path = write_profile(with_serve(slow).model_copy(update={"serve": with_serve(slow).serve.model_copy(
        update={"output_tok_s": 1.0})}), tmp_path / "served.yaml")
    # the profile's header says how to check a deployment at its serve load
    assert path.read_text().splitlines()[1].endswith(
        f"--profile {path} (at its serve load, concurrency 12: add --serve-load)")
    code = main(bench(server, path, "--serve-load", "--json"))
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert code == 3 and data["concurrency"] == 12 and data["profile_check"]["at_serve_load"] is True
    assert data["profile_check"]["p99"][0]["within"] is False
    assert captured.err.strip().endswith(f"does not hold the serve load of profile {path}: a P99 over its limit "
                                         "beyond noise, where the profile expects it within")


def test_serve_load_needs_a_profile_with_one(server, profile_file, capsys):
    assert main(["bench", "--url", server.url, "--model", "fake-model", "--concurrency", "2", "--serve-load"]) == 2
    assert "--serve-load is for --profile" in capsys.readouterr().err
    assert read_profile(profile_file).serve is None  # the noiseless sim's study has none
    assert main(bench(server, profile_file, "--serve-load")) == 2
    err = capsys.readouterr().err
    assert f"--serve-load: profile {profile_file} has no serve load" in err and err.count("\n") == 1

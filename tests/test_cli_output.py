"""Output that reads in a log as well as in a terminal: piped (not a terminal, rich's 80 columns), the study
name and the `vllm serve` line are never wrapped or cut, and a study's progress is one line per trial."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autotune.cli import main

pytestmark = pytest.mark.slow  # a small study end to end (about 10 s on a busy 2-core machine)

NAME = "a-study-name-long-enough-to-break-at-eighty-columns-when-a-console-wraps-it-x"


def test_piped_output_keeps_names_and_commands_whole(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    code = main(["run", "--model", "flash", "--engine", "sim", "--p99-ms", "500", "--storage", url, "--study", NAME,
                 "--trials", "2", "--workload", "random:512:512", "--repeats", "1", "--top-k", "0",
                 "--max-concurrency", "256", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    serve = [line for line in out.splitlines() if line.strip().startswith("vllm serve")]
    # Long decodes, where the sim's fp8 KV gain (+3% at the limit) makes the seed profile's long command the winner's
    assert len(serve) == 1 and serve[0].strip().endswith("--max-num-seqs 1024")  # the seed profile's, whole
    trial_lines = [line for line in err.splitlines() if "] trial " in line]
    assert len(trial_lines) == 2 and all("tok/s" in line and "GPU-min" in line for line in trial_lines)
    assert any(NAME in line for line in err.splitlines())
    # The Best line's P99 is the one the limit is judged on: the mean over the winner's runs, each run shown.
    metrics = yaml.safe_load(Path(out.split("Profile: ")[1].split()[0]).read_text())["metrics"]
    p99 = metrics["p99"]["ttft"]
    runs = ", ".join(f"{v:,.0f}" for v in p99["values_ms"])
    best_line = next(line for line in out.splitlines() if line.startswith("Best"))
    assert len(p99["values_ms"]) == 2
    assert f"P99 ttft {p99['mean_ms']:,.0f} ms (mean of {runs}; limit 500 ms)" in best_line, best_line
    assert main(["best", "--study", NAME, "--storage", url]) == 0
    best = capsys.readouterr().out.splitlines()
    # its throughput in `best`'s words: at the limit with that interval, then as measured at its load
    throughput = best[1].strip().rsplit(", P99 ", 1)[0]
    assert "at the limit ±" in throughput and f" — {throughput}, P99 " in best_line, (best_line, throughput)
    assert best[0].endswith("(the final comparison's winner)")  # one pair of brackets: "(selection (re-measured))"
    assert best[0].startswith(NAME) and any(line.strip().startswith("vllm serve") and
                                            line.strip().endswith("1024") for line in best)
    assert main(["studies", "--storage", url]) == 0
    listed = capsys.readouterr().out
    at_limit = yaml.safe_load(Path(out.split("Profile: ")[1].split()[0]).read_text())["metrics"][
        "output_tok_s_at_limit"]["mean"]
    assert f"study={NAME} " in listed and f"winner=trial {best[0].split('trial ')[1].split()[0]}: {at_limit:,.0f} " \
        "output tok/s at the limit" in listed, listed


def test_engine_notes_follow_the_verdict(capsys, tmp_path):
    """A note on the winner (an untuned MoE kernel, read from vLLM's start) is printed after the verdict, whole."""
    import io

    from rich.console import Console

    from autotune.cli.run import print_summary

    code = main(["run", "--model", "flash", "--engine", "sim", "--gpu-type", "h200", "--p99-ms", "500", "--storage",
                 f"sqlite:///{tmp_path}/s.db", "--trials", "2", "--workload", "random:256:16", "--repeats", "0",
                 "--top-k", "0", "--max-concurrency", "64", "--out", str(tmp_path / "out"), "--json"])
    report = json.loads(capsys.readouterr().out)
    # the sim prints no such line (and the h200 card no TTFT caveat); its search met the limit at --max-concurrency
    assert code == 0 and [n for n in report["notes"] if "--max-concurrency 64" not in n] == []
    note = "vLLM ran the MoE layers on its fused-MoE kernel's default config: " + "x" * 200
    # a noisy study's figures: the Best line's ± is the interval's half width of the throughput at the limit, as
    # `best` and `export` give it, not the runs' standard deviation
    tput = {**report["best"]["output_tok_s_at_limit_interval"], "std": 12.0, "half_width": 345.0, "n": 2}
    out = io.StringIO()
    print_summary({**report, "notes": [note], "best": {**report["best"], "output_tok_s_at_limit_interval": tput}},
                  Console(file=out, width=80, soft_wrap=True))  # as `run` prints
    lines = out.getvalue().splitlines()
    assert lines[lines.index(report["verdict"]) + 1] == f"note: {note}" and lines[-1].startswith("Profile: ")
    assert "output tok/s at the limit ± 345 (90% interval, the search's figure); measured" in lines[0], lines[0]


def test_a_sim_study_under_a_limit_its_card_gets_wrong_says_so(capsys, tmp_path):
    """The h200 card's sim is known to place ITL-limited knees too low: a sim study under an ITL limit says so at its
    start, after its verdict and in its profile's notes."""
    from autotune.gpus import load_gpu, sim_caveats

    (caveat,) = sim_caveats(load_gpu("h200"), ["itl"])
    code = main(["run", "--model", "flash", "--engine", "sim", "--gpu-type", "h200", "--slo", "ttft=500,itl=60",
                 "--storage", f"sqlite:///{tmp_path}/s.db", "--trials", "2", "--workload", "random:256:16",
                 "--repeats", "0", "--top-k", "0", "--max-concurrency", "64", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [line.split("] ", 1)[1] for line in err.splitlines() if "caution:" in line] == [f"caution: {caveat}"]
    assert f"note: {caveat}" in out
    profile = yaml.safe_load(Path(out.split("Profile: ")[1].split()[0]).read_text())
    assert profile["notes"] == [caveat]


def test_a_baseline_whose_server_failed_is_said_to_have_failed_not_to_miss_a_limit(capsys, tmp_path):
    """vLLM's defaults OOM at start (the sim server's fault): the console and the report name the failure; a
    baseline that measured nothing did not miss a limit."""
    code = main(["run", "--model", "flash", "--engine", "sim", "--sim-server", "--sim-time-scale", "50",
                 "--sim-fault", "oom-at-start@0", "--p99-ms", "500", "--storage", f"sqlite:///{tmp_path}/s.db",
                 "--trials", "2", "--workload", "random:256:16", "--repeats", "0", "--top-k", "0",
                 "--max-concurrency", "16", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    [line] = [line for line in out.splitlines() if "against vllm-defaults" in line]
    assert "failed: oom" in line and "misses a limit" not in line, line


@pytest.mark.slow
def test_a_levels_folder_that_cannot_be_written_stops_the_study_with_its_path_not_a_trial_crash(capsys, tmp_path):
    """A trial's levels folder that cannot take the requests' records (here a file in its place) was taken for the
    server's death between levels, and the trial recorded as a crash of its flags. It is the tuner's folder, not the
    configuration: the study stops with the path, exit 2, and the trial is not counted against its flags."""
    (tmp_path / "out" / "s" / "trials" / "0").mkdir(parents=True)
    (tmp_path / "out" / "s" / "trials" / "0" / "levels").touch()
    code = main(["run", "--model", "flash", "--engine", "sim", "--sim-server", "--sim-time-scale", "50",
                 "--p99-ms", "500", "--storage", f"sqlite:///{tmp_path}/s.db", "--study", "s", "--trials", "1",
                 "--workload", "random:256:16", "--repeats", "0", "--top-k", "0", "--max-concurrency", "16",
                 "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines()[-1] == (f"autotune: error: cannot write the records to {tmp_path}/out/s/trials/0/"
                                            f"levels/00-c8.jsonl.gz: {tmp_path}/out/s/trials/0/levels is a file, "
                                            "not a folder")
    assert "crash" not in out + err


def test_a_json_run_says_on_stderr_that_it_stopped_a_server_an_earlier_run_left() -> None:
    """`run --json` and `worker --json` say nothing while the study runs, but a server an earlier run left running
    and this one stopped is a process of the user's machine ended: one line on stderr, stdout left to the object."""
    import io

    from rich.console import Console

    from autotune.cli.ui import JsonView

    err = io.StringIO()
    view = JsonView(Console(file=err, width=80))
    view.leftover_stopped("autotune-s-3", 8123, ("GPU-8eba0659-1111-2222-3333-444455556666",))
    assert err.getvalue() == ("autotune: stopped server autotune-s-3 (port 8123, GPUs GPU-8eba0659-1111-2222-3333-"
                              "444455556666) left running by an earlier run that died\n")
    with view.kept_on_signal():  # no signal: nothing more said
        pass
    assert err.getvalue().count("\n") == 1

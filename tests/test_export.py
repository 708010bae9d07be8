"""`autotune export`: every format carries the winner's flags as its runtime reads them (tests/deploy_checks.py),
what a cluster needs, and the provenance; re-exports are idempotent, a changed file needs --force, --commit makes
one commit that states the gain; bad input is one line and writes nothing."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import optuna
import pytest
import yaml

from autotune.cli import main
from autotune.deploy import (FORMATS, HELM_TYPED_KEYS, KSERVE_PORT, SHM_SIZE, VLLM_PORT, Deployment, build_deployment,
                             render)
from autotune.engines.base import serve_cmd_model
from autotune.flags import deploy_flags, effective_flags
from autotune.storage import open_storage_readonly
from autotune.winner import find_winner, read_study
from tests.deploy_checks import (NotAccepted, helm_container_args, helm_shm_size, serve_flags, shm_sizes,
                                 vllm_config_argv)

DATA = Path(__file__).with_name("data")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A deploy repository with one commit."""
    path = tmp_path / "deploy"
    path.mkdir()
    git(path, "init", "-q")
    git(path, "config", "user.email", "ci@example.com")
    git(path, "config", "user.name", "CI")
    (path / "README.md").write_text("deploy\n")
    git(path, "add", "README.md")
    git(path, "commit", "-qm", "init")
    return path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def export(capsys, url: str, study: str, to: Path, *more: str) -> dict:
    code, out, err = cli(capsys, "export", "--study", study, "--to", str(to), "--storage", url, "--json", *more)
    assert code == 0, err
    return json.loads(out)


def winner_of(url: str, study: str):
    data = read_study(optuna.load_study(study_name=study, storage=open_storage_readonly(url)))
    return data, find_winner(data)


def files_by_format(paths: list[str]) -> dict[str, Path]:
    out = {}
    for p in map(Path, paths):
        [fmt] = [f for f, spec in FORMATS.items() if p.name.endswith(spec.suffix)]
        out[fmt] = p
    return out


def k8s_docs(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}


@pytest.mark.parametrize("study", ["a", "b"])
def test_every_format_gives_the_runtime_the_winners_flags(capsys, factory_storage, repo, study):
    data, winner = winner_of(factory_storage, study)
    expected, dropped = deploy_flags(dict(winner.flags))
    model = serve_cmd_model(winner.vllm_serve_cmd)
    gpus = data.fingerprint.gpus
    files = files_by_format(export(capsys, factory_storage, study, repo / "vllm")["written"])
    assert set(files) == set(FORMATS)
    for path in files.values():
        assert path.name.startswith(f"glm-4.6v-flash_{gpus}xh100_{study}.")  # model, GPU count and type, study
        if path.suffix == ".yaml":
            assert all(doc for doc in yaml.safe_load_all(path.read_text()))  # every YAML document parses

    # vLLM's --config file, read by vLLM's rules; the command line's own options come after it and win
    argv = vllm_config_argv(files["config"])
    assert serve_flags(argv) == (model, expected)
    assert serve_flags([*argv, "--max-num-seqs", "7"])[1]["max-num-seqs"] == 7

    # the serve command: the script's exec line, its own arguments last
    script = files["sh"].read_text()
    assert os.access(files["sh"], os.X_OK) and script.startswith("#!/bin/sh\n")
    words = shlex.split(script.strip().splitlines()[-1])
    assert words[:3] == ["exec", "vllm", "serve"] and words[-1] == "$@"
    assert serve_flags(words[3:-1]) == (model, expected)
    if not dropped:  # the very command the study recorded
        assert shlex.join(words[1:-1]) == winner.vllm_serve_cmd

    # Kubernetes: GPUs, the port, probes on /health, a Service in front
    docs = k8s_docs(files["k8s"])
    pod = docs["Deployment"]["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["vllm", "serve"]
    m, flags = serve_flags(container["args"])
    assert (m, {k: v for k, v in flags.items()}) == (model, expected)
    assert f"--port={VLLM_PORT}" in container["args"] or container["args"][-2:] == ["--port", str(VLLM_PORT)]
    for side in ("requests", "limits"):
        assert container["resources"][side]["nvidia.com/gpu"] == str(gpus)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and ports[get["port"]] == VLLM_PORT
    service = docs["Service"]["spec"]
    assert service["ports"][0]["targetPort"] in ports
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

    # KServe: vLLM's flags behind KServe's own; the measured dtype stated (KServe reads auto as float16)
    isvc = yaml.safe_load(files["kserve"].read_text())
    assert isvc["kind"] == "InferenceService"
    spec = isvc["spec"]["predictor"]["model"]
    assert spec["modelFormat"]["name"] == "huggingface"
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in spec["args"] if a.startswith(("--model_", "--backend"))}
    assert own["--model_id"] == model and own["--backend"] == "vllm"
    rest = [a for a in spec["args"] if not a.startswith(("--model_", "--backend"))]
    assert serve_flags([model, *rest]) == (model, {**expected, "dtype": data.fingerprint.weight_dtype})
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    # the runtime runs TP over every GPU of the pod, whatever --tensor-parallel-size says
    assert effective_flags(expected)["tensor-parallel-size"] == gpus
    assert spec["readinessProbe"]["httpGet"]["port"] == KSERVE_PORT

    # docker compose: GPUs, the port, a health check on /health
    service = yaml.safe_load(files["compose"].read_text())["services"]["vllm"]
    assert service["entrypoint"] == ["vllm", "serve"] and serve_flags(service["command"]) == (model, expected)
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == gpus and "gpu" in device["capabilities"]
    assert f"{VLLM_PORT}:{VLLM_PORT}" in service["ports"]
    assert f":{VLLM_PORT}/health" in service["healthcheck"]["test"][-1]

    # the production-stack chart: its values' types, one place per flag, the container it renders
    values = yaml.safe_load(files["helm"].read_text())
    jsonschema.validate(values, json.loads((DATA / "production-stack-values.schema.json").read_text()))
    [ms] = values["servingEngineSpec"]["modelSpec"]
    cfg = ms["vllmConfig"]
    assert "enablePrefixCaching" in cfg  # absent, the chart would add --no-enable-prefix-caching
    typed = {flag for flag, key in HELM_TYPED_KEYS.items() if key in cfg}
    extra = {a[2:] for a in cfg.get("extraArgs", []) if a.startswith("--")}
    assert not typed & extra and typed | extra >= set(expected)  # each flag in one place
    [args] = helm_container_args(values)
    m, flags = serve_flags(args)
    assert m == model and ms["requestGPU"] == gpus
    assert flags == {**expected, "enable-prefix-caching": effective_flags(expected)["enable-prefix-caching"]}

    # the llm-d kustomize patch names the recipe's Deployment and container
    patch = yaml.safe_load(files["kustomize"].read_text())
    [c] = patch["spec"]["template"]["spec"]["containers"]
    assert (patch["metadata"]["name"], c["name"]) == ("decode", "modelserver")
    assert serve_flags(c["args"]) == (model, expected)

    for name, value in dropped.items():  # measured with random weights: never deployed with them
        assert all(f"--{name}" not in p.read_text().replace(f"measured with --{name} {value}", "")
                   for p in files.values())
        assert f"{name}: {value}" not in files["config"].read_text()


def test_the_header_states_where_the_figures_come_from(capsys, factory_storage, repo):
    data, winner = winner_of(factory_storage, "a")
    files = files_by_format(export(capsys, factory_storage, "a", repo)["written"])
    run = data.runs[-1]
    at_limit, measured = winner.at_limit_tok_s, winner.output_tok_s
    for fmt, path in files.items():
        head = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        assert f"study 'a', trial {winner.trial}" in head
        assert (f"{at_limit.mean:,.0f} output tok/s at the limit ± {at_limit.half_width:,.0f} "
                f"({at_limit.confidence:.0%} interval, {at_limit.n} fresh-server runs)") in head
        assert f"measured {measured.mean:,.0f} at concurrency {winner.concurrency}" in head
        assert f"ttft <= {data.limits_ms['ttft']:g} ms" in head
        assert f"{data.fingerprint.gpus}x h100 ({run.gpu_name})" in head
        assert f"vLLM: {run.vllm_version}" in head and f"measured with {run.autotune_version}" in head
        assert f"measured: {run.finished_at}" in head
        for name, g in winner.gains.items():
            assert f"gain over {name}: {g.gain_pct:+.1f}%" in head


def test_a_run_after_the_selection_changes_no_exported_byte(capsys, tmp_path, repo):
    """A resumed run interrupted before its final comparison (or a worker) records a run after the selection
    without changing it: the header once took that run's end as "measured" and its vLLM as the winner's, and the
    re-export then refused ("exists with other contents") though the winner was the same."""
    from autotune import records
    from autotune.records import RunRecord
    from tests.study_factory import make_study

    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, "resumed")
    first = export(capsys, url, "resumed", repo / "vllm", "--commit")
    measured_by = read_study(study).runs[-1]
    records.write_run(study, RunRecord(
        started_at="2026-04-01T10:00:00+00:00", finished_at="2026-04-01T10:05:00+00:00", wall_s=300.0, gpus=1,
        trials_run=0, stopped_by="interrupted", engine="vllm", gpu_name="NVIDIA H200", vllm_version="0.27.0",
        autotune_version="0.1.0"))
    again = export(capsys, url, "resumed", repo / "vllm")
    assert again["written"] == [] and len(again["unchanged"]) == len(FORMATS)
    head = Path(first["written"][0]).read_text()
    assert f"measured: {measured_by.finished_at}" in head and f"vLLM: {measured_by.vllm_version}" in head


def test_a_sim_study_says_no_vllm_ran(capsys, factory_storage, repo):
    files = files_by_format(export(capsys, factory_storage, "c", repo, "--format", "config,k8s")["written"])
    assert set(files) == {"config", "k8s"}
    assert "sim engine" in files["config"].read_text()
    [container] = k8s_docs(files["k8s"])["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":latest")


def test_reexport_is_idempotent_and_a_changed_file_needs_force(capsys, factory_storage, repo):
    first = export(capsys, factory_storage, "a", repo / "vllm", "--commit")
    assert len(first["written"]) == len(FORMATS) and first["commit"]
    again = export(capsys, factory_storage, "a", repo / "vllm", "--commit")
    assert again["written"] == [] and len(again["unchanged"]) == len(FORMATS) and again["commit"] is None
    assert git(repo, "rev-parse", "HEAD").strip() == first["commit"]  # no second commit

    config = Path(next(p for p in first["written"] if p.endswith(".vllm.yaml")))
    config.write_text(config.read_text() + "max-num-seqs: 8\n")  # edited by hand
    before = {p: Path(p).read_bytes() for p in first["written"]}
    code, out, err = cli(capsys, "export", "--study", "a", "--to", str(repo / "vllm"), "--storage", factory_storage)
    assert code == 2 and "exists with other contents" in err and "--force" in err and len(err.splitlines()) == 1
    assert {p: Path(p).read_bytes() for p in first["written"]} == before  # nothing written
    forced = export(capsys, factory_storage, "a", repo / "vllm", "--force")
    assert forced["written"] == [str(config)] and "max-num-seqs: 8" not in config.read_text()


def test_commit_is_one_commit_of_the_export_stating_the_gain(capsys, factory_storage, repo):
    data, winner = winner_of(factory_storage, "b")
    result = export(capsys, factory_storage, "b", repo / "deploy" / "vllm", "--commit", "--format", "config,helm")
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "2"
    changed = git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(changed) == sorted(str(Path(p).relative_to(repo)) for p in result["written"])
    message = git(repo, "log", "-1", "--format=%B")
    subject = message.splitlines()[0]
    for name, g in winner.gains.items():
        assert f"{g.gain_pct:+.1f}% over {name}" in subject
    assert "autotune: glm-4.6v-flash on 2x h100, study b" in subject
    assert winner.throughput_text() in message
    assert git(repo, "status", "--porcelain") == ""


def test_the_commit_states_the_verdict_best_gives_and_its_subject_no_other(capsys, tmp_path, repo):
    """A baseline that won equal within noise with a tuned trial was once committed as "the baseline
    'seed-profile' is the best configuration found", against the verdict in the files' own header."""
    from dataclasses import replace

    from autotune import records
    from autotune.storage import open_storage
    from tests.study_factory import make_study

    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(open_storage(url), "x1", seed=1)  # the seed profile wins beyond noise
    selection = records.read_selection(study)
    assert selection.winner_trial == 1 and "is the best configuration found" in selection.verdict
    verdict = ("equal within noise: trial 1 (seed-profile), trial 4; recommended: trial 1 (seed-profile), "
               "the best measured")
    records.write_selection(study, replace(selection, verdict=verdict, equal_within_noise=(1, 4)))
    export(capsys, url, "x1", repo / "vllm", "--commit", "--format", "config")
    subject = git(repo, "log", "-1", "--format=%s").strip()
    assert subject.endswith(f"trial 1: {selection.gains['vllm-defaults'].gain_pct:+.1f}% over vllm-defaults")
    assert "is the best configuration found" not in subject
    assert f"verdict: {verdict}" in git(repo, "log", "-1", "--format=%b")  # the body: the verdict as best says it
    assert main(["best", "--study", "x1", "--storage", url]) == 0
    assert f"  {verdict}\n" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["unknown study", "no winner", "not a work tree", "dirty tree", "unknown format",
                                  "unreachable storage"])
def test_bad_input_is_one_line_and_writes_nothing(capsys, factory_storage, repo, tmp_path, case):
    target = repo / "vllm"
    args = ["export", "--study", "a", "--to", str(target), "--storage", factory_storage]
    code_wanted, says = 2, ""
    if case == "unknown study":
        args[2], says = "nope", "no study named 'nope' in this storage"
    elif case == "no winner":
        args[2], code_wanted = "none", 3
        says = "study 'none' has no winner: no finalist met the limits at any load its trial measured"
    elif case == "not a work tree":
        target = tmp_path / "plain" / "vllm"
        (tmp_path / "plain").mkdir()
        args[4], says = str(target), "is not in a git work tree"
    elif case == "dirty tree":
        (repo / "README.md").write_text("edited\n")
        args.append("--commit")
        says = "has uncommitted changes"
    elif case == "unknown format":
        args += ["--format", "config,terraform"]
        says = "unknown export format 'terraform'; known: config, sh, helm, kserve, k8s, compose, kustomize"
    else:
        args[6] = "postgresql+psycopg://tuner:s3cretpw@127.0.0.1:1/studies"
        code_wanted, says = 1, "cannot reach storage postgresql+psycopg://tuner:***@127.0.0.1:1/studies"
    status = git(repo, "status", "--porcelain")
    code, out, err = cli(capsys, *args)
    assert code == code_wanted and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "s3cretpw" not in err + out
    assert not target.exists() and git(repo, "status", "--porcelain") == status


def test_no_token_or_password_reaches_an_exported_file(capsys, factory_storage, repo, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_exportleaktest")
    result = export(capsys, factory_storage, "b", repo)
    for path in result["written"]:
        text = Path(path).read_text()
        assert "hf_exportleaktest" not in text and factory_storage not in text
    k8s = k8s_docs(next(Path(p) for p in result["written"] if p.endswith(".k8s.yaml")))
    [env] = k8s["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env["name"] == "HF_TOKEN" and "value" not in env and env["valueFrom"]["secretKeyRef"]["optional"]
    helm = yaml.safe_load(next(Path(p) for p in result["written"] if p.endswith(".helm-values.yaml")).read_text())
    [spec] = helm["servingEngineSpec"]["modelSpec"]
    assert "hf_token" not in spec and spec["env"] == [env]  # the chart's hf_token Secret is not optional


def test_the_rules_the_checks_apply_would_catch_a_broken_file(tmp_path):
    """The checks above can fail: a null, a short option, a misspelt flag, a .json file or a false (which vLLM
    drops) is refused."""
    for body, name in (("model: m\nmax-num-seqs: null\n", "c.yaml"), ("model: m\ntp: 2\n", "c.yaml"),
                       ("model: m\nmax-num-seqz: 2\n", "c.yaml"), ("model: m\n", "c.json"),
                       ("model: m\nenable-prefix-caching: false\n", "c.yaml")):
        path = tmp_path / name
        path.write_text(body)
        with pytest.raises(NotAccepted):
            serve_flags(vllm_config_argv(path))
    helm = {"servingEngineSpec": {"modelSpec": [{"name": "m", "repository": "r", "tag": "t", "modelURL": "m",
                                                 "replicaCount": 1, "requestCPU": "8", "requestMemory": "1Gi",
                                                 "requestGPU": 1}]}}
    with pytest.raises(jsonschema.ValidationError):  # requestCPU is an integer in the chart
        jsonschema.validate(helm, json.loads((DATA / "production-stack-values.schema.json").read_text()))
    helm["servingEngineSpec"]["modelSpec"][0]["requestCPU"] = 8
    helm["servingEngineSpec"]["modelSpec"][0]["vllmConfig"] = {}
    [args] = helm_container_args(helm)
    assert "--no-enable-prefix-caching" in args  # the chart's default when the key is absent


def test_a_flag_turned_off_reaches_vllm_from_the_config_file(tmp_path):
    """vLLM 0.26 drops `key: false` from a --config file (on an H200 prefix caching stayed on), so an off flag is
    written in its --no- form and read back off."""
    dep = Deployment(study="s", model="org/m", flags={"enable-prefix-caching": False, "enable-chunked-prefill": True,
                                                      "kv-cache-dtype": "fp8"},
                     gpus=1, gpu_type="h200", vllm_version="0.26.0", weight_dtype="bfloat16", header=("h",))
    path = tmp_path / "c.vllm.yaml"
    path.write_text(render("config", dep))
    body = yaml.safe_load(path.read_text())
    assert body["no-enable-prefix-caching"] is True and "enable-prefix-caching" not in body
    assert serve_flags(vllm_config_argv(path)) == ("org/m", dep.flags)


@pytest.mark.slow  # an external tool: kubectl
def test_the_llm_d_patch_applies_with_kustomize(capsys, factory_storage, repo, tmp_path):
    """kubectl's kustomize over a Deployment in llm-d's recipe shape: the patch replaces the container's args and
    GPU count and keeps the rest."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (apt-get install -y kubernetes-client; .ci/run installs it)"
    data, winner = winner_of(factory_storage, "b")
    [patch] = export(capsys, factory_storage, "b", repo, "--format", "kustomize")["written"]
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "decode"},
            "spec": {"selector": {"matchLabels": {"app": "m"}}, "template": {
                "metadata": {"labels": {"app": "m"}},
                "spec": {"containers": [{"name": "modelserver", "image": "vllm/vllm-openai:latest",
                                         "command": ["vllm", "serve"], "args": ["Qwen/Qwen3.5-4B", "--port=8000"],
                                         "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "40Gi"}}}]}}}}
    (overlay / "base.yaml").write_text(yaml.safe_dump(base))
    shutil.copy(patch, overlay / "patch.yaml")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["base.yaml"],
                                                                "patchesStrategicMerge": ["patch.yaml"]}))
    built = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    [c] = yaml.safe_load(built.stdout)["spec"]["template"]["spec"]["containers"]
    assert serve_flags(c["args"]) == (serve_cmd_model(winner.vllm_serve_cmd), deploy_flags(dict(winner.flags))[0])
    assert c["image"] == "vllm/vllm-openai:latest" and c["command"] == ["vllm", "serve"]  # kept
    assert c["resources"]["limits"] == {"nvidia.com/gpu": str(data.fingerprint.gpus), "memory": "40Gi"}


@pytest.mark.skipif(not os.environ.get("AUTOTUNE_PRODUCTION_STACK_CHART"),
                    reason="AUTOTUNE_PRODUCTION_STACK_CHART (a checkout of the chart's helm/ folder) not set")
def test_helm_values_against_the_charts_own_schema_and_template(capsys, factory_storage, multi_gpu_storage, repo,
                                                                tmp_path):
    chart = Path(os.environ["AUTOTUNE_PRODUCTION_STACK_CHART"])
    schema = json.loads((chart / "values.schema.json").read_text())
    for study in MULTI_GPU:
        [path] = export(capsys, multi_gpu_storage, study, repo / study, "--format", "helm")["written"]
        jsonschema.validate(yaml.safe_load(Path(path).read_text()), schema)
    [path] = export(capsys, factory_storage, "b", repo, "--format", "helm")["written"]
    values = yaml.safe_load(Path(path).read_text())
    jsonschema.validate(values, schema)
    helm = shutil.which("helm")
    if helm is None:
        return
    out = subprocess.run([helm, "template", "t", str(chart), "-f", path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    containers = [c for d in yaml.safe_load_all(out.stdout) if d and d.get("kind") == "Deployment"
                  for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm"]
    assert [c["command"][2:] for c in containers] == helm_container_args(values)


def test_deployment_of_a_study_without_selection_has_no_interval(factory_storage):
    data, winner = winner_of(factory_storage, "unselected")
    dep = build_deployment(data, winner)
    assert not winner.selected and "not re-measured: no interval" in "\n".join(dep.header)



def test_a_commit_without_gains_says_why(factory_storage):
    """No gains: the best trial before any final comparison, or a selected winner compared with no baseline (the
    only finalist); only the first is "not re-measured"."""
    from dataclasses import replace

    from autotune.export import commit_message

    data, winner = winner_of(factory_storage, "unselected")
    dep = build_deployment(data, winner)
    assert commit_message(winner, dep).split("\n")[0].endswith(": the best trial so far, not re-measured")
    only = replace(winner, selected=True, gains={})
    assert commit_message(only, dep).split("\n")[0].endswith(": no baseline compared")


def test_the_commit_subject_says_which_gains_the_interval_does_not_tell_from_zero(factory_storage):
    """A git log read alone passed "+0.4% over vllm-defaults" for a gain, where the verdict claimed none: within
    noise, or no interval at all (--repeats 0)."""
    import math
    from dataclasses import replace

    from autotune.export import commit_message
    from autotune.records import GainRecord

    data, winner = winner_of(factory_storage, "b")
    dep = build_deployment(data, winner)
    beyond = GainRecord(0, 900.0, True, 100.0, 11.1, 5.0, 17.0, 0.9, True)
    within = replace(beyond, gain_pct=0.4, gain_pct_low=-2.0, gain_pct_high=2.9, significant=False)
    unbounded = replace(within, gain_pct_low=-math.inf, gain_pct_high=math.inf)
    missed = replace(beyond, baseline_meets_limit=False, gain_pct=math.inf, gain_pct_low=math.inf,
                     gain_pct_high=math.inf)
    gains = {"vllm-defaults": beyond, "seed-profile": within, "mine": unbounded, "other": missed}
    subject = commit_message(replace(winner, gains=gains), dep).split("\n")[0]
    assert subject.endswith(": +11.1% over vllm-defaults, +0.4% over seed-profile (within noise), +0.4% over mine "
                            "(no interval), other met no limit")


# -- multi-GPU winners: tensor x data parallel, expert parallel -----------------------------------------------------
MULTI_GPU = {  # study -> (preset, model, GPUs, the layout every trial runs, flags every trial adds)
    "tp2dp3": ("flash", "zai-org/GLM-4.6V-Flash", 6, {"tensor-parallel-size": 2, "data-parallel-size": 3}, {}),
    "dp8-ep": ("glm-4.6v", "zai-org/GLM-4.6V", 8, {"tensor-parallel-size": 1, "data-parallel-size": 8},
               {"enable-expert-parallel": True}),
    # a layout without its TP flag (vLLM's default, 1): the chart still has to mount /dev/shm
    "dp4": ("flash", "zai-org/GLM-4.6V-Flash", 4, {"data-parallel-size": 4}, {}),
    "tp4-ep": ("glm-4.6v", "zai-org/GLM-4.6V", 4, {"tensor-parallel-size": 4}, {"enable-expert-parallel": True}),
}


@pytest.fixture(scope="module")
def multi_gpu_storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.study_factory import make_study, throwaway_storage

    url = f"sqlite:///{tmp_path_factory.mktemp('multi')}/studies.db"
    storage = throwaway_storage(url)
    for seed, (name, (preset, model, gpus, layout, extra)) in enumerate(MULTI_GPU.items()):
        make_study(storage, name, gpus=gpus, seed=seed, preset=preset, model=model, parallel=layout,
                   extra_flags=extra, n_trials=4)
    make_study(storage, "odd", gpus=6, parallel={"tensor-parallel-size": 2}, n_trials=4)  # TP 2 of the 6 GPUs
    storage.engine.dispose()
    return url


def check_multi_gpu_formats(files: dict[str, Path], model: str, expected: dict, gpus: int) -> None:
    """Every format starts vLLM with the winner's flags on TP x DP GPUs, each runtime as it reads them (see
    tests/deploy_checks.py), with an in-memory /dev/shm for the processes of the GPUs."""
    tp, dp = (int(expected.get(f"{kind}-parallel-size", 1)) for kind in ("tensor", "data"))
    assert tp * dp == gpus
    assert set(files) == set(FORMATS)

    assert serve_flags(vllm_config_argv(files["config"])) == (model, expected)
    words = shlex.split(files["sh"].read_text().strip().splitlines()[-1])
    assert serve_flags(words[3:-1]) == (model, expected)

    pod = k8s_docs(files["k8s"])["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert serve_flags(container["args"]) == (model, expected)
    for side in ("requests", "limits"):
        assert container["resources"][side]["nvidia.com/gpu"] == str(gpus)
    assert shm_sizes(pod, container) == [SHM_SIZE]

    predictor = yaml.safe_load(files["kserve"].read_text())["spec"]["predictor"]
    if dp > 1:  # the huggingface runtime would run TP over all the pod's GPUs: vLLM's own image instead
        assert "model" not in predictor
        [container] = predictor["containers"]
        assert container["command"] == ["vllm", "serve"] and container["image"].startswith("vllm/vllm-openai:")
        assert serve_flags(container["args"]) == (model, expected)
        assert f"--port={VLLM_PORT}" in container["args"] or container["args"][-2:] == ["--port", str(VLLM_PORT)]
        assert [p["containerPort"] for p in container["ports"]] == [VLLM_PORT]
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": VLLM_PORT}
        assert shm_sizes(predictor, container) == [SHM_SIZE]
    else:  # its ClusterServingRuntime mounts /dev/shm; it sets TP to the pod's GPUs, which is the winner's TP
        container = predictor["model"]
        assert container["modelFormat"]["name"] == "huggingface" and tp == gpus
        rest = [a for a in container["args"] if not a.startswith(("--model_", "--backend"))]
        assert serve_flags([model, *rest])[1] == {**expected, "dtype": "bfloat16"}
    for side in ("requests", "limits"):
        assert container["resources"][side]["nvidia.com/gpu"] == str(gpus)

    service = yaml.safe_load(files["compose"].read_text())["services"]["vllm"]
    assert serve_flags(service["command"]) == (model, expected)
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == gpus and device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert service["ipc"] == "host"  # the host's /dev/shm (vLLM's Docker docs: --ipc=host or --shm-size)

    values = yaml.safe_load(files["helm"].read_text())
    jsonschema.validate(values, json.loads((DATA / "production-stack-values.schema.json").read_text()))
    [ms] = values["servingEngineSpec"]["modelSpec"]
    assert ms["requestGPU"] == gpus and helm_shm_size(values) == [SHM_SIZE]
    [args] = helm_container_args(values)
    assert serve_flags(args) == (model, {**expected, "tensor-parallel-size": tp,
                                         "enable-prefix-caching": effective_flags(expected)["enable-prefix-caching"]})
    if dp > 1:  # no key for it in the chart: an extra argument
        assert "--data-parallel-size" in ms["vllmConfig"]["extraArgs"]
        assert "data-parallel-size" in files["helm"].read_text().split("\n", 2)[1]  # and the file says so

    patch = yaml.safe_load(files["kustomize"].read_text())
    pod = patch["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert serve_flags(container["args"]) == (model, expected)
    for side in ("requests", "limits"):
        assert container["resources"][side]["nvidia.com/gpu"] == str(gpus)
    assert shm_sizes(pod, container) == [SHM_SIZE]


@pytest.mark.parametrize("study", [pytest.param(s, marks=[pytest.mark.slow] if s in ("dp4", "tp4-ep") else [])
                                   for s in MULTI_GPU])
def test_a_multi_gpu_winner_runs_its_layout_in_every_format(capsys, multi_gpu_storage, repo, study):
    """A TP2 x DP3 winner was exported to KServe's huggingface runtime, which sets TP to the pod's 6 GPUs (and
    DP 3 on top: 18 ranks); a layout without its TP flag got no /dev/shm from the production-stack chart."""
    preset, model, gpus, layout, extra = MULTI_GPU[study]
    data, winner = winner_of(multi_gpu_storage, study)
    expected, _ = deploy_flags(dict(winner.flags))
    assert expected.items() >= {**layout, **extra}.items()
    files = files_by_format(export(capsys, multi_gpu_storage, study, repo / "vllm")["written"])
    check_multi_gpu_formats(files, model, expected, gpus)
    if extra.get("enable-expert-parallel"):
        assert all("--enable-expert-parallel" in p.read_text() or "enable-expert-parallel: true" in p.read_text()
                   for p in files.values())


@pytest.mark.slow  # the Kubernetes API's schemas: a second to load
def test_kubernetes_manifests_of_a_multi_gpu_winner_pass_the_api_schemas(capsys, multi_gpu_storage, repo):
    """The Deployment and Service, and the KServe predictor's pod (its containers and volumes are Kubernetes' own
    types), against the Kubernetes API's schemas with unknown fields refused (kubectl's own dry run needs an API
    server)."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the test extra) is not installed")
    version = kv.latest_version()
    for study in MULTI_GPU:
        files = files_by_format(export(capsys, multi_gpu_storage, study, repo / study, "--format", "k8s,kserve")
                                ["written"])
        for doc in yaml.safe_load_all(files["k8s"].read_text()):
            kv.validate(doc, version, strict=True)
        predictor = dict(yaml.safe_load(files["kserve"].read_text())["spec"]["predictor"])
        if "model" in predictor:  # KServe's own fields beside a container's
            container = {k: v for k, v in predictor.pop("model").items() if k != "modelFormat"}
            predictor["containers"] = [{"name": "kserve-container", "image": "kserve/huggingfaceserver",
                                        **container}]
        kv.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": predictor}, version,
                    strict=True)
    broken = next(yaml.safe_load_all(files["k8s"].read_text()))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(Exception, match="volumeMount"):  # the check can fail
        kv.validate(broken, version, strict=True)


def test_one_gpu_with_the_shm_processor_cache_gets_dev_shm_from_the_chart():
    """vLLM's shm processor cache lives in /dev/shm, which the production-stack chart mounts only with
    tensorParallelSize: one GPU had the container's 64 MiB default."""
    dep = Deployment(study="s", model="org/m", flags={"mm-processor-cache-type": "shm"}, gpus=1, gpu_type="h200",
                     vllm_version="0.26.0", weight_dtype="bfloat16", header=("h",))
    values = yaml.safe_load(render("helm", dep))
    assert helm_shm_size(values) == [SHM_SIZE]
    assert serve_flags(helm_container_args(values)[0])[1]["tensor-parallel-size"] == 1  # vLLM's default anyway
    plain = Deployment(study="s", model="org/m", flags={}, gpus=1, gpu_type="h200", vllm_version="0.26.0",
                       weight_dtype="bfloat16", header=("h",))
    assert helm_shm_size(yaml.safe_load(render("helm", plain))) == [None]  # one GPU's file as before


def test_a_winner_whose_layout_is_not_the_studys_gpus_is_not_exported(capsys, multi_gpu_storage, tmp_path):
    """Every format requests the study's GPUs: flags that use other than TP x DP = GPUs would start a server that
    does not fit its pod, or leave GPUs idle."""
    code, out, err = cli(capsys, "export", "--study", "odd", "--to", str(tmp_path / "vllm"), "--storage",
                         multi_gpu_storage)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "flags use 2 GPU(s)" in err and "the study ran on 6" in err
    assert not (tmp_path / "vllm").exists()


@pytest.mark.slow  # a 6-GPU sim study (about 15 s), then kubectl
def test_a_sim_study_on_6_gpus_exports_its_tp_x_dp_layout(capsys, repo, tmp_path):
    """End to end: `autotune run --gpus 6` on flash (32 heads: TP 2 x DP 3) and its export."""
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, err = cli(capsys, "run", "--model", "flash", "--gpus", "6", "--p99-ms", "500", "--engine", "sim",
                         "--trials", "1", "--study", "six", "--storage", url, "--out", str(tmp_path / "studies"),
                         "--json")
    assert code == 0, err
    data, winner = winner_of(url, "six")
    expected, _ = deploy_flags(dict(winner.flags))
    assert (expected["tensor-parallel-size"], expected["data-parallel-size"]) == (2, 3)
    files = files_by_format(export(capsys, url, "six", repo / "vllm")["written"])
    check_multi_gpu_formats(files, serve_cmd_model(winner.vllm_serve_cmd), expected, 6)


@pytest.mark.slow  # an external tool: kubectl
@pytest.mark.parametrize("base_shm", ["named shm", "named dshm", "none"])
def test_the_llm_d_patch_of_a_multi_gpu_winner_gives_one_dev_shm(capsys, multi_gpu_storage, repo, tmp_path,
                                                                   base_shm):
    """kubectl's kustomize over llm-d's decode Deployment (its recipe mounts a 20Gi /dev/shm named shm; other
    bases name it otherwise or have none): the result has the winner's args and GPUs and exactly one in-memory
    /dev/shm."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (apt-get install -y kubernetes-client; .ci/run installs it)"
    _, model, gpus, _, _ = MULTI_GPU["tp2dp3"]
    data, winner = winner_of(multi_gpu_storage, "tp2dp3")
    [patch] = export(capsys, multi_gpu_storage, "tp2dp3", repo, "--format", "kustomize")["written"]
    container = {"name": "modelserver", "image": "vllm/vllm-openai:latest", "command": ["vllm", "serve"],
                 "args": ["Qwen/Qwen3.5-4B", "--tensor-parallel-size=1"],
                 "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "40Gi"}}}
    pod = {"containers": [container]}
    if base_shm != "none":
        name = base_shm.split()[-1]
        container["volumeMounts"] = [{"mountPath": "/dev/shm", "name": name}, {"mountPath": "/.cache", "name": "c"}]
        pod["volumes"] = [{"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
                          {"name": "c", "emptyDir": {}}]
    base = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "decode"},
            "spec": {"selector": {"matchLabels": {"app": "m"}},
                     "template": {"metadata": {"labels": {"app": "m"}}, "spec": pod}}}
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "base.yaml").write_text(yaml.safe_dump(base))
    shutil.copy(patch, overlay / "patch.yaml")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["base.yaml"],
                                                                "patches": [{"path": "patch.yaml"}]}))
    built = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    result = yaml.safe_load(built.stdout)
    pod = result["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert serve_flags(c["args"]) == (model, deploy_flags(dict(winner.flags))[0])
    assert c["resources"]["limits"] == {"nvidia.com/gpu": str(gpus), "memory": "40Gi"}
    assert shm_sizes(pod, c) == [SHM_SIZE]
    assert {m["name"] for m in c["volumeMounts"]} <= {v["name"] for v in pod["volumes"]}
    if base_shm != "none":
        assert {"mountPath": "/.cache", "name": "c"} in c["volumeMounts"]  # the recipe's other mounts kept


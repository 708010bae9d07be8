"""The dashboard's app without a browser (test_views_in_chromium.py drives it in one): its pages and API over the
stored studies, without optuna-dashboard, and `autotune dashboard`'s bad input, one line each."""
from __future__ import annotations

import asyncio
import html
import socket
import sys

import optuna
import pytest
from aiohttp.test_utils import TestClient, TestServer

from autotune.cli import main
from autotune.dashboard import OPTUNA_DASHBOARD_MISSING, build_app, start_optuna_dashboard
from autotune.storage import open_storage_readonly, redact_url
from autotune.winner import find_winner, read_study


def _fetch(url: str, *paths: str) -> list[tuple[int, str]]:
    async def go() -> list[tuple[int, str]]:
        app = build_app(open_storage_readonly(url), redact_url(url), None)
        async with TestClient(TestServer(app)) as client:
            out = []
            for path in paths:
                response = await client.get(path)
                out.append((response.status, await response.text()))
            return out

    return asyncio.run(go())


@pytest.mark.slow  # seconds: every study summarized, the figures of two
def test_pages_and_api_without_optuna_dashboard(factory_storage, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # not installed
    assert start_optuna_dashboard(open_storage_readonly(factory_storage), "127.0.0.1", 0) is None
    (index_status, index), (study_status, study), (api_status, api), (missing_status, missing) = _fetch(
        factory_storage, "/", "/study/b", "/api/compare?study=a&study=b", "/api/compare?study=nope")
    assert index_status == study_status == api_status == 200 and missing_status == 404
    assert html.escape(OPTUNA_DASHBOARD_MISSING) in index and "class='optuna'" not in index
    for name in optuna.study.get_all_study_names(open_storage_readonly(factory_storage)):
        assert f"data-study='{name}'" in index
        fingerprint = read_study(optuna.load_study(study_name=name, storage=open_storage_readonly(factory_storage))) \
            .fingerprint
        row = index[index.index(f"data-study='{name}'"):]
        # studies of other workloads side by side: each row says which
        assert f"<td class='workload'>{html.escape(fingerprint.workload['spec'])}</td>" in row[:row.index("</tr>")]
    data = read_study(optuna.load_study(study_name="b", storage=open_storage_readonly(factory_storage)))
    for t in data.trials:
        assert f"data-trial='{t.number}'" in study
    assert find_winner(data).throughput_text() in study
    assert '"front-ttft"' in api and '"front-itl"' in api and '"importance"' in api
    assert "no study named 'nope'" in missing


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _free_port() -> int:
    """A port free a moment ago (the OS's pick, not a neighbour of a busy one, which another process may hold)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", ["port taken", "optuna port taken", "the same port twice", "the last port",
                                  "no storage"])
def test_bad_input_is_one_line(capsys, factory_storage, tmp_path, case):
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        args = ["dashboard", "--storage", factory_storage]
        if case == "port taken":
            args += ["--port", str(port), "--optuna-port", str(_free_port())]
            says = f"cannot listen on 127.0.0.1:{port}"
        elif case == "optuna port taken":
            args += ["--optuna-port", str(port)]
            says = f"optuna-dashboard cannot listen on 127.0.0.1:{port}"
        elif case == "the same port twice":
            free = str(_free_port())
            args += ["--port", free, "--optuna-port", free]
            says = f"--optuna-port {free} is --port too"
        elif case == "the last port":  # optuna-dashboard's default, --port + 1, is past the last TCP port
            args += ["--port", "65535"]
            says = "optuna-dashboard cannot listen on 127.0.0.1:65536"
        else:
            args = ["dashboard", "--storage", f"sqlite:///{tmp_path}/none.db"]
            says = "no database file at"
        code = main(args)
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.startswith("autotune: error")]
    assert code == 2 and len(lines) == 1 and says in lines[0] and "Traceback" not in err, err
    assert "dashboard on http" not in err  # nothing is announced that does not serve


def test_a_study_these_records_cannot_read_is_listed_with_why():
    from tests.study_factory import make_study

    storage = optuna.storages.InMemoryStorage()
    make_study(storage, "current", n_trials=4)
    old = optuna.create_study(study_name="old", storage=storage)
    old.set_user_attr("fingerprint", {"model": "m", "gpus": 1, "records_version": 3})
    make_study(storage, "torn", n_trials=4).set_user_attr("selection", {"winner_trial": 0})  # a key missing

    async def index() -> str:
        async with TestClient(TestServer(build_app(storage, "in memory", None))) as client:
            response = await client.get("/")
            assert response.status == 200
            return await response.text()

    page = asyncio.run(index())
    assert "data-study='current'" in page and "value='current'" in page  # listed and comparable
    assert "data-study='old'" in page and "value='old'" not in page
    assert html.escape("written by another version of autotune's records (3, this one reads 4)") in page
    assert "data-study='torn'" in page and "value='torn'" not in page and "its records cannot be read" in page


@pytest.mark.parametrize("host, link", [("127.0.0.1:8090", "http://127.0.0.1:8091/"),
                                        ("[::1]:8090", "http://[::1]:8091/")])
def test_the_optuna_link_keeps_the_pages_host(host, link):
    """A literal IPv6 address goes in brackets (it was written as http://::1:8091)."""
    from aiohttp.test_utils import make_mocked_request

    from autotune.dashboard import _optuna_link

    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="s", storage=storage)
    request = make_mocked_request("GET", "/", headers={"Host": host}, app=build_app(storage, "in memory", 8091))
    assert f"href='{link}dashboard/studies/" in _optuna_link(request, "s")


def test_a_baseline_whose_server_failed_is_not_said_to_have_missed_a_limit(tmp_path):
    """The list once said "missed a limit" of a baseline whose server never started (an OOM), while its trial
    page said oom: a baseline at 0 tok/s shows how its trial ended."""
    from autotune import records
    from autotune.engines.base import vllm_serve_cmd
    from autotune.records import TrialResult
    from tests.study_factory import MODEL, make_study

    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, "oom", feasible=False)  # no winner: each baseline as its latest trial ended
    oom = TrialResult(flags={}, feasible=False, output_tok_s=0.0, concurrency=None, failure_class="oom",
                      failure_reason="CUDA out of memory", vllm_serve_cmd=vllm_serve_cmd(MODEL, {}))
    study.add_trial(optuna.trial.create_trial(
        value=0.0, user_attrs={**records.queue_attrs(baseline="vllm-defaults"), "result": oom.to_json()}))
    [(status, index)] = _fetch(url, "/")
    assert status == 200
    row = index[index.index("data-study='oom'"):]
    cells = row[:row.index("</tr>")].split("class='num baseline'>")[1:]
    # the new vllm-defaults trial never started; seed-profile ran and met no limit
    assert [c[:c.index("<")] for c in cells] == ["failed: oom", "missed a limit"]


def test_a_worker_trial_that_never_started_is_said_so_not_shown_as_a_failure(tmp_path):
    """A worker's trial asked once the run had ended its search is not run (records.TrialRecord.not_started): no
    report counts it, but the study page listed it as a FAIL with no reason, beside a count that left it out."""
    from autotune import records
    from tests.study_factory import make_study

    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, "late")
    late = study.ask()
    why = "the study's run had ended its search when this worker's ask created it"
    records.write_not_started(late, why)
    study.tell(late, state=optuna.trial.TrialState.FAIL)
    [(status, page)] = _fetch(url, "/study/late")
    assert status == 200
    row = page.split(f"data-trial='{late.number}'>")[1].split("</tr>")[0]
    assert "<td>not started</td>" in row and "FAIL" not in row and html.escape(why) in row


def test_pages_follow_a_study_that_changes_while_the_dashboard_runs(tmp_path):
    """The app keeps Optuna's cache of finished trials between requests: a trial started or finished since the last
    page is shown as it is now."""
    from tests.study_factory import make_study

    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, "live")

    async def go() -> list[str]:
        app = build_app(open_storage_readonly(url), redact_url(url), None)
        async with TestClient(TestServer(app)) as client:
            pages = [await (await client.get("/study/live")).text()]
            started = study.ask()
            pages.append(await (await client.get("/study/live")).text())
            study.tell(started, state=optuna.trial.TrialState.FAIL)
            pages.append(await (await client.get("/study/live")).text())
            return [page.split(f"data-trial='{started.number}'>")[1].split("</tr>")[0] if
                    f"data-trial='{started.number}'>" in page else "" for page in pages]

    before, running, failed = asyncio.run(go())
    assert before == "" and "<td>RUNNING</td>" in running and "<td>FAIL</td>" in failed, (running, failed)

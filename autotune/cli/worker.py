"""`autotune worker`: join a study that `autotune run` created, on this machine's GPUs, through the storage alone."""
from __future__ import annotations

from typing import Any

import click
import pydantic
from rich.console import Console

from autotune import records
from autotune.cli.common import DURATION, echo_json, option_error
from autotune.config import build_study_config, choose_engine, worker_options
from autotune.storage import load_study, open_storage, redact_url
from autotune.study import run_worker

__all__ = ["commands", "worker"]


@click.command("worker")
@click.option("--study", "study_name", required=True, help="the study to join (created by `autotune run`)")
@click.option("--storage", required=True, help="the study's SQLAlchemy URL, e.g. postgresql+psycopg://USER:PW@HOST/DB")
@click.option("--trials", type=int, default=None,
              help="at most this many trials (default 20, as for `autotune run`); a worker also stops once the run has "
                   "moved on to its final comparison")
@click.option("--timeout", type=DURATION, default=None, help="start no trial that would end after this long")
@click.option("--parallel", type=int, default=None, help="trials at once on this machine (default: as its GPUs allow)")
@click.option("--gpu-ids", default=None, metavar="ID,ID,...",
              help="the GPUs this worker may use: indices, GPU UUIDs or MIG UUIDs (default: CUDA_VISIBLE_DEVICES, else "
                   "every GPU)")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="folder for this worker's trial logs")
@click.option("--sim-fault", default=None, metavar="FAULT[@TRIAL,...]", help="with a --sim-server study: a fault "
              "this worker's sim servers make (testing)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout, nothing else")
def worker(study_name: str, storage: str, as_json: bool, timeout: float | None, **local: Any) -> None:
    """Run trials of a study beside its `autotune run`, on this machine's GPUs (several machines may join one
    study in PostgreSQL; a worker that dies has its trial failed and queued again by the others)."""
    from autotune.cli.ui import JsonView, StudyView
    from autotune.engines.launcher import install_signal_handlers

    store = open_storage(storage, create=False, exclusive=True)
    study = load_study(study_name, store)
    stored = records.read_run_options(study)
    try:
        options = worker_options(stored, study_name, storage, timeout_s=timeout, **local)
    except pydantic.ValidationError as e:
        raise option_error(e, {"timeout": "timeout_s"}) from None
    engine = choose_engine(options.engine)
    cfg = build_study_config(options, engine)
    install_signal_handlers(sigint=True)
    console = Console(stderr=True, soft_wrap=True)
    if as_json:
        quiet = JsonView(console)
        with quiet.kept_on_signal():
            outcome = run_worker(cfg, store, progress=quiet)
        echo_json({"study": outcome.study_name, "trials_run": outcome.n_trials_run,
                   "trials_not_run": outcome.n_trials_not_run, "stopped_by": outcome.stopped_by,
                   "storage": redact_url(storage)})
        return
    with StudyView(console) as view:
        outcome = run_worker(cfg, store, progress=view)
    not_run = (f", {outcome.n_trials_not_run} more not run (the flags of an earlier trial)"
               if outcome.n_trials_not_run else "")
    Console(soft_wrap=True).print(f"worker: {outcome.n_trials_run} trials of study {outcome.study_name}{not_run} "
                                  f"({outcome.stopped_by})", markup=False, highlight=False)


commands = [worker]

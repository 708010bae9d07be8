"""`autotune export`: a study's winner as deploy files in a git work tree (:mod:`autotune.export`)."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from autotune.cli.common import ParsedType, echo_json
from autotune.deploy import FORMATS, parse_formats
from autotune.export import export_study
from autotune.storage import DEFAULT_STORAGE, load_study, open_storage_readonly
from autotune.winner import read_study

__all__ = ["commands"]


@click.command("export")
@click.option("--study", "study_name", required=True)
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="folder in a git work tree (created when missing)")
@click.option("--format", "formats", type=ParsedType("FORMAT[,FORMAT...]", parse_formats, list), default=",".join(FORMATS), show_default=True,
              help="which files to write")
@click.option("--commit", is_flag=True,
              help="commit the files, alone: the gain over the baselines as subject, the verdict and figures below")
@click.option("--force", is_flag=True, help="replace a file that exists with other contents")
@click.option("--storage", default=None, help=f"SQLAlchemy URL, opened read-only (default {DEFAULT_STORAGE})")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout, nothing else")
def export(study_name: str, to: Path, formats: list[str], commit: bool, force: bool, storage: str | None,
           as_json: bool) -> None:
    """Write a study's winner as deploy files: a vLLM --config file, the serve command, Helm values for the
    production stack, a KServe InferenceService, a Kubernetes Deployment and Service, docker compose, and an
    llm-d kustomize patch."""
    data = read_study(load_study(study_name, open_storage_readonly(storage)))
    result = export_study(data, to, formats, commit=commit, force=force)
    if as_json:
        echo_json({"study": result.study, "trial": result.trial, "directory": str(result.directory),
                   "written": [str(p) for p in result.written], "unchanged": [str(p) for p in result.unchanged],
                   "commit": result.commit, "message": result.message})
        return
    console = Console(soft_wrap=True)
    for path in result.written:
        console.print(f"wrote {path}", markup=False, highlight=False)
    for path in result.unchanged:
        console.print(f"unchanged {path}", markup=False, highlight=False)
    if result.commit:
        console.print(f"committed {result.commit[:12]}: {result.message.splitlines()[0]}", markup=False,
                      highlight=False)
    elif commit:
        console.print("nothing to commit: the exported files are committed already", markup=False, highlight=False)


commands = [export]

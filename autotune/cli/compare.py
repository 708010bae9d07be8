"""`autotune compare`: studies' winners side by side (:mod:`autotune.compare`), and the HTML report."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from autotune.compare import compare_rows, require_plotly, summarize, write_report
from autotune.fileio import check_file_place
from autotune.storage import DEFAULT_STORAGE, open_storage_readonly, redact_url

__all__ = ["commands"]


@click.command("compare")
@click.argument("studies", nargs=-1, required=True)
@click.option("--storage", default=None, help=f"SQLAlchemy URL, opened read-only (default {DEFAULT_STORAGE})")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write a self-contained HTML report with the charts")
def compare(studies: tuple[str, ...], storage: str | None, html_path: Path | None) -> None:
    """Compare studies' winners: throughput at the limit with its interval, P99s, gains over the baselines,
    GPU-minutes, and the flags (those the winners set differently are marked with ≠)."""
    if html_path is not None:  # before any work: the report is what was asked for
        require_plotly()
        check_file_place(html_path, "--html")
    summaries = summarize(open_storage_readonly(storage), studies)
    if html_path is not None:
        write_report(summaries, html_path, redact_url(storage or DEFAULT_STORAGE))
    console = Console(soft_wrap=True)
    if not console.is_terminal:  # a pipe or a log: as wide as the table needs, nothing cut or wrapped
        console = Console(width=1000)
    table = Table(title="autotune compare", title_justify="left")
    table.add_column("")
    for s in summaries:
        table.add_column(s.name, overflow="fold")
    for row in compare_rows(summaries):
        style = "bold yellow" if row.differs else None
        table.add_row(row.label + (" ≠" if row.differs else ""), *row.cells, style=style)
    console.print(table)
    if html_path is not None:
        console.print(f"report: {html_path}", markup=False, highlight=False)


commands = [compare]

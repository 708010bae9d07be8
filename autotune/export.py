"""``autotune export``: a study's winner as deploy files in a git work tree, optionally committed.

Every input is checked and every file rendered before anything is written: the target must lie in a git work
tree, a file there with other contents is replaced only with ``force``, and ``commit`` needs a clean tree and a
git identity. Files are written to a temporary name beside their place and renamed over it, so a reader never sees
half a file. Exporting the same study again writes the same bytes (the header's date is when the winner was
measured, not when it was exported): nothing changes and nothing is committed.
"""
from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from autotune.deploy import Deployment, build_deployment, file_name, render
from autotune.errors import AutotuneError, UsageError
from autotune.fileio import write_text_atomically
from autotune.records import GainRecord
from autotune.winner import StudyRecords, Winner, require_winner

__all__ = ["ExportResult", "export_study", "commit_message"]


@dataclass(frozen=True)
class ExportResult:
    study: str
    trial: int
    directory: Path
    written: list[Path] = field(default_factory=list)  # new or replaced
    unchanged: list[Path] = field(default_factory=list)  # already there with the same contents
    commit: str | None = None  # the commit made, when one was asked for and something changed
    message: str = ""  # its message


def export_study(data: StudyRecords, to: Path, formats: list[str], commit: bool = False,
                 force: bool = False) -> ExportResult:
    winner = require_winner(data)  # no winner: exit 3, saying why
    dep = build_deployment(data, winner)
    to = Path(to).expanduser().absolute()
    top = _work_tree(to)
    if commit:
        _check_commit_possible(top)
    files = {to / file_name(fmt, dep): render(fmt, dep) for fmt in formats}
    if commit:
        ignored = _git(top, "check-ignore", "--no-index", "--", *map(str, files), check=False).stdout.split()
        if ignored:
            raise UsageError(f"{ignored[0]} is ignored by git in {top}: it cannot be committed")
    changed, unchanged, conflicts = {}, [], []
    for path, text in files.items():
        if path.is_dir():
            raise UsageError(f"{path} is a directory")
        if path.exists():
            if path.read_bytes() == text.encode():
                unchanged.append(path)
                continue
            if not force:
                conflicts.append(path)
        changed[path] = text
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise UsageError(f"{conflicts[0]} exists with other contents{more}: --force replaces it")
    to.mkdir(parents=True, exist_ok=True)
    for path, text in changed.items():
        write_text_atomically(path, text, mode=0o755 if path.name.endswith(".sh") else 0o644)
    result = ExportResult(study=data.name, trial=winner.trial, directory=to, written=list(changed),
                          unchanged=unchanged)
    if not commit:
        return result
    paths = [str(p) for p in files]
    _git(top, "add", "--", *paths)
    if _git(top, "diff", "--cached", "--quiet", "--", *paths, check=False).returncode == 0:
        return result  # the same files are committed already
    message = commit_message(winner, dep)
    _git(top, "commit", "--quiet", "-m", message, "--", *paths)
    sha = _git(top, "rev-parse", "HEAD").stdout.strip()
    return ExportResult(study=result.study, trial=result.trial, directory=to, written=result.written,
                        unchanged=result.unchanged, commit=sha, message=message)


def commit_message(winner: Winner, dep: Deployment) -> str:
    """The subject states the gain over each baseline, and no more: which configurations are equal within noise
    only the verdict says, and it can run to several lines, so it goes in the body with the header's figures, word
    for word as `best` gives it."""
    gains = [_subject_gain(name, g) for name, g in winner.gains.items()]
    # no gains: the best trial so far (no final comparison yet), or a winner compared with no baseline (the only
    # finalist, or its baselines cut short)
    said = ", ".join(gains) if gains else ("no baseline compared" if winner.selected
                                           else "the best trial so far, not re-measured")
    subject = (f"autotune: {dep.model_slug} on {dep.gpus}x {dep.gpu_type}, study {dep.study} trial {winner.trial}: "
               f"{said}")
    return subject + "\n\n" + "\n".join(dep.header) + "\n"


def _subject_gain(name: str, gain: GainRecord) -> str:
    """``+6.7% over vllm-defaults``, with what a figure the interval does not tell from 0 is: a git log read alone
    must not pass one for a gain."""
    if not gain.baseline_meets_limit:
        return f"{name} met no limit"
    said = f"{gain.gain_pct:+.1f}% over {name}"
    if not (math.isfinite(gain.gain_pct_low) and math.isfinite(gain.gain_pct_high)):
        return f"{said} (no interval)"
    return said if gain.significant else f"{said} (within noise)"


def _work_tree(to: Path) -> Path:
    """The top of the git work tree ``to`` lies in (``to`` may not exist yet: its nearest existing folder)."""
    existing = to
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{existing} is not a directory")
    proc = _git(existing, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise UsageError(f"{to} is not in a git work tree (git init, or clone your deploy repository, first)")
    return Path(proc.stdout.strip())


def _check_commit_possible(top: Path) -> None:
    dirty = _git(top, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    if dirty:
        raise UsageError(f"{top} has uncommitted changes ({dirty[0].strip()}{', ...' if len(dirty) > 1 else ''}): "
                         "--commit makes a commit of the export alone; commit or stash them first")
    ident = _git(top, "var", "GIT_COMMITTER_IDENT", check=False)
    if ident.returncode != 0:
        raise UsageError(f"git has no identity to commit with in {top} (git config user.name and user.email)")


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UsageError("git is not installed: export writes into a git work tree") from None
    if check and proc.returncode != 0:
        first = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[0]
        raise AutotuneError(f"git {args[0]} failed in {cwd}: {first}")
    return proc


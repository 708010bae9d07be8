"""Files written whole or not at all (to a temporary name beside their place, then renamed over it), a user's
YAML files read with a one-line error, and whether a folder can be made where the user pointed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import UsageError

__all__ = ["write_text_atomically", "read_yaml", "folder_problem", "check_file_place"]


def read_yaml(path: Path | str, what: str) -> Any:
    """A YAML file the user named; one that cannot be read or parsed is a one-line error naming ``what``."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:  # a binary file named for a YAML one (a study's database, say)
        raise UsageError(f"cannot read {what} {path}: not a text file") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{what} {path}: invalid YAML: {str(e).splitlines()[0]}") from None


def write_text_atomically(path: Path, text: str, mode: int = 0o644) -> Path:
    """A reader sees the old file or the new one, never half of one; a failure leaves no temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def folder_problem(path: Path) -> str:
    """Why files cannot be written in a folder at ``path`` (it may not exist yet); "" where they can. Found by
    making a temporary folder there, or in its nearest existing parent, and removing it: nothing is left behind,
    and what the system refuses (a parent that is a file, a read-only or virtual file system) is what a write
    would meet."""
    parent = Path(path)
    try:  # exists() itself raises where a folder on the way cannot be searched
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        os.rmdir(tempfile.mkdtemp(prefix=".autotune-probe-", dir=parent))
    except OSError as e:
        return f"making a folder in {parent}: {e.strerror or e}"
    return ""


def check_file_place(path: Path | str, option: str) -> None:
    """Refuse, as a one-line usage error naming ``option``, a file that could not be written at ``path``: its folder
    missing, or one where nothing can be written. Checked before the work whose result goes there."""
    folder = Path(path).parent
    try:  # both raise, rather than answer False, for a folder on the way that cannot be searched or a name too long
        if not folder.is_dir():
            raise UsageError(f"{option} {path}: folder {folder} does not exist")
        Path(path).exists()
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    if problem := folder_problem(folder):
        raise UsageError(f"{option} {path}: cannot write there ({problem})")

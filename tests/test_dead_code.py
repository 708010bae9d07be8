"""No dead code in autotune/: vulture over the package, with tests/vulture_whitelist.py for what it cannot
see used. Run the same check by hand with ``python -m pytest tests/test_dead_code.py``; a finding is fixed by
deleting the code, or, for a framework hook or a use outside the package, by an entry in the whitelist that says
who uses it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHITELIST = Path(__file__).with_name("vulture_whitelist.py")

# Functions that frameworks call because of their decorator: click commands and groups, pydantic validators.
IGNORE_DECORATORS = ["@*.command", "@*.group", "@click.command", "@click.group", "@field_validator",
                     "@model_validator"]

_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): (?P<message>.*)$")


def vulture_findings(paths: list[str]) -> list[tuple[str, str, str]]:
    """(path, name, report line) for each finding of vulture over ``paths`` (relative to the repository)."""
    proc = subprocess.run([sys.executable, "-m", "vulture", *paths, str(WHITELIST),
                           "--ignore-decorators", ",".join(IGNORE_DECORATORS)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 3), f"vulture failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    found = []
    for line in proc.stdout.splitlines():
        m = _LINE.match(line)
        assert m, f"unexpected vulture output: {line!r}"
        name = re.search(r"'([^']*)'", m["message"])
        found.append((Path(m["path"]).as_posix(), name[1] if name else "", line))
    return found


def test_no_dead_code_in_the_package() -> None:
    found = vulture_findings(["autotune"])
    assert not found, ("dead code (delete it, or whitelist a real use in tests/vulture_whitelist.py):\n"
                       + "\n".join(line for _, _, line in found))


def test_the_check_reports_an_unused_function(tmp_path: Path) -> None:
    """The check is live: a module with an unused function (and one used) is reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("def used() -> int:\n    return 1\n\n\ndef never_called() -> int:\n"
                                "    return used()\n")
    found = vulture_findings([str(pkg)])
    assert [name for _, name, _ in found] == ["never_called"]

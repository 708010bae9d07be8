from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autotune.testing.models import WEIGHTLESS_FLASH_CONFIG



@pytest.fixture
def weightless_flash_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "flash-weightless"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(WEIGHTLESS_FLASH_CONFIG))
    return folder


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (autotune.testing.postgres). Skipped only where PostgreSQL is not
    installed at all; CI installs it (.ci/run) and sets AUTOTUNE_REQUIRE_POSTGRES=1, so there it never skips."""
    from autotune.testing.postgres import TempPostgres, postgres_bin_dir

    if postgres_bin_dir() is None:
        if os.environ.get("AUTOTUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail("AUTOTUNE_REQUIRE_POSTGRES=1 but PostgreSQL is not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    with TempPostgres() as pg:
        yield pg

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


@pytest.fixture(scope="session")
def factory_storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite storage of studies as `autotune run` leaves them (tests/study_factory.py), shared read-only by the
    readers' tests: a, b (two GPUs, TTFT and ITL limits, measured with --load-format dummy), c (the sim engine, a
    tighter limit), none (nothing met the limit), unselected (trials, no re-measurement yet)."""
    from tests.study_factory import make_study, throwaway_storage

    url = f"sqlite:///{tmp_path_factory.mktemp('studies')}/studies.db"
    storage = throwaway_storage(url)
    make_study(storage, "a", seed=1)
    make_study(storage, "b", limits_ms={"ttft": 500.0, "itl": 50.0}, gpus=2, seed=2,
               extra_flags={"load-format": "dummy"})
    make_study(storage, "c", limits_ms={"ttft": 300.0}, engine="sim", seed=3)
    make_study(storage, "none", feasible=False, seed=4)
    make_study(storage, "unselected", select=False, seed=5)
    storage.engine.dispose()
    return url

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.testing.models import WEIGHTLESS_FLASH_CONFIG



@pytest.fixture
def weightless_flash_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "flash-weightless"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(WEIGHTLESS_FLASH_CONFIG))
    return folder

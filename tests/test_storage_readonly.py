"""The readers' storage (best, studies, export, compare, the dashboard, sim calibrate) cannot write: SQLite opened with mode=ro, PostgreSQL with
read-only transactions; a missing file is not created; a password never reaches a message or a page. A real
PostgreSQL is used when AUTOTUNE_TEST_POSTGRES_URL names one (with a password), as Optuna's own tests do."""
from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path

import optuna
import pytest

from autotune.cli import main
from autotune.errors import StorageError, StorageUnavailable
from autotune.storage import load_study, open_storage, open_storage_readonly, redact_url

PG_URL = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sqlite_reads_and_refuses_every_write(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    before = _digest(tmp_path / "s.db")
    storage = open_storage_readonly(url)
    ro = load_study("s", storage)
    assert [t.params for t in ro.trials] == [t.params for t in study.trials]
    for write in (lambda: ro.set_user_attr("k", 1),
                  lambda: storage.delete_study(ro._study_id)):  # noqa: SLF001 - the id the dashboard would use
        with pytest.raises(optuna.exceptions.StorageInternalError):
            write()
    assert _digest(tmp_path / "s.db") == before


@pytest.mark.parametrize("url, says", [
    ("sqlite:///{tmp}/none.db", "no database file at {tmp}/none.db"),
    ("sqlite://", "an in-memory database holds no studies"),
    ("mysql+pymysql://tuner:s3cretpw@db/studies", "read-only access is implemented for SQLite and PostgreSQL"),
])
def test_what_cannot_be_opened_read_only_is_one_line_without_the_password(tmp_path, url, says):
    with pytest.raises(StorageError) as e:
        open_storage_readonly(url.format(tmp=tmp_path))
    assert says.format(tmp=tmp_path) in str(e.value) and "s3cretpw" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_a_server_that_does_not_answer_is_unreachable_for_a_reader_as_for_run():
    """Exit 1, as `run` and a worker say it (it was a reader's bad input, exit 2): nothing listens on port 1."""
    with pytest.raises(StorageUnavailable) as e:
        open_storage_readonly("postgresql+psycopg://tuner:s3cretpw@127.0.0.1:1/studies")
    assert str(e.value).startswith("cannot reach storage postgresql+psycopg://tuner:***@127.0.0.1:1/studies: ")
    assert "s3cretpw" not in str(e.value) and e.value.exit_code == 1


@pytest.mark.parametrize("command", [
    ["best", "--study", "x"], ["studies"], ["export", "--study", "x", "--to", "{tmp}/deploy"], ["compare", "x"],
    ["dashboard"], ["sim", "calibrate", "--study", "x", "--to", "{tmp}/host.yaml"],
])
def test_every_reader_refuses_a_missing_sqlite_file_and_creates_none(capsys, tmp_path, command):
    """A mistyped path once made `best` and `studies` create an empty database and report no study (exit 2, or
    nothing at all with exit 0)."""
    url = f"sqlite:///{tmp_path}/mistyped.db"
    code = main([*(a.format(tmp=tmp_path) for a in command), "--storage", url])
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.startswith("autotune: error")]
    assert code == 2 and len(lines) == 1 and f"no database file at {tmp_path}/mistyped.db" in lines[0], err
    assert "Traceback" not in err and out == ""
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.skipif(not PG_URL, reason="AUTOTUNE_TEST_POSTGRES_URL (a PostgreSQL URL with a password) not set")
def test_postgresql_sessions_are_read_only_and_the_dashboard_hides_the_password():
    from aiohttp.test_utils import TestClient, TestServer
    from sqlalchemy.engine import make_url

    from autotune.dashboard import build_app
    from tests.study_factory import make_study

    name = f"ro-{uuid.uuid4().hex[:8]}"
    make_study(open_storage(PG_URL), name, n_trials=4)
    storage = open_storage_readonly(PG_URL)
    study = load_study(name, storage)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.set_user_attr("k", 1)
    secret = make_url(PG_URL).password
    assert secret, "AUTOTUNE_TEST_POSTGRES_URL must carry a password: the test checks that none is shown"
    assert secret not in redact_url(PG_URL)

    async def pages() -> list[str]:
        async with TestClient(TestServer(build_app(storage, redact_url(PG_URL), None))) as client:
            texts = []
            for path in ("/", f"/study/{name}", f"/api/compare?study={name}"):
                response = await client.get(path)
                assert response.status == 200
                texts.append(await response.text())
            return texts

    for text in asyncio.run(pages()):
        assert secret not in text
    open_storage(PG_URL).delete_study(study._study_id)  # noqa: SLF001 - cleaning up the shared database


def test_a_file_that_holds_no_study_tables_is_named_as_given(tmp_path):
    """An empty file is opened read-only through a `file:...?mode=ro` URI: the message names the URL typed."""
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(StorageError) as e:
        open_storage_readonly(f"sqlite:///{tmp_path}/empty.db")
    assert f"cannot open storage sqlite:///{tmp_path}/empty.db read-only" in str(e.value), str(e.value)
    assert (tmp_path / "empty.db").read_bytes() == b""


def test_a_server_that_does_not_answer_is_said_alike_for_run_and_the_readers():
    """The driver's words, without SQLAlchemy's "(psycopg.OperationalError)" that run and a worker put before them."""
    from autotune.storage import open_storage

    url = "postgresql+psycopg://tuner:s3cretpw@127.0.0.1:1/studies"
    said = []
    for opener in (open_storage, open_storage_readonly):
        with pytest.raises(StorageUnavailable) as e:
            opener(url)
        said.append(str(e.value))
    assert said[0] == said[1] and "OperationalError" not in said[0]

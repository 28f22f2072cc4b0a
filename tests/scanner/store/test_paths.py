"""Store paths: a relative SQLite path in [store] url is relative to the config file, and the read-only verbs
never create a store: a missing one is one clear line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from scanner.cli import main
from scanner.config import load_config
from scanner.pipeline import run_scan
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.scanner.test_crash import FIRST, _config, _export, estate  # noqa: F401 - the estate fixture

READERS = [
    ["status"], ["changes"], ["report"], ["evidence", "--out", "pack"], ["jobs"], ["audit", "verify"],
    ["audit", "show"],
]


def test_a_relative_sqlite_path_is_relative_to_the_config_file(
    estate: ZoneServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    (folder / "acme").mkdir(parents=True)
    path = _config(folder, "sqlite:///state/mailwarden.db", estate)
    (folder / "state").mkdir()
    _export(folder, FIRST)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.store.url == f"sqlite:///{folder / 'state' / 'mailwarden.db'}"
    done = CliRunner().invoke(main, ["scan", "--config", str(path), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert (folder / "state" / "mailwarden.db").is_file()
    assert not list(elsewhere.rglob("*.db"))
    status = CliRunner().invoke(main, ["status", "--config", str(path)])
    assert status.exit_code == 0 and "latest stored run: 20" in status.output
    _config(folder, f"sqlite:///{tmp_path / 'x.db'}", estate)  # an absolute path is left alone
    assert load_config(path).store.url == f"sqlite:///{tmp_path / 'x.db'}"


@pytest.mark.parametrize("args", READERS, ids=[" ".join(a[:2]) for a in READERS])
def test_read_only_verbs_never_create_a_store(
    args: list[str], estate: ZoneServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path, "sqlite:///missing/../mailwarden.db", estate)
    done = CliRunner().invoke(main, [*args, "--config", str(path)])
    assert done.exit_code == 2, done.output
    assert done.output == f"mailwarden: no store at {tmp_path / 'missing/../mailwarden.db'}: run `mailwarden scan` " \
                          "first, or point [store] url at the store\n"
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "pack").exists()


def test_read_only_verbs_refuse_an_empty_postgresql_schema(
    estate: ZoneServer, tmp_path: Path, store_url: str
) -> None:
    path = _config(tmp_path, store_url, estate)
    done = CliRunner().invoke(main, ["status", "--config", str(path)])
    assert done.exit_code == 2 and "run `mailwarden scan` first" in done.output, done.output
    _export(tmp_path, FIRST)
    store = Store(store_url)  # a writer creates it
    try:
        run_scan(load_config(path), tmp_path / "out", store=store)
    finally:
        store.close()
    assert CliRunner().invoke(main, ["status", "--config", str(path)]).exit_code == 0

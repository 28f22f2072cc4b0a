"""`mailwarden --help`, `checks` and `status` import only what they use, so they start at once (issue 17).

Each command runs in a fresh interpreter that reports, as it exits, every module it imported. Wall time is not
asserted (the machine running the tests is shared); the heavy modules that would make it slow are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scanner.store.database import Store

# Runs the command as the `mailwarden` script does, then writes the names of the imported modules to argv[1].
PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w", encoding="utf-8").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "mailwarden"
from scanner.cli import main
main()
"""

# What the reports, collection and the web app need, never a command that only lists or reads status.
HEAVY = ("pandas", "numpy", "openpyxl", "jinja2", "httpx", "httpx2", "dns", "uvicorn", "starlette", "cryptography")
# Neither the store nor the config: --help and checks open no database and read no config file.
STORE_AND_CONFIG = ("sqlalchemy", "pydantic", "apscheduler", "asyncio", "ssl")


def _run(args: list[str], cwd: Path) -> tuple[str, set[str]]:
    """The command's output and the modules its interpreter imported."""
    modules = cwd / "modules.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(modules), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout, set(json.loads(modules.read_text(encoding="utf-8")))


def _imported(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in modules))


@pytest.mark.parametrize("args, says", [
    (["--help"], "Usage: mailwarden"),
    (["checks"], "dmarc.missing  [high, domain]"),
])
def test_help_and_checks_import_neither_the_store_nor_the_heavy_packages(tmp_path: Path, args: list[str],
                                                                         says: str) -> None:
    output, modules = _run(args, tmp_path)
    assert says in output
    assert _imported(modules, HEAVY + STORE_AND_CONFIG) == []


@pytest.mark.parametrize("schedule, cron", [("", False), ('[schedule]\nscan = "30 5 * * *"\n', True)])
def test_status_on_sqlite_imports_neither_sqlalchemy_nor_pydantic(tmp_path: Path, schedule: str, cron: bool) -> None:
    """Status reads [store] and [schedule] without the config's models and the store through sqlite3; a cron
    expression other than the default is checked by APScheduler's CronTrigger, as the full loader checks it."""
    database = tmp_path / "mailwarden.db"
    Store(f"sqlite:///{database}").close()
    config = tmp_path / "small.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{database}"\n{schedule}\n[[tenants]]\nname = "acme"\n'
                      'domains = ["acme.example"]\n', encoding="utf-8")
    output, modules = _run(["status", "--config", str(config)], tmp_path)
    assert "latest stored run: none" in output
    assert _imported(modules, HEAVY + ("sqlalchemy", "pydantic", "scanner.config", "scanner.store.database")) == []
    assert ("apscheduler.triggers.cron" in modules) is cron and "sqlite3" in modules

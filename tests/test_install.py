"""Install anywhere: the wheel carries its templates, default policy, sender catalogue and demo estate.

The wheel is built from this checkout and installed into a fresh virtual environment. mailwarden's own code
and data come only from the wheel (checked below); its third-party dependencies are the ones this test
environment already has, made visible through a ``.pth`` line (the new environment never reaches PyPI, and
the line adds a directory without running that directory's own ``.pth`` files, so this checkout's editable
install stays out).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str | Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_wheel_installed_in_a_fresh_venv_runs_the_demo_in_an_empty_folder(tmp_path: Path) -> None:
    # Build from a clean copy: setuptools' build/ directory in a checkout can hold files deleted since.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "test-artifacts",
        "mailwarden-demo", "mailwarden-out", "*.db"))
    built = _run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-v",
                  "-w", tmp_path / "dist"], cwd=tmp_path)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    noise = [line for line in (built.stdout + built.stderr).splitlines()
             if "Warning" in line or "absent from the `packages`" in line]
    assert noise == [], noise  # setuptools says nothing about data directories it was not told of
    (wheel,) = (tmp_path / "dist").glob("mailwarden-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = {p.relative_to(ROOT / "config").as_posix() for p in (ROOT / "config").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {n for n in bundled if f"scanner/bundled/{n}" not in names} == set()  # every bundled file ships
    templates = {p.relative_to(ROOT).as_posix() for d in ("reports", "remediation")
                 for p in (ROOT / d / "templates").iterdir()}
    assert templates - names == set()

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                      wheel], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")

    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([python, "-c", "import scanner.config, checks.dmarc, reports.html; "
                  "print(scanner.config.BUNDLED); print(checks.dmarc.__file__); print(reports.html.TEMPLATES)"],
                 cwd=empty)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).is_relative_to(site), line  # from the wheel, not from this checkout

    demo = _run([venv / "bin" / "mailwarden", "demo"], cwd=empty)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "config file not found" not in demo.stderr
    out = empty / "mailwarden-demo"
    for name in ("report.html", "findings.json", "findings.csv", "manifest.json", "after-change/report.html"):
        assert (out / name).is_file(), name
    assert "change log of run" in demo.stdout
    listed = _run([venv / "bin" / "mailwarden", "checks"], cwd=empty)
    assert listed.returncode == 0 and "dmarc.missing" in listed.stdout

"""The scripts in tune/ run as `python tune/<script>.py` import the checkout they live in, not an
installed copy and not tune/'s own modules as top-level ones (tune/_script_path.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (REPO / "tune").glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def test_the_scripts_are_the_seven_entry_points():
    assert SCRIPTS == ["fetch_model", "report", "reproduce", "rerun_best", "run_search", "study", "tracking_server"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_imports_the_checkout_it_lives_in(script, tmp_path):
    """A copy of the repository whose `tune` package announces itself: its script must import
    that copy (this interpreter's installed `tune` is the original checkout's), and no module of
    tune/ may be importable as a top-level module (`import search` would find tune/search.py)."""
    copy = tmp_path / "copy"
    for pkg in ("bilaw", "tune", "search_spaces"):
        shutil.copytree(REPO / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "tune" / "__init__.py"
    init.write_text(init.read_text() + "\nimport sys as _s\n"
                    "print('tune from', __file__, 'top-level search importable:',"
                    " __import__('importlib.util').util.find_spec('search') is not None, file=_s.stderr)\n")
    out = subprocess.run([sys.executable, str(copy / "tune" / f"{script}.py"), "--help"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"tune from {copy / 'tune' / '__init__.py'} top-level search importable: False" in out.stderr


def _entry_points() -> dict[str, str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_has_an_entry_point_on_path():
    """Each CLI (tune/'s scripts, bilaw's `python -m` commands) is a `[project.scripts]` command
    naming that module's `main`."""
    points = _entry_points()
    targets = {v.split(":")[0] for v in points.values()}
    assert {f"tune.{s}" for s in SCRIPTS} | {"bilaw.train", "bilaw.evaluate", "bilaw.export"} == targets
    assert all(v.endswith(":main") and k.startswith("bilaw-") for k, v in points.items())


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(_entry_points()))
def test_an_installed_command_runs(command):
    """The set-up's editable install puts each command beside the interpreter; `--help` runs it."""
    path = Path(sys.executable).with_name(command)
    assert path.exists(), f"{path} missing: re-run `bash scripts/setup.sh` (pip install -e .)"
    done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: "), done.stdout[-500:] + done.stderr[-2000:]

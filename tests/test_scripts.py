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

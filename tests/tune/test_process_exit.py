"""A command's fast exit keeps what a normal exit does that matters."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import REPO


def test_exit_now_runs_the_atexit_handlers_flushes_output_and_exits_with_the_code(tmp_path):
    marker = tmp_path / "closed.txt"
    script = textwrap.dedent(f"""
        import atexit, sys
        sys.path.insert(0, {str(REPO)!r})
        from tune.process_exit import exit_now

        atexit.register(lambda: open({str(marker)!r}, "w").write("closed"))
        print("summary line", end="")  # block-buffered into the pipe: lost unless flushed
        print("warning line", end="", file=sys.stderr)
        exit_now(3)
        print("never")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "summary line", "warning line")
    assert marker.read_text() == "closed"


def test_exit_now_without_a_code_exits_zero_as_sys_exit_does():
    script = f"import sys; sys.path.insert(0, {str(REPO)!r}); from tune.process_exit import exit_now; exit_now(None)"
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 0

"""A Ray worker stopped by SIGTERM inside a weakref callback ends, silently (tune/worker_exit.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, ray_env

from tune.worker_exit import exit_quietly_on_sigterm, worker_runtime_env

ROOT = REPO

# Ray's worker handler for SIGTERM raises SystemExit; the signal is sent from inside a weakref
# callback, where Python runs the handler and cannot raise its exception.
_STOPPED_IN_A_CALLBACK = """
import os, signal, sys, weakref
sys.path.insert(0, {root!r})
if {hook}:
    from tune.worker_exit import exit_quietly_on_sigterm
    exit_quietly_on_sigterm()
def handler(signum, frame):
    raise SystemExit(1)
signal.signal(signal.SIGTERM, handler)
class Thing: pass
def callback(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000): pass
thing = Thing(); ref = weakref.ref(thing, callback)
del thing
print("ran on after the signal", flush=True)
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_without_the_hook_python_prints_the_ignored_exit_and_runs_on():
    out = _run(_STOPPED_IN_A_CALLBACK.format(root=str(ROOT), hook=False))
    assert out.returncode == 0 and "ran on after the signal" in out.stdout
    assert "Exception ignored" in out.stderr and "SystemExit: 1" in out.stderr


def test_with_the_hook_the_worker_ends_with_the_exit_code_and_prints_nothing():
    out = _run(_STOPPED_IN_A_CALLBACK.format(root=str(ROOT), hook=True))
    assert (out.returncode, out.stdout, out.stderr) == (1, "", "")


def test_other_exceptions_in_a_callback_are_still_printed():
    code = (f"import sys, weakref; sys.path.insert(0, {str(ROOT)!r})\n"
            "from tune.worker_exit import exit_quietly_on_sigterm; exit_quietly_on_sigterm()\n"
            "class T: pass\n"
            "def cb(ref): raise ValueError('bad callback')\n"
            "t = T(); r = weakref.ref(t, cb); del t\nprint('still here')")
    out = _run(code)
    assert out.returncode == 0 and out.stdout == "still here\n"
    assert "Exception ignored" in out.stderr and "ValueError: bad callback" in out.stderr


def test_the_runtime_env_holds_the_variables_and_the_hook():
    env = worker_runtime_env({"RAY_AIR_NEW_OUTPUT": "0"})
    assert env == {"env_vars": {"RAY_AIR_NEW_OUTPUT": "0"}, "worker_process_setup_hook": exit_quietly_on_sigterm}


@pytest.mark.slow
def test_ray_runs_the_hook_in_every_worker_it_starts(ray_tmp):
    code = ("import os, sys, ray\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from tune.worker_exit import worker_runtime_env\n"
            "ray.init(address='local', num_cpus=2, include_dashboard=False, logging_level='ERROR',\n"
            "         runtime_env=worker_runtime_env({'BILAW_PROBE': 'yes'}))\n"
            "@ray.remote\n"
            "def probe():\n"
            "    return sys.unraisablehook.__name__, os.environ.get('BILAW_PROBE')\n"
            "print(sorted(set(ray.get([probe.remote() for _ in range(4)]))))\n"
            "ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                         env=ray_env(ray_tmp), cwd=ray_tmp, start_new_session=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[('_end_on_system_exit', 'yes')]", out.stdout[-2000:]

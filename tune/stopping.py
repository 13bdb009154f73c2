"""How a search's driver stops before its end: a signal (Ctrl-C, a batch scheduler's SIGTERM, a
closed terminal's SIGHUP) or its own `--time-budget`; and the line it prints when a full disk
stopped it (`disk_full_message`, the cause found by tune/disk_full.py).

Every one of them takes the path Ctrl-C takes: while Ray Tune runs the trials, Ray Tune's own
SIGINT handler ends its loop gracefully (a last experiment snapshot; running trials stop and keep
their last checkpoint, so `--resume` continues them); anywhere else the driver unwinds with
KeyboardInterrupt. The driver then ends its MLflow runs KILLED, sets the study's running trials
aside (tune/orphans.py) and exits with the shell's code for the signal (128 + its number: SIGINT
130, SIGTERM 143, SIGHUP 129), or TIME_BUDGET_EXIT for a spent budget, after one line naming
what stopped it and the command that resumes.

Ray installs its own SIGTERM handler in the driver at `ray.init` (it aborts the process), so
`install` is called again once Ray is up. Ray Tune's stop handler stays installed after a run
that was not interrupted, so each Tuner.fit runs in `during_fit`, which puts the previous
handlers back. After a fit, `reason` says whether it was stopped (Ray Tune's ResultGrid shows a
stopped trial as TERMINATED).
"""
from __future__ import annotations

import _thread
import os
import re
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tune.mounts import mount_of
from tune.plan import Plan
from tune.sqlite_files import count_rows, sqlite_path
from tune.state_files import OPTUNA_DB

TIME_BUDGET = "time budget"   # the reason of a stop by --time-budget
TIME_BUDGET_EXIT = 75         # EX_TEMPFAIL: not finished, run the resume command later
STOP_SIGNALS = ("SIGTERM", "SIGHUP")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
DURATION_FORM = "hours, minutes and seconds such as 3h30m, 45m, 90s or 1h0m30s (whole numbers, at least 1s)"


class DurationError(ValueError):
    """A --time-budget value that is not a duration; the message names it and the allowed form."""


def parse_duration(text: str) -> float:
    """'3h30m' / '90s' / '1h' -> seconds. Whole numbers of h, m and s, in that order."""
    match = _DURATION.match(text.strip().lower()) if text else None
    if not match or not any(match.groups()):
        raise DurationError(f"--time-budget {text!r}: not a duration; give {DURATION_FORM}")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total < 1:
        raise DurationError(f"--time-budget {text!r}: must be at least 1s; give {DURATION_FORM}")
    return float(total)


def exit_code(reason: str) -> int:
    """The driver's exit code after a stop for `reason` ("SIGTERM", ..., or TIME_BUDGET)."""
    if reason == TIME_BUDGET:
        return TIME_BUDGET_EXIT
    return 128 + int(getattr(signal, reason, signal.SIGINT))


def resume_command(argv: list[str]) -> str:
    """The command that continues this search: the same arguments with --resume added and the
    ones a resume refuses (--checkpoint-every, which it keeps from the start) left out."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--checkpoint-every":
            skip = True
            continue
        if arg.startswith("--checkpoint-every="):
            continue
        out.append(arg)
    if "--resume" not in out:
        out.append("--resume")
    script = Path(__file__).resolve().parent / "run_search.py"
    try:
        script = script.relative_to(Path.cwd())
    except ValueError:
        pass
    return f"python {shlex.quote(str(script))} {shlex.join(out)}"


class StopRequest:
    """What stopped this driver, if anything (`reason`), and the handlers that stop it."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.in_fit = False
        self._timer: threading.Timer | None = None
        self.budget_s: float | None = None
        self._budget_call = False
        self._stopping = False  # a graceful stop is under way (a second stop cuts it short)
        self.deferring = False  # a report is being written: a stop waits for its end

    # -- signals -------------------------------------------------------------------------------
    def install(self) -> None:
        """Route SIGTERM and SIGHUP (and a SIGINT outside Ray Tune) to the graceful stop. Call
        again after ray.init, which installs Ray's own SIGTERM handler."""
        if threading.current_thread() is not threading.main_thread():
            return
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT comes here too (see _stop)
        quiet_ray_stop_notes()
        for name in (*STOP_SIGNALS, "SIGINT"):
            signal.signal(getattr(signal, name), self._on_signal)

    def uninstall(self) -> None:
        """Give the signals back to Python's defaults (the driver's own tests run in-process)."""
        if self._timer is not None:
            self._timer.cancel()
        if threading.current_thread() is not threading.main_thread():
            return
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        self.reason, self._stopping = None, False

    def _on_signal(self, signum: int, frame) -> None:
        if self._budget_call:  # _budget_spent's own call, not a signal from outside
            self._budget_call = False
        elif self.reason in (None, TIME_BUDGET):  # a signal says more than a budget spent at once
            self.reason = signal.Signals(signum).name
        self._stop(frame)

    def _stop(self, frame) -> None:
        """During a report (`deferred`), the first stop waits for its end. During a fit, Ray
        Tune's stop handler (which Ray Tune installs for SIGUSR1, and for SIGINT unless
        TUNE_DISABLE_SIGINT_HANDLER, set here so that every stop passes through this class) ends
        it gracefully; a second stop, or one anywhere else, unwinds as KeyboardInterrupt. A spent
        time budget waits for the next fit (a report is never cut short)."""
        if self.reason == TIME_BUDGET and not self.in_fit:
            return
        if self.deferring and not self._stopping:
            self._stopping = True
            return
        handler = signal.getsignal(signal.SIGUSR1)
        if self.in_fit and not self._stopping and callable(handler) and handler is not self._on_signal:
            self._stopping = True
            handler(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt

    @property
    def stopping(self) -> bool:
        """A graceful stop is under way: after a fit, it returned because it was asked to."""
        return self._stopping

    # -- the time budget -----------------------------------------------------------------------
    def start_budget(self, seconds: float | None) -> None:
        """Stop the search gracefully `seconds` from now (the next fit, if none is running)."""
        self.budget_s = seconds
        if seconds is None:
            return
        self._timer = threading.Timer(seconds, self._budget_spent)
        self._timer.daemon = True
        self._timer.start()

    def _budget_spent(self) -> None:
        if self.reason is None:
            self.reason = TIME_BUDGET
        if self.in_fit:
            self._budget_call = True
            _thread.interrupt_main(signal.SIGTERM)  # runs _on_signal in the main thread

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Around a search's report: a stop that comes meanwhile takes effect when it is written
        (KeyboardInterrupt at the end), so a finished search is never left half-reported; a
        second stop cuts it short."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.reason is not None and self.reason != TIME_BUDGET:
            raise KeyboardInterrupt

    @contextmanager
    def ray_starting(self, local: bool) -> Iterator[None]:
        """Around ray.init: a local Ray's processes (its head, its agents and, through them, the
        trials' workers) start with SIGTERM and SIGHUP blocked, as Ray starts them with SIGINT
        blocked. A signal sent to the whole job (a batch scheduler signals every process of it:
        SLURM's scancel and time limit; `kill -- -PGID`, `timeout`) then reaches only the driver,
        which stops them in order; otherwise Ray's head dies at once and the driver cannot stop
        its trials or end its runs. Ray's shutdown then stops them with SIGKILL after one second
        each. The driver's handlers are installed again inside (ray.init installs Ray's own), and
        a signal that came meanwhile is handled when the block ends."""
        held = {getattr(signal, name) for name in STOP_SIGNALS}
        before = signal.pthread_sigmask(signal.SIG_BLOCK, held) if local else None
        try:
            yield
            self.install()
        finally:
            if before is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)

    def keep_signals_off_this_thread(self) -> None:
        """In a helper thread: the stop signals are never delivered here, so that while the main
        thread holds them back (`ray_starting`) they wait for it rather than reach the driver's
        handlers through this thread."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {getattr(signal, name) for name in (*STOP_SIGNALS, "SIGINT")})

    @contextmanager
    def during_fit(self) -> Iterator[None]:
        """Around a Tuner.fit: a stop that came before it stops it at once; Ray Tune's SIGINT
        handler, left installed by a fit that was not interrupted, is taken out afterwards."""
        if self.reason is not None:
            raise KeyboardInterrupt
        main = threading.current_thread() is threading.main_thread()
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)} if main else {}
        self.in_fit = True
        try:
            yield
        finally:
            self.in_fit = False
            for signum, handler in before.items():
                signal.signal(signum, handler)


class _RayStopNotes:
    """Drops Ray Tune's own notes on a graceful stop ("Stop signal received ...", "Experiment has
    been interrupted ... Resume experiment with: Tuner.restore(...)"): the driver's one line says
    what stopped it and gives the command that resumes, which is not Ray's."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(("Stop signal received", "Experiment has been interrupted"))


class _VanishedTempFile:
    """Drops Ray Tune's error (with its traceback) when a snapshot's copy to the storage path met
    a temporary file that Ray itself had renamed meanwhile (its state files are written through
    a `.<uuid>-tmp-...` file): the next snapshot, after the next result and at the end, copies
    the finished file. Any other failed copy is still shown."""

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (str(record.msg).startswith("Saving experiment state to storage")
                    and isinstance(exc, FileNotFoundError) and "-tmp-" in str(exc))


_QUIET = _RayStopNotes()
_VANISHED = _VanishedTempFile()


def quiet_ray_stop_notes() -> None:
    """Ray Tune's notes the driver says better (a stop) or that need nothing (a vanished temp file)."""
    import logging

    for name, quiet in (("ray.tune.tune", _QUIET), ("ray.tune.execution.experiment_state", _VANISHED)):
        log = logging.getLogger(name)
        if quiet not in log.filters:
            log.addFilter(quiet)


STOP = StopRequest()  # the driver's one instance (a process has one set of signal handlers)


def stopped_line(reason: str, argv: list[str]) -> str:
    """The one line a stopped driver prints."""
    what = ("its --time-budget was spent" if reason == TIME_BUDGET else f"by {reason}")
    return (f"stopped: {what}; running trials stopped at their last checkpoint and what finished is kept; "
            f"resume with: {resume_command(argv)}")


def print_stopped(reason: str, argv: list[str]) -> int:
    print(stopped_line(reason, argv), file=sys.stderr, flush=True)
    return exit_code(reason)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full_message(plan: Plan, cause: str, resume_command: str) -> str:
    """The one line a search that stopped on a full disk prints (after `error: `): which of its
    places (the trials' results, the state folder, the tracking database) are on a full file
    system, named by mount point and type with its free space; what was kept (the finished
    trials, each unfinished trial's last checkpoint); and that `resume_command` continues the
    search once space is freed. `cause` is `disk_full_cause`'s line."""
    places: dict[Path, list[str]] = {}  # path -> what of the search it holds
    if plan.storage is not None:
        places.setdefault(plan.storage / plan.experiment, []).append("the trials' results")
    places.setdefault(Path(plan.state_dir), []).append("the search state (Optuna study)")
    tracking_db = sqlite_path(plan.tracking_uri)
    if tracking_db is not None:
        places.setdefault(tracking_db, []).append("the MLflow database")
    disks: dict[str, dict] = {}
    for path, what in places.items():
        mount, kind = mount_of(path)
        try:
            st = os.statvfs(mount or path)
            free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        except OSError:
            free, size = float("nan"), float("nan")
        disk = disks.setdefault(mount or str(path), {"kind": kind or "unknown", "free": free, "size": size, "holds": []})
        disk["holds"].append(f"{' and '.join(what)} ({path})")
    def described(mount: str) -> str:
        d = disks[mount]
        return f"{mount} ({d['kind']}, {_size(d['free'])} free of {_size(d['size'])}) holds {' and '.join(d['holds'])}"

    full = [m for m, d in disks.items() if d["free"] < max(1 << 20, 0.01 * d["size"])]  # under 1% or 1 MiB free
    if full:
        where = "; ".join(described(m) for m in full)
    else:  # freed since, or the write that failed was on another machine (a trial's node)
        where = (f"no file system of the search on this machine is full now ({'; '.join(map(described, disks))}): "
                 f"space was freed since, or the write that failed was on another node of the cluster")
        full = ["the file system that filled up"]
    done = count_rows(Path(plan.state_dir) / OPTUNA_DB,
                       "select count(*) from trials t join studies s on t.study_id = s.study_id "
                       "where s.study_name = ? and t.state = 'COMPLETE'", (plan.experiment,))
    kept = (f"{done} of the {plan.num_samples} trials finished" if done is not None else "the trials that finished")
    return (f"the disk is full ({cause}): {where}. The search stopped; kept: {kept} (in the Optuna study, in MLflow "
            f"and in their trial folders) and each unfinished trial's last checkpoint, so nothing that finished is "
            f"lost. Free space on {' and '.join(full)}, then run: {resume_command} (it continues the search where it "
            f"stopped)")

"""How long a search's driver takes to stop after a signal, a trial mid-epoch: the number behind the
grace period a scheduler must give (README, "Stopping and resuming").

    python benchmarks/stop_time.py --workload smoke --repeats 3 --set epochs=6
    python benchmarks/stop_time.py --workload digits --signal SIGTERM

Each repeat starts `tune/run_search.py --space ablation_capacity --max-concurrent 1` in its own
process group and folder, waits until a trial is running (a RUNNING MLflow run that has logged an
epoch and whose trial has not ended), waits `--settle` seconds more, sends the signal to the
driver alone (as a scheduler does) and times its exit; whatever of its process group is left is
counted and stopped.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _running_trial_epochs(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from metrics m join runs r on m.run_uuid = r.run_uuid "
                               "where m.key = 'val_pgd_acc' and r.status = 'RUNNING' and not exists "
                               "(select 1 from tags t where t.run_uuid = r.run_uuid and t.key = 'trial_status')"
                               ).fetchone()[0]
    except sqlite3.Error:
        return 0


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def stop_once(folder: Path, workload: str, signame: str, extra: list[str], settle: float) -> tuple[int, float, int]:
    """(exit code, seconds from the signal to the exit, processes of its group left)."""
    db = folder / "mlruns.db"
    argv = ["--space", "ablation_capacity", "--workload", workload, "--max-concurrent", "1",
            "--storage-path", str(folder / "rr"), "--tracking-uri", f"sqlite:///{db}", *extra]
    with open(folder / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, str(REPO / "tune" / "run_search.py"), *argv], cwd=folder,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while driver.poll() is None and _running_trial_epochs(db) < 1:
        time.sleep(0.2)
    time.sleep(settle)
    sent = time.monotonic()
    driver.send_signal(getattr(signal, signame))
    code = driver.wait()
    took = time.monotonic() - sent
    left = _group(driver.pid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return code, took, len(left)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="smoke")
    p.add_argument("--signal", default="SIGTERM", choices=["SIGTERM", "SIGHUP", "SIGINT"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--settle", type=float, default=1.0, help="seconds after the first epoch before the signal")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to run_search.py")
    args = p.parse_args(argv)
    extra = [a for kv in args.set for a in ("--set", kv)]
    for i in range(args.repeats):
        folder = Path(tempfile.mkdtemp(prefix="stop_time_"))
        try:
            code, took, left = stop_once(folder, args.workload, args.signal, extra, args.settle)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"{args.workload} {args.signal} #{i + 1}: exit {code}, {took:.1f} s after the signal; "
              f"{left} process(es) of its group left", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

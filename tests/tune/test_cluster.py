"""A search on a Ray cluster of two nodes, the second one a simulated other machine: a `ray start
--address` node in its own mount namespace (`unshare -m`), where a tmpfs hides a folder the
driver's machine has. The search refuses storage that node cannot see, naming the node; with
shared storage, trials on that node are tracked in full though it cannot see the tracking
database, because the driver writes MLflow."""
from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from helpers import (RAY, command_line, free_port, group_members, ray_env, run_search, search_runs, start_search,
                     stop_group)

from tune import spaces as sp

SMOKE_EPOCHS = sp.load_workloads()["smoke"].config["epochs"]


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (root or CAP_SYS_ADMIN) to "
                                                                "simulate a second machine's file system")


def _start(cmd: list[str], ray_tmp: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ray_env(ray_tmp),
                            cwd=ray_tmp, start_new_session=True)


def _wait_for_nodes(address: str, ray_tmp: Path, n: int, logs: list[Path]) -> None:
    code = ("import ray, time, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); t = time.time()\n"
            "while len([x for x in ray.nodes() if x['Alive']]) < int(sys.argv[2]) and time.time() - t < 120:\n"
            "    time.sleep(0.5)\n"
            "sys.exit(0 if len([x for x in ray.nodes() if x['Alive']]) >= int(sys.argv[2]) else 1)")
    out = subprocess.run([sys.executable, "-c", code, address, str(n)], env=ray_env(ray_tmp), capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:] + "".join(p.read_text()[-1500:] for p in logs)


@contextmanager
def _two_nodes(ray_tmp: Path, hidden: list[Path]) -> Iterator[str]:
    with _two_node_processes(ray_tmp, hidden) as (address, _, _):
        yield address


@contextmanager
def _two_node_processes(ray_tmp: Path, hidden: list[Path]) -> Iterator[tuple[str, subprocess.Popen, subprocess.Popen]]:
    """A head node with no CPUs (so every trial runs on the second node) and a second node with
    2 CPUs that sees an empty tmpfs at each of `hidden`."""
    port = free_port()
    head = _start([str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                   "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                  ray_tmp, ray_tmp / "head.log")
    node = None
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_nodes(address, ray_tmp, 1, [ray_tmp / "head.log"])
        mounts = " && ".join(["true", *(f"mount -t tmpfs none {shlex.quote(str(p))}" for p in hidden)])
        node = _start(["unshare", "-m", "--propagation", "private", "sh", "-c",
                       f"{mounts} && exec {RAY} start --address={address} --block --node-ip-address=127.0.0.1 "
                       f"--num-cpus=2 --num-gpus=0 --disable-usage-stats"], ray_tmp, ray_tmp / "node.log")
        _wait_for_nodes(address, ray_tmp, 2, [ray_tmp / "head.log", ray_tmp / "node.log"])
        yield address, head, node
    finally:
        if node is not None:
            stop_group(node)
        stop_group(head)
    assert not group_members(head.pid)


def _search(cwd: Path, ray_tmp: Path, address: str, *extra: str) -> subprocess.CompletedProcess:
    return run_search("--space", "ablation_capacity", "--workload", "smoke", "--address", address, *extra, cwd=cwd,
                      env=ray_env(ray_tmp))


def _assert_tracked(uri: str, experiment: str) -> None:
    """One finished parent, one finished child per grid value with its config params, its whole
    per-epoch history, test metrics, config.yaml and metrics.json."""
    client, _, parents, children = search_runs(uri, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.params["weight_net"] for r in children) == sorted(["128", "64", "64-64", "256"])
    for run in children:  # every trial ran on the second node (the head has no CPU)
        assert run.info.status == "FINISHED" and "test_clean_acc" in run.data.metrics
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_pgd_acc"))
        assert steps == list(range(1, SMOKE_EPOCHS + 1))  # each epoch once, counted from 1
        assert {"config.yaml", "metrics.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
@needs_unshare
def test_storage_a_node_cannot_see_is_refused_naming_the_node(tmp_path, ray_tmp):
    storage = tmp_path / "not_shared"
    storage.mkdir()
    with _two_nodes(ray_tmp, hidden=[storage]) as address:
        out = _search(tmp_path, ray_tmp, address, "--storage-path", str(storage), "--state-dir",
                      str(tmp_path / "state"))
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(rf"error: --storage-path {re.escape(str(storage))}: node \S+ \([0-9.]+, Ray node id [0-9a-f]{{12}}\)",
                     out.stderr), out.stderr[-2000:]
    assert "does not see what the driver wrote there" in out.stderr and "s3://BUCKET/PATH" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(storage.glob(".storage-check/*"))  # the markers are cleaned up


@pytest.mark.slow
@needs_unshare
def test_trials_on_a_node_that_cannot_see_the_drivers_files_are_tracked_in_full(tmp_path, ray_tmp):
    """The driver's working folder (its default mlruns.db, its state folders) is hidden from the
    node where every trial runs; trials' files go to a shared folder, given as a path and as a
    file:// URI; tracking is the default SQLite file, then a PostgreSQL-backed tracking server."""
    from test_tracking_server import Server, server_place

    work, shared = tmp_path / "work", tmp_path / "shared"
    work.mkdir()
    shared.mkdir()
    with _two_nodes(ray_tmp, hidden=[work]) as address:
        out = _search(work, ray_tmp, address, "--experiment", "by_path", "--storage-path", str(shared),
                      "--state-dir", str(work / "state"))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "(shared by all 2 nodes)" in out.stdout and f"search state: {work / 'state'}" in out.stdout
        assert (work / "state" / "optuna.db").is_file() and (work / "state" / "best_config.yaml").is_file()
        assert list((shared / "by_path").glob("trial_*/checkpoint_*"))  # the trials' checkpoints, shared
        _assert_tracked(f"sqlite:///{work / 'mlruns.db'}", "by_path")

        out = _search(work, ray_tmp, address, "--experiment", "by_uri", "--storage-path", shared.as_uri())
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"search state: {work / 'ray_results' / 'by_uri'}" in out.stdout  # a URI: state stays local
        _assert_tracked(f"sqlite:///{work / 'mlruns.db'}", "by_uri")

        top, (port, db_port) = server_place()
        server = Server(top / "store", port, db_port)
        try:
            server.wait_for("Ctrl-C stops both.")
            uri = f"http://127.0.0.1:{port}"
            out = _search(work, ray_tmp, address, "--experiment", "by_server", "--storage-path", str(shared),
                          "--state-dir", str(work / "state_server"), "--tracking-uri", uri)
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            _assert_tracked(uri, "by_server")
        finally:
            server.proc.send_signal(signal.SIGINT)
            assert server.finish() == 0, "".join(server.output)
            shutil.rmtree(top, ignore_errors=True)


def _daemons(group: int) -> set[int]:
    """The Ray daemons (GCS, raylet) among a node's processes."""
    return {pid for pid in group_members(group)
            if any(daemon in command_line(pid) for daemon in (b"gcs_server", b"raylet"))}


@pytest.mark.slow
@needs_unshare
def test_resuming_after_a_killed_driver_spares_the_cluster(tmp_path, ray_tmp):
    """A driver joined to the cluster is SIGKILLed mid-search; --resume stops what that driver
    left behind, never the head's or the other node's Ray daemons, and finishes the search."""
    import os

    from helpers import running_epochs

    db = tmp_path / "mlruns.db"
    with _two_node_processes(ray_tmp, hidden=[]) as (address, head, node):
        daemons = _daemons(head.pid) | _daemons(node.pid)
        assert len(daemons) >= 3  # the head's GCS and raylet, the node's raylet
        argv = ["--space", "ablation_capacity", "--workload", "smoke", "--set", "epochs=4", "--max-concurrent", "1",
                "--address", address, "--storage-path", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{db}"]
        driver = start_search(*argv, cwd=tmp_path, log=tmp_path / "driver.log", env=ray_env(ray_tmp))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None and running_epochs(db) < 2:
            time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        out = run_search(*argv, "--resume", cwd=tmp_path, env=ray_env(ray_tmp))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert head.poll() is None and node.poll() is None
        assert daemons <= _daemons(head.pid) | _daemons(node.pid)  # every daemon still the same process
    children = search_runs(f"sqlite:///{db}", "ablation_capacity").children
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)

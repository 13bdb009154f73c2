"""--storage-path and --state-dir: URIs kept as Ray Tune takes them, the driver's state kept off
network file systems, and the plan's folders."""
from __future__ import annotations

from pathlib import Path

import pytest

from tune import storage
from tune.storage import StorageError, filesystem_type, state_folder, storage_location


def test_storage_locations():
    assert storage_location("s3://bucket/runs/?region=eu-west-1") == "s3://bucket/runs/?region=eu-west-1"
    assert storage_location("gs://bucket/runs/") == "gs://bucket/runs"
    assert storage_location("rr") == str(Path("rr").resolve())
    with pytest.raises(StorageError, match=r"--storage-path 'ftp://host/x': unknown scheme 'ftp'; allowed: a "
                                           r"folder, or a URI with one of file, s3, gs"):
        storage_location("ftp://host/x")
    assert storage.join("s3://b/p", "exp") == "s3://b/p/exp" and storage.join("/data/rr", "exp") == "/data/rr/exp"


def test_the_file_system_type_comes_from_the_mount_table(tmp_path):
    kinds = {line.split()[1]: line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()}
    assert filesystem_type("/") == kinds["/"]
    assert filesystem_type(tmp_path / "not" / "yet") == filesystem_type(tmp_path)  # the nearest existing folder


def test_the_state_folder_stays_off_network_storage(tmp_path, monkeypatch):
    local = str(tmp_path / "rr")
    assert state_folder(local, "exp", None) == tmp_path / "rr" / "exp"  # one machine: everything in one place
    assert state_folder("s3://b/rr", "exp", None) == Path("ray_results").resolve() / "exp"
    assert state_folder(local, "exp", str(tmp_path / "st")) == tmp_path / "st"
    monkeypatch.setattr(storage, "filesystem_type", lambda path: "nfs4")
    assert state_folder(local, "exp", None) == Path("ray_results").resolve() / "exp"
    with pytest.raises(StorageError, match=r"--state-dir '/mnt/x' is on a network file system \(nfs4\): the Optuna "
                                           r"study is SQLite, which needs a local disk"):
        state_folder(local, "exp", "/mnt/x")


def test_the_plan_keeps_trials_and_driver_state_apart(tmp_path):
    from tune.plan import Plan
    from tune.run_search import parse_options

    options, _ = parse_options(["--space", "ablation_capacity", "--storage-path", "s3://bucket/rr",
                                "--state-dir", str(tmp_path / "state")])
    plan = Plan.build(options)
    assert plan.storage_location == "s3://bucket/rr" and plan.storage is None
    assert plan.experiment_path == "s3://bucket/rr/ablation_capacity" and plan.state_dir == tmp_path / "state"
    text = plan.describe()
    assert "experiment   ablation_capacity -> s3://bucket/rr/ablation_capacity" in text
    assert f"state        {tmp_path / 'state'} (Optuna study" in text


def test_a_single_node_needs_no_storage_check(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "NodeID": "a" * 56}, {"Alive": False, "NodeID": "b"}])
    assert storage.check_shared_storage("/nowhere/at/all") == 1  # nothing written, nothing asked of Ray


def test_bad_storage_uri_and_silent_cluster_address_stop_before_ray(tmp_path, capsys, monkeypatch):
    """Each is one clear error line and exit 2, before Ray starts and before anything is written."""
    from helpers import free_port

    from tune import plan as plan_module
    from tune.run_search import main

    monkeypatch.chdir(tmp_path)
    smoke = ["--space", "ablation_capacity", "--workload", "smoke"]
    assert main([*smoke, "--storage-path", "ftp://host/rr"]) == 2
    assert "error: --storage-path 'ftp://host/rr': unknown scheme 'ftp'" in capsys.readouterr().err
    port = free_port()
    monkeypatch.setattr(plan_module, "ADDRESS_TIMEOUT_S", 1.0)
    assert main([*smoke, "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"error: --address 127.0.0.1:{port}: no Ray cluster answers there within 1 s" in err
    assert f"ray start --head --port {port}" in err and "Traceback" not in err
    assert main([*smoke, "--address", "head-without-port"]) == 2
    assert "expected HOST:PORT of the head node" in capsys.readouterr().err
    assert not (tmp_path / "ray_results").exists()

"""Where a search keeps its files, and the check that every node of a cluster sees the storage.

Two places: the *storage* Ray Tune writes trials' checkpoints and results to (`--storage-path`:
a local folder, a folder every node mounts at the same path, or a URI Ray Tune accepts:
`file://`, `s3://...`, `gs://...`), and the driver's *state folder* (`--state-dir`: the Optuna
study, `driver.json`, `best_config.yaml`, the Pareto files), always a local folder, since SQLite
on a network file system is unreliable. By default the state folder is the experiment's folder
in the storage when that is a local, non-network folder (one place for everything on one
machine), else `./ray_results/<experiment>`.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from tune.mounts import mount_of

URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss", "az")
# File systems whose files other machines can see (and where SQLite's locking is unreliable).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph", "lustre", "gpfs", "glusterfs",
                       "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "beegfs", "9p", "fuse.juicefs")
MARKERS = ".storage-check"


class StorageError(ValueError):
    """--storage-path or --state-dir cannot be used as asked; the message says what to use instead."""


def is_uri(text: str) -> bool:
    return "://" in text


def storage_location(text: str) -> str:
    """--storage-path as Ray Tune takes it: a URI unchanged (its scheme checked), a local folder
    made absolute."""
    if is_uri(text):
        scheme = urlsplit(text).scheme.lower()
        if scheme not in URI_SCHEMES:
            raise StorageError(f"--storage-path {text!r}: unknown scheme {scheme!r}; allowed: a folder, or a URI "
                               f"with one of {', '.join(URI_SCHEMES)}")
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if is_uri(location) else str(Path(location) / name)


def filesystem_type(path: str | Path) -> str:
    """The type of the file system holding `path` (from /proc/mounts; "" where unknown)."""
    return mount_of(path)[1]


def on_network(location: str) -> bool:
    return is_uri(location) or filesystem_type(location) in NETWORK_FILESYSTEMS


def state_folder(location: str, experiment: str, state_dir: str | None) -> Path:
    """The driver's state folder (see the module docstring)."""
    if state_dir is not None:
        folder = Path(state_dir).expanduser().resolve()
        if filesystem_type(folder) in NETWORK_FILESYSTEMS:
            raise StorageError(f"--state-dir {state_dir!r} is on a network file system "
                               f"({filesystem_type(folder)}): the Optuna study is SQLite, which needs a local disk")
        return folder
    if not on_network(location):
        return Path(location) / experiment
    return Path("ray_results").resolve() / experiment


def _filesystem(location: str):
    """(pyarrow file system, path inside it) for a storage location, local or URI."""
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), location


def _write_marker(location: str, name: str) -> None:
    fs, root = _filesystem(location)
    fs.create_dir(f"{root}/{MARKERS}", recursive=True)
    with fs.open_output_stream(f"{root}/{MARKERS}/{name}") as out:
        out.write(b"ok")


def _sees_marker(location: str, name: str) -> bool:
    import pyarrow.fs

    fs, root = _filesystem(location)
    return fs.get_file_info(f"{root}/{MARKERS}/{name}").type == pyarrow.fs.FileType.File


def _node_probe(location: str, driver_marker: str, node_marker: str) -> tuple[bool, str]:
    """On one node: does it see the driver's marker, and can it write its own?"""
    try:
        seen = _sees_marker(location, driver_marker)
        _write_marker(location, node_marker)
        return seen, ""
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which refuses the storage
        return False, f"{type(exc).__name__}: {exc}"


def check_shared_storage(location: str, timeout_s: float = 60.0) -> int:
    """On a Ray cluster of several nodes, check that every node sees `location` as the driver
    does: the driver writes a marker every node must see, and each node writes one the driver
    must see. Raises StorageError naming the first node that does not; returns the node count."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return len(nodes)
    token = uuid.uuid4().hex[:12]
    driver_marker = f"driver-{token}"
    _write_marker(location, driver_marker)
    probe = ray.remote(num_cpus=0)(_node_probe)
    try:
        for node in nodes:
            node_marker = f"node-{token}-{node['NodeID'][:12]}"
            ref = probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                location, driver_marker, node_marker)
            seen, error = ray.get(ref, timeout=timeout_s)
            where = (f"node {node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')}, "
                     f"Ray node id {node['NodeID'][:12]})")
            if error or not seen or not _sees_marker(location, node_marker):
                what = error or ("does not see what the driver wrote there" if not seen
                                 else "writes there, but the driver does not see it")
                raise StorageError(
                    f"--storage-path {location}: {where} {what}. Every node must see the same storage: mount "
                    f"one shared folder at the same path on every machine, or use a URI such as "
                    f"s3://BUCKET/PATH or gs://BUCKET/PATH (--state-dir keeps the driver's own files local)")
    finally:
        _remove_markers(location, token)
    return len(nodes)


def _remove_markers(location: str, token: str) -> None:
    try:
        fs, root = _filesystem(location)
        import pyarrow.fs

        for info in fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{MARKERS}", allow_not_found=True)):
            if token in info.base_name:
                fs.delete_file(info.path)
    except Exception:  # noqa: BLE001 - leftover markers are a few bytes; never worth failing for
        pass
    if not is_uri(location):
        try:
            os.rmdir(Path(location) / MARKERS)
        except OSError:
            pass


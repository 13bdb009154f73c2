"""Which mounted file system holds a path: its mount point and type, read from /proc/mounts.
`storage.py` asks whether the storage is a network file system; `disk_full.py` names the file
system that filled up."""
from __future__ import annotations

from pathlib import Path


def mount_of(path: str | Path) -> tuple[str, str]:
    """(mount point, file system type) of the file system holding `path` (its nearest existing
    folder), from /proc/mounts; ("", "") where unknown."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    best, kind = "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "", ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return best, kind

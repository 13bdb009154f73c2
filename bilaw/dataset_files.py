"""Readers for the on-disk dataset formats: IDX (MNIST, Fashion-MNIST; plain or gzipped) and the
pickled CIFAR batches. Our own readers rather than torchvision's dataset classes: those check
every file's MD5, which rejects any copy that is not byte-identical to the official archives
(e.g. the small files the tests write). A CIFAR pickle is unpickled with an allow-list, so a
file can build arrays and nothing else."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (plain or .gz), the format of MNIST and Fashion-MNIST.

    Header: two zero bytes, a type code, the number of dims, then each dim as a big-endian
    uint32 (so images have magic 2051 = 0x803, labels 2049 = 0x801).
    """
    path = Path(path)
    with _open_maybe_gz(path) as f:
        raw = bytearray(f.read())  # writable, so torch.from_numpy does not warn
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {bytes(raw[:4])!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays: a pickle can run any code, a CIFAR batch needs
    nothing else, so a tampered file fails instead of executing."""

    _ALLOWED = {
        ("_codecs", "encode"),  # protocol-2 pickles rebuild bytes with it
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike[str], label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR batch: uint8 images (N, 3, 32, 32) and int64 labels (N,).

    Each row of `data` is 1024 red, then 1024 green, then 1024 blue bytes, row-major, so a
    reshape gives CHW directly. Keys may be bytes (the official files) or str.
    """
    path = Path(path)
    with open(path, "rb") as f:
        entry = _CifarUnpickler(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise ValueError(f"{path}: needs keys 'data' and {label_key!r}, has {sorted(entry)}")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape} are not CIFAR batches")
    return data.reshape(-1, 3, 32, 32), labels


# ----- how the files are laid out on disk ---------------------------------------------------------
IDX_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")



@dataclass(frozen=True)
class DiskLayout:
    """How a downloadable dataset sits on disk: torchvision's class name, its folder under the
    data root (also where torchvision puts it), and the files expected there (for error texts)."""

    torchvision_class: str
    folder: str
    expected: str


IDX_EXPECTED = ", ".join(IDX_STEMS.values()) + " (plain or .gz)"


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in `folder` (plain preferred over .gz), or None if any is missing."""
    found = {}
    for key, stem in IDX_STEMS.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def find_named_files(folder: Path, names: Sequence[str]) -> dict[str, Path] | None:
    paths = {name: folder / name for name in names}
    return paths if all(p.is_file() for p in paths.values()) else None

"""Readers for the on-disk dataset formats: IDX (MNIST, Fashion-MNIST; plain or gzipped) and the
pickled CIFAR batches. Our own readers rather than torchvision's dataset classes: those check
every file's MD5, which rejects any copy that is not byte-identical to the official archives
(e.g. the small files the tests write). A CIFAR pickle is unpickled with an allow-list, so a
file can build arrays and nothing else."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bilaw.file_errors import DamagedFileError, check_file, one_line, read_bytes

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# What a reader says to do about a damaged dataset file; the loaders of bilaw/data/datasets.py replace it
# with the dataset's own advice (where its files come from).
REPLACE_FILE = "replace it with an intact copy (delete it and run again to download the dataset)"


def _idx_bytes(path: Path) -> bytes:
    """The IDX bytes of `path`, gunzipped if it ends in .gz; a damaged file is a DamagedFileError."""
    raw = read_bytes(path, REPLACE_FILE)
    if path.suffix != ".gz":
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile, a cut-short stream, a bad CRC
        raise DamagedFileError(path, f"is not a readable gzip file, damaged or cut short ({one_line(exc)})",
                               REPLACE_FILE) from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (plain or .gz), the format of MNIST and Fashion-MNIST.

    Header: two zero bytes, a type code, the number of dims, then each dim as a big-endian
    uint32 (so images have magic 2051 = 0x803, labels 2049 = 0x801). A file that is missing,
    empty, not IDX or cut short is a `DamagedFileError` (a ValueError) naming it.
    """
    path = Path(path)
    raw = bytearray(_idx_bytes(path))  # writable, so torch.from_numpy does not warn
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DamagedFileError(path, f"is not an IDX file (bad magic number {bytes(raw[:4])!r})", REPLACE_FILE)
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DamagedFileError(path, f"is cut short: its header needs {header} bytes, the file holds {len(raw)}",
                               REPLACE_FILE)
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DamagedFileError(
            path, f"header says shape {shape} ({expected} bytes) but the file holds {len(raw) - header} bytes of "
                  f"data (cut short or damaged)", REPLACE_FILE)
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


class _Refused(pickle.UnpicklingError):
    """A CIFAR pickle asked for something other than numpy arrays."""


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
            raise _Refused(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike[str], label_key: str = "labels",
                     num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR batch: uint8 images (N, 3, 32, 32) and int64 labels (N,), each in
    [0, num_classes) when that is given.

    Each row of `data` is 1024 red, then 1024 green, then 1024 blue bytes, row-major, so a
    reshape gives CHW directly. Keys may be bytes (the official files) or str. A file that is
    missing, damaged or not a CIFAR batch is a `DamagedFileError` (a ValueError) naming it.
    """
    path = check_file(path, REPLACE_FILE)
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except _Refused as exc:
        raise DamagedFileError(path, f"is not a CIFAR batch: {exc}", REPLACE_FILE) from None
    except MemoryError:
        raise
    except Exception as exc:  # a damaged pickle fails in any of pickle's or numpy's errors
        raise DamagedFileError(path, f"is not a readable pickled CIFAR batch, damaged or cut short "
                                     f"({one_line(exc)})", REPLACE_FILE) from None
    if not isinstance(entry, dict):
        raise DamagedFileError(path, f"is not a CIFAR batch: expected a pickled dict, got {type(entry).__name__}",
                               REPLACE_FILE)
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise DamagedFileError(path, f"is not a CIFAR batch: needs keys 'data' and {label_key!r}, has "
                                     f"{sorted(map(str, entry))}", REPLACE_FILE)
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DamagedFileError(path, f"is not a CIFAR batch: its data or labels are not arrays of numbers "
                                     f"({one_line(exc)})", REPLACE_FILE) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or len(data) != len(labels):
        raise DamagedFileError(path, f"is not a CIFAR batch: data {data.shape} / labels {labels.shape} (expected "
                                     f"(N, 3072) images and N labels)", REPLACE_FILE)
    if num_classes is not None:
        check_labels(path, labels, num_classes)
    return data.reshape(-1, 3, 32, 32), labels


def check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    """Every label of the file `path` in [0, num_classes), else a DamagedFileError naming one."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DamagedFileError(path, f"holds {bad.size} of {labels.size} labels outside [0, {num_classes}) (e.g. "
                                     f"{int(bad[0])}): not this dataset's labels", REPLACE_FILE)


IDX_IMAGE_SHAPE = (28, 28)  # MNIST and Fashion-MNIST


def read_idx_dataset(files: dict[str, Path], num_classes: int) -> dict[str, np.ndarray]:
    """The four IDX arrays of an MNIST-like dataset (keys of `IDX_STEMS`), checked against each
    other: per split, N >= 1 uint8 images of 28x28 and N uint8 labels in [0, num_classes)."""
    arrays = {key: read_idx(path) for key, path in files.items()}
    for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
        x, y = arrays[x_key], arrays[y_key]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IDX_IMAGE_SHAPE or not len(x):
            raise DamagedFileError(files[x_key], f"holds {x.dtype} data of shape {x.shape}, not this dataset's "
                                                 f"images (uint8, shape (N, 28, 28))", REPLACE_FILE)
        if y.dtype != np.uint8 or y.ndim != 1:
            raise DamagedFileError(files[y_key], f"holds {y.dtype} data of shape {y.shape}, not this dataset's "
                                                 f"labels (uint8, shape (N,))", REPLACE_FILE)
        if len(y) != len(x):
            raise DamagedFileError(files[y_key], f"holds {len(y)} labels for the {len(x)} images of "
                                                 f"{files[x_key].name}: the two files do not belong together",
                                   REPLACE_FILE)
        check_labels(files[y_key], y, num_classes)
    return arrays


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
    """The four IDX files in `folder` (plain preferred over .gz), or None if any is missing. An
    entry that is there but is no file (a folder) counts as found: the reader then says so."""
    found = {}
    for key, stem in IDX_STEMS.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.exists():
                found[key] = candidate
                break
        else:
            return None
    return found


def find_named_files(folder: Path, names: Sequence[str]) -> dict[str, Path] | None:
    """The files `names` in `folder`, or None if any is missing. Entries that are there but are
    no files (folders) count as found when at least one of them is a file, so the reader says
    what is wrong; a folder holding only sub-folders of those names (CIFAR-100's `train` and
    `test` are common names) is not the dataset."""
    paths = {name: folder / name for name in names}
    found = all(p.exists() for p in paths.values()) and any(p.is_file() for p in paths.values())
    return paths if found else None

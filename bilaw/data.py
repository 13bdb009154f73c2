"""Datasets, splits, label noise and on-device batching.

Every dataset is a short name in `DATASETS`; its loader returns a `RawDataset` (float32 images in
[0, 1], NCHW, int64 labels). `load_data` turns one into a `DataBundle`: the training set split
into train / meta-validation / hold-out validation (class-stratified, fixed by the run seed),
optional symmetric label noise on the train part only, everything moved to the device once.
Batches are index tensors on the device (`batch_indices`, `CyclingBatches`) and CIFAR
augmentation runs on the whole batch on the device (`augment_crop_flip`), so no DataLoader and no
per-sample Python work sits in the training loop.

Files on disk are read by our own readers (IDX for MNIST / Fashion-MNIST, the pickled batches for
CIFAR), not by torchvision's dataset classes: those check every file's MD5, which rejects any copy
that is not byte-identical to the official archives (e.g. the small files the tests write).
torchvision is used only to download missing files.
"""
from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bilaw.registry import Registry

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DEBIAN_FASHION_MNIST_DIR",
    "CyclingBatches",
    "DataBundle",
    "MissingDatasetError",
    "RawDataset",
    "SplitIndices",
    "apply_label_noise",
    "augment_crop_flip",
    "batch_indices",
    "default_data_dir",
    "download_with_torchvision",
    "list_datasets",
    "load_data",
    "read_cifar_batch",
    "read_idx",
    "resolve_data_dir",
    "split_indices",
]

DATA_DIR_ENV = "BILAW_DATA_DIR"
# Debian/Ubuntu package `dataset-fashion-mnist` installs the four gzipped IDX files here.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Seconds a download may wait on a socket, so a blocked network fails instead of hanging.
DOWNLOAD_TIMEOUT_S = 30.0
# The digits test split is fixed (not the run seed) so every run is scored on the same images.
DIGITS_TEST_SIZE = 360
DIGITS_TEST_SEED = 0

DATASETS: Registry[Callable[..., "RawDataset"]] = Registry("dataset")


class MissingDatasetError(FileNotFoundError):
    """A dataset's files are not on disk and could not be downloaded."""


@dataclass
class RawDataset:
    """A dataset as loaded from disk: float32 NCHW images in [0, 1] and int64 labels (CPU)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: bool = False  # True: train with random crop + horizontal flip (the CIFARs)


@dataclass
class SplitIndices:
    """Disjoint indices into a training set: what is trained on and the two validation sets."""

    train: torch.Tensor
    meta_val: torch.Tensor
    holdout: torch.Tensor


@dataclass
class DataBundle:
    """Everything a run needs, already on its device.

    `noisy_idx` indexes the bundle's train tensors (the samples whose label was corrupted) and
    `y_train_clean` holds their original labels, for analyses of what the weighting learns.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_meta: torch.Tensor
    y_meta: torch.Tensor
    x_holdout: torch.Tensor
    y_holdout: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    augment: bool
    noisy_idx: torch.Tensor
    y_train_clean: torch.Tensor


def list_datasets() -> list[str]:
    """The registered dataset names."""
    return DATASETS.names()


# --------------------------------------------------------------------------------------------
# Where the files live
# --------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """The per-user cache folder: $XDG_CACHE_HOME/bilaw/data, else ~/.cache/bilaw/data."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bilaw" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: the argument, else $BILAW_DATA_DIR, else the per-user cache folder."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return default_data_dir()


# --------------------------------------------------------------------------------------------
# Readers for the on-disk formats
# --------------------------------------------------------------------------------------------

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


def _to_images(x: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,C,H,W) -> float32 (N,C,H,W) in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t.to(torch.float32).div_(255.0)


def _to_labels(y: np.ndarray, num_classes: int, source: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(y, dtype=np.int64).copy())
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"{source}: labels outside [0, {num_classes})")
    return t


# --------------------------------------------------------------------------------------------
# Finding files, downloading, and the one error when neither works
# --------------------------------------------------------------------------------------------

_IDX_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR100_FILES = ("train", "test")



@dataclass(frozen=True)
class DiskLayout:
    """How a downloadable dataset sits on disk: torchvision's class name, its folder under the
    data root (also where torchvision puts it), and the files expected there (for error texts)."""

    torchvision_class: str
    folder: str
    expected: str


_IDX_EXPECTED = ", ".join(_IDX_STEMS.values()) + " (plain or .gz)"


def _disk(dataset: str) -> DiskLayout:
    return DATASETS.facts(dataset)["disk"]


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in `folder` (plain preferred over .gz), or None if any is missing."""
    found = {}
    for key, stem in _IDX_STEMS.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _find_named_files(folder: Path, names: Sequence[str]) -> dict[str, Path] | None:
    paths = {name: folder / name for name in names}
    return paths if all(p.is_file() for p in paths.values()) else None


def download_with_torchvision(dataset: str, root: Path) -> None:
    """Download `dataset` into `root` in torchvision's layout; raises on any failure.

    A socket timeout is set for the duration so a firewalled network fails in seconds.
    """
    import torchvision.datasets as tvd

    cls = getattr(tvd, _disk(dataset).torchvision_class)
    root.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        cls(str(root), train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (torchvision's download errors span several)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}"[:400]


def _missing_message(dataset: str, tried: Sequence[Path], download_error: str) -> str:
    expected = _disk(dataset).expected
    lines = [
        f"dataset {dataset!r} is not on disk and could not be downloaded.",
        "Looked for its files in:",
        *[f"  {p}" for p in tried],
        f"Expected files: {expected}.",
        f"Download with torchvision failed: {download_error}",
        "To fix it, one of:",
        f"  - copy the files to a folder and pass --data-dir DIR (Python: data_dir=DIR, or set "
        f"{DATA_DIR_ENV}=DIR); {dataset} is looked for in DIR/{_disk(dataset).folder} and in DIR itself",
    ]
    if dataset == "fashion_mnist":
        lines.append(
            f"  - on Debian/Ubuntu: apt-get install dataset-fashion-mnist "
            f"(installs the files in {DEBIAN_FASHION_MNIST_DIR})"
        )
    lines.append("  - run offline with dataset=digits (scikit-learn's bundled 8x8 digits)")
    return "\n".join(lines)


def _locate(
    dataset: str,
    data_dir: str | os.PathLike[str] | None,
    find: Callable[[Path], dict[str, Path] | None],
    extra_folders: Sequence[Path] = (),
) -> dict[str, Path]:
    """Find the dataset's files under the data root (or `extra_folders`), downloading only when
    none are found; raise `MissingDatasetError` when that fails too."""
    root = resolve_data_dir(data_dir)
    folders = [root / _disk(dataset).folder, root, *extra_folders]
    for folder in folders:
        files = find(folder)
        if files is not None:
            return files
    try:
        download_with_torchvision(dataset, root)
        problem = "it finished but the files are still not there"
    except Exception as exc:  # any network / filesystem failure: summarised, never a traceback
        problem = _one_line(exc)
    for folder in folders:
        files = find(folder)
        if files is not None:
            return files
    raise MissingDatasetError(_missing_message(dataset, folders, problem))


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _load_idx_dataset(name: str, data_dir, extra_folders: Sequence[Path] = ()) -> RawDataset:
    files = _locate(name, data_dir, _find_idx_files, extra_folders)
    x_train, x_test = read_idx(files["x_train"]), read_idx(files["x_test"])
    y_train, y_test = read_idx(files["y_train"]), read_idx(files["y_test"])
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{name} {split}: images {x.shape} and labels {y.shape} do not match")
    return RawDataset(
        name=name,
        x_train=_to_images(x_train),
        y_train=_to_labels(y_train, 10, str(files["y_train"])),
        x_test=_to_images(x_test),
        y_test=_to_labels(y_test, 10, str(files["y_test"])),
        num_classes=10,
    )


# Facts of each dataset: `eps`, the paper's budget per norm (MNIST-like: l-inf 0.1, l-2 0.3;
# CIFAR: l-inf 0.031, l-2 0.5); `val_size`, the size of each of the two validation sets; `disk`.
PAPER_VAL_SIZE = 1000
_MNIST_EPS = {"linf": 0.1, "l2": 0.3}
_CIFAR_EPS = {"linf": 0.031, "l2": 0.5}


@DATASETS.register("mnist", eps=_MNIST_EPS, val_size=PAPER_VAL_SIZE,
                   disk=DiskLayout("MNIST", "MNIST/raw", _IDX_EXPECTED))
def load_mnist(data_dir: str | os.PathLike[str] | None = None) -> RawDataset:
    """MNIST (60k/10k, 1x28x28) from IDX files in <root>/MNIST/raw or <root>."""
    return _load_idx_dataset("mnist", data_dir)


@DATASETS.register("fashion_mnist", eps=_MNIST_EPS, val_size=PAPER_VAL_SIZE,
                   disk=DiskLayout("FashionMNIST", "FashionMNIST/raw", _IDX_EXPECTED))
def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> RawDataset:
    """Fashion-MNIST (60k/10k, 1x28x28) from <root>/FashionMNIST/raw, <root>, or Debian's copy."""
    return _load_idx_dataset("fashion_mnist", data_dir, [DEBIAN_FASHION_MNIST_DIR])


def _load_cifar(name: str, data_dir, train_files: Sequence[str], test_file: str,
                label_key: str, num_classes: int) -> RawDataset:
    files = _locate(name, data_dir, lambda d: _find_named_files(d, [*train_files, test_file]))
    parts = [read_cifar_batch(files[f], label_key) for f in train_files]
    x_test, y_test = read_cifar_batch(files[test_file], label_key)
    return RawDataset(
        name=name,
        x_train=_to_images(np.concatenate([x for x, _ in parts])),
        y_train=_to_labels(np.concatenate([y for _, y in parts]), num_classes, name),
        x_test=_to_images(x_test),
        y_test=_to_labels(y_test, num_classes, name),
        num_classes=num_classes,
        augment=True,
    )


@DATASETS.register("cifar10", eps=_CIFAR_EPS, val_size=PAPER_VAL_SIZE,
                   disk=DiskLayout("CIFAR10", "cifar-10-batches-py", ", ".join(_CIFAR10_FILES)))
def load_cifar10(data_dir: str | os.PathLike[str] | None = None) -> RawDataset:
    """CIFAR-10 (50k/10k, 3x32x32) from <root>/cifar-10-batches-py or <root>."""
    return _load_cifar("cifar10", data_dir, _CIFAR10_FILES[:-1], "test_batch", "labels", 10)


@DATASETS.register("cifar100", eps=_CIFAR_EPS, val_size=PAPER_VAL_SIZE,
                   disk=DiskLayout("CIFAR100", "cifar-100-python", ", ".join(_CIFAR100_FILES)))
def load_cifar100(data_dir: str | os.PathLike[str] | None = None) -> RawDataset:
    """CIFAR-100 (50k/10k, 3x32x32, the 100 fine labels) from <root>/cifar-100-python or <root>."""
    return _load_cifar("cifar100", data_dir, ["train"], "test", "fine_labels", 100)


# digits (8x8, 17 grey levels) is not in the paper: at l-inf 0.1 an undefended FC1 keeps ~65% PGD
# accuracy, so its budget is 0.2 (l-2 1.0), where robustness has to be learnt; it has 1,437
# training images, so the paper's 1,000-image validation sets do not fit: 150 each.
@DATASETS.register("digits", eps={"linf": 0.2, "l2": 1.0}, val_size=150, disk=None)
def load_digits(data_dir: str | os.PathLike[str] | None = None) -> RawDataset:
    """scikit-learn's 1,797 real 8x8 digits (values 0..16 -> [0, 1]); no download needed.

    There is no official test split, so a stratified one of DIGITS_TEST_SIZE images is drawn
    with the fixed DIGITS_TEST_SEED: the same test set for every run. `data_dir` is ignored.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    split = split_indices(y, meta_val_size=DIGITS_TEST_SIZE, holdout_val_size=0, seed=DIGITS_TEST_SEED)
    return RawDataset(
        name="digits",
        x_train=x[split.train].contiguous(),
        y_train=y[split.train].contiguous(),
        x_test=x[split.meta_val].contiguous(),
        y_test=y[split.meta_val].contiguous(),
        num_classes=10,
    )


# --------------------------------------------------------------------------------------------
# Splits and label noise
# --------------------------------------------------------------------------------------------


def _stratified_quota(counts: list[int], total: int) -> list[int]:
    """How many to take from each class: as equal as the class sizes allow; the remainder goes
    one each to the lowest-numbered classes that still have samples left."""
    quota = [0] * len(counts)
    remaining = total
    while remaining > 0:
        open_classes = [c for c, n in enumerate(counts) if quota[c] < n]
        share = remaining // len(open_classes)
        if share == 0:
            for c in open_classes[:remaining]:
                quota[c] += 1
            break
        for c in open_classes:
            take = min(share, counts[c] - quota[c])
            quota[c] += take
            remaining -= take
    return quota


def split_indices(
    y: torch.Tensor | np.ndarray, *, meta_val_size: int, holdout_val_size: int, seed: int
) -> SplitIndices:
    """Class-stratified, disjoint train / meta-val / hold-out indices, fixed by `seed`.

    Each validation set takes an equal share of every class (e.g. 100 per class for 1000 and 10
    classes); the training part is the rest. Each class is shuffled with a generator seeded by
    `seed`: its first indices go to meta-val, the next to hold-out. Returned indices are sorted.
    """
    y = torch.as_tensor(y).reshape(-1).cpu()
    n = y.numel()
    if meta_val_size < 0 or holdout_val_size < 0:
        raise ValueError(
            f"validation sizes must be >= 0, got meta_val_size={meta_val_size}, "
            f"holdout_val_size={holdout_val_size}"
        )
    if meta_val_size + holdout_val_size >= n:
        raise ValueError(
            f"meta_val_size={meta_val_size} + holdout_val_size={holdout_val_size} must leave "
            f"training samples, but the training set has only {n}"
        )
    classes = torch.unique(y).tolist()
    members = [torch.nonzero(y == c).flatten() for c in classes]
    counts = [len(m) for m in members]
    meta_q = _stratified_quota(counts, meta_val_size)
    hold_q = _stratified_quota([n_c - q for n_c, q in zip(counts, meta_q)], holdout_val_size)
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "meta": [], "hold": []}
    for idx, mq, hq in zip(members, meta_q, hold_q):
        shuffled = idx[torch.randperm(len(idx), generator=g)]
        parts["meta"].append(shuffled[:mq])
        parts["hold"].append(shuffled[mq:mq + hq])
        parts["train"].append(shuffled[mq + hq:])
    return SplitIndices(
        train=_sorted_cat(parts["train"]),
        meta_val=_sorted_cat(parts["meta"]),
        holdout=_sorted_cat(parts["hold"]),
    )


def _sorted_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.sort(torch.cat(parts)).values if parts else torch.empty(0, dtype=torch.long)


def apply_label_noise(
    y: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric label noise: exactly round(fraction * N) random samples get a uniformly drawn
    wrong class (never their own). Returns (noisy copy of y, sorted indices that were changed).

    Drawn on the generator's device and moved to y's device.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label noise fraction must be in [0, 1), got {fraction}")
    n_noisy = int(round(fraction * y.numel()))
    if n_noisy and num_classes < 2:
        raise ValueError(f"label noise needs num_classes >= 2, got {num_classes}")
    gdev = generator.device
    idx = torch.randperm(y.numel(), generator=generator, device=gdev)[:n_noisy]
    idx = torch.sort(idx).values.to(y.device)
    # Adding 1..K-1 (mod K) reaches every other class with equal probability, never the same one.
    shift = torch.randint(1, max(num_classes, 2), (n_noisy,), generator=generator, device=gdev)
    y_noisy = y.clone()
    y_noisy[idx] = (y[idx] + shift.to(y.device)) % num_classes
    return y_noisy, idx


def _noise_generator(seed: int) -> torch.Generator:
    """A generator for label noise, independent of the split's generator for the same seed."""
    mixed = int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(mixed)


def load_data(
    dataset: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    meta_val_size: int = 1000,
    holdout_val_size: int = 1000,
    seed: int = 0,
    label_noise: float = 0.0,
    device: str | torch.device = "cpu",
    include_val_in_train: bool = False,
) -> DataBundle:
    """Load `dataset`, split it, corrupt train labels, and move everything to `device` once.

    Label noise hits only the training-only indices (never meta-val, hold-out or test), with a
    generator derived from `seed`, so the same samples are corrupted whether or not
    `include_val_in_train` is set. With `include_val_in_train=True` (the paper's baseline
    protocol) the train tensors are the whole training set, in its original order, overlapping
    the validation sets; `noisy_idx` then indexes that full set.
    """
    raw: RawDataset = DATASETS.get(dataset)(data_dir=data_dir)
    split = split_indices(
        raw.y_train, meta_val_size=meta_val_size, holdout_val_size=holdout_val_size, seed=seed
    )
    y_noisy_part, noisy_local = apply_label_noise(
        raw.y_train[split.train], label_noise, raw.num_classes, _noise_generator(seed)
    )
    if include_val_in_train:
        x_train, y_train_clean = raw.x_train, raw.y_train
        y_train = raw.y_train.clone()
        y_train[split.train] = y_noisy_part
        noisy_idx = split.train[noisy_local]
    else:
        x_train, y_train_clean = raw.x_train[split.train], raw.y_train[split.train]
        y_train, noisy_idx = y_noisy_part, noisy_local
    def to(t: torch.Tensor) -> torch.Tensor:
        return t.to(device)

    return DataBundle(
        name=raw.name,
        x_train=to(x_train),
        y_train=to(y_train),
        x_meta=to(raw.x_train[split.meta_val]),
        y_meta=to(raw.y_train[split.meta_val]),
        x_holdout=to(raw.x_train[split.holdout]),
        y_holdout=to(raw.y_train[split.holdout]),
        x_test=to(raw.x_test),
        y_test=to(raw.y_test),
        num_classes=raw.num_classes,
        input_shape=tuple(raw.x_train.shape[1:]),
        augment=raw.augment,
        noisy_idx=to(noisy_idx),
        y_train_clean=to(y_train_clean),
    )


# --------------------------------------------------------------------------------------------
# Batching and augmentation on the device
# --------------------------------------------------------------------------------------------


def _permutation(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=device)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """One epoch of index batches over range(n), as LongTensors on `device`.

    The permutation is drawn from `generator` on the generator's device and moved to `device`
    once per epoch; every index appears exactly once (unless `drop_last` drops the short tail).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = _permutation(n, generator) if shuffle else torch.arange(n)
    order = order.to(device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


class CyclingBatches:
    """An endless iterator of shuffled (x, y) batches, reshuffled on every pass (meta-val batches).

    Batches are always min(batch_size, N) long: a pass ends when fewer than that are left (the
    tail waits for a later pass, reshuffled). `state_dict()` holds the current permutation, the
    position and the generator's state, so `load_state_dict()` continues identically; give it its
    own generator, since restoring rewinds that generator.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 generator: torch.Generator) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need equally many (>0) inputs and labels, got {len(x)} and {len(y)}")
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(x))
        self.generator = generator
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def __iter__(self) -> "CyclingBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perm is None or self._pos + self.batch_size > len(self._perm):
            self._perm = _permutation(len(self.x), self.generator).to(self.x.device)
            self._pos = 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        """Permutation (CPU), position and generator state: enough to resume identically."""
        return {
            "perm": None if self._perm is None else self._perm.cpu().clone(),
            "pos": self._pos,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned (also rewinds the generator)."""
        perm = state["perm"]
        self._perm = None if perm is None else perm.to(self.x.device)
        self._pos = int(state["pos"])
        self.generator.set_state(state["generator"])


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR augmentation for a whole batch: random crop from the zero-padded image (an
    independent offset per sample) and horizontal flip with p = 0.5.

    All randomness comes from `generator`, drawn on the generator's device (CPU or x's device)
    and moved to x's device, so a given generator state always gives the same result. No Python
    loop over samples: one gather with per-sample row/column indices.
    """
    n, c, h, w = x.shape
    gdev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(x.device)
    flip = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]

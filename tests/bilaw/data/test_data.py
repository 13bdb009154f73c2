"""Tests for bilaw.data.datasets: on-disk readers, splits, label noise, batching and augmentation.

The loaders are exercised on small files written here in the real formats (IDX, pickled CIFAR
batches); downloads are replaced by a stub that fails, so nothing touches the network.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bilaw.data import datasets as data
from bilaw.registry import UnknownNameError

EXPECTED_NAMES = ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist"]


# ------------------------------------------------------------------------------------------
# helpers and fixtures
# ------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_idx_dataset(folder: Path, gz: bool, n_train: int = 50, n_test: int = 20, seed: int = 0):
    """The four MNIST-style files with random images and labels; returns what was written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: bytes,
                      protocol: int = pickle.DEFAULT_PROTOCOL, extra: dict | None = None) -> None:
    entry = {b"batch_label": b"test batch", b"data": images, label_key: [int(v) for v in labels]}
    entry.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=protocol)


def as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / np.float32(255.0))


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------


def test_registry_names_exact():
    assert data.list_datasets() == EXPECTED_NAMES
    assert data.DATASETS.names() == EXPECTED_NAMES


def test_unknown_dataset_lists_names_and_suggests():
    with pytest.raises(UnknownNameError) as info:
        data.load_data("fashion-mnist")
    msg = str(info.value)
    assert "did you mean 'fashion_mnist'" in msg
    for name in EXPECTED_NAMES:
        assert name in msg


# ------------------------------------------------------------------------------------------
# IDX: mnist / fashion_mnist
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, subdir, gz",
    [
        ("mnist", "MNIST/raw", True),
        ("mnist", "", False),
        ("fashion_mnist", "FashionMNIST/raw", False),
        ("fashion_mnist", "", True),
    ],
)
def test_idx_loader_round_trip(tmp_path, no_download, dataset, subdir, gz):
    written = write_idx_dataset(tmp_path / subdir if subdir else tmp_path, gz=gz)
    raw = data.DATASETS.get(dataset)(data_dir=tmp_path)

    assert raw.name == dataset and raw.num_classes == 10 and raw.augment is False
    assert raw.x_train.shape == (50, 1, 28, 28) and raw.x_test.shape == (20, 1, 28, 28)
    assert raw.x_train.dtype == torch.float32 and raw.y_train.dtype == torch.int64
    assert 0.0 <= float(raw.x_train.min()) and float(raw.x_train.max()) <= 1.0
    assert torch.equal(raw.x_train[:, 0], as_float(written["train-images-idx3-ubyte"]))
    assert torch.equal(raw.x_test[:, 0], as_float(written["t10k-images-idx3-ubyte"]))
    assert raw.x_train[0, 0, 3, 5] == written["train-images-idx3-ubyte"][0, 3, 5] / 255.0
    assert raw.y_train.tolist() == written["train-labels-idx1-ubyte"].tolist()
    assert raw.y_test.tolist() == written["t10k-labels-idx1-ubyte"].tolist()
    assert no_download == []  # files were there: no download attempted


def test_data_dir_from_environment(tmp_path, no_download, monkeypatch):
    written = write_idx_dataset(tmp_path / "env-root" / "MNIST" / "raw", gz=False, seed=3)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env-root"))
    raw = data.DATASETS.get("mnist")()
    assert raw.y_train.tolist() == written["train-labels-idx1-ubyte"].tolist()


def test_default_data_dir_respects_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_data_dir(None) == tmp_path / "xdg" / "bilaw" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.resolve_data_dir(None) == Path.home() / ".cache" / "bilaw" / "data"
    assert data.resolve_data_dir(tmp_path / "x") == tmp_path / "x"


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(bad_magic)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="10 bytes"):
        data.read_idx(short)


def test_download_only_when_missing_and_then_used(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-copy")
    written = {}

    def fake_download(dataset, root):  # writes the files where torchvision would
        written.update(write_idx_dataset(Path(root) / "FashionMNIST" / "raw", gz=True, seed=7))

    monkeypatch.setattr(data, "download_with_torchvision", fake_download)
    raw = data.DATASETS.get("fashion_mnist")(data_dir=tmp_path / "root")
    assert raw.y_test.tolist() == written["t10k-labels-idx1-ubyte"].tolist()


# ------------------------------------------------------------------------------------------
# CIFAR pickled batches
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_round_trip(tmp_path, no_download, protocol):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4)
        write_cifar_batch(folder / name, images, labels, b"labels", protocol,
                          extra={b"filenames": [b"a.png"] * 4})
        batches.append((images, labels))
    raw = data.DATASETS.get("cifar10")(data_dir=tmp_path)

    assert raw.augment is True and raw.num_classes == 10
    assert raw.x_train.shape == (20, 3, 32, 32) and raw.x_test.shape == (4, 3, 32, 32)
    assert raw.x_train.dtype == torch.float32 and raw.y_train.dtype == torch.int64
    first = batches[0][0][0]
    # CHW: the first 1024 bytes of a row are the red plane, row-major, then green, then blue.
    assert torch.equal(raw.x_train[0, 0], as_float(first[:1024].reshape(32, 32)))
    assert torch.equal(raw.x_train[0, 1], as_float(first[1024:2048].reshape(32, 32)))
    assert raw.x_train[0, 2, 0, 1] == first[2048 + 1] / 255.0
    all_train = np.concatenate([b[0] for b in batches[:5]]).reshape(-1, 3, 32, 32)
    assert torch.equal(raw.x_train, as_float(all_train))
    assert raw.y_train.tolist() == np.concatenate([b[1] for b in batches[:5]]).tolist()
    assert torch.equal(raw.x_test, as_float(batches[5][0].reshape(-1, 3, 32, 32)))
    assert raw.y_test.tolist() == batches[5][1].tolist()


def test_cifar100_uses_fine_labels(tmp_path, no_download):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    train_x = rng.integers(0, 256, (12, 3072), dtype=np.uint8)
    train_fine = np.arange(88, 100)
    test_x = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    test_fine = np.array([0, 99, 50, 7, 3])
    coarse = {b"coarse_labels": [1] * 12}
    write_cifar_batch(folder / "train", train_x, train_fine, b"fine_labels", extra=coarse)
    write_cifar_batch(folder / "test", test_x, test_fine, b"fine_labels",
                      extra={b"coarse_labels": [1] * 5})
    raw = data.DATASETS.get("cifar100")(data_dir=tmp_path)

    assert raw.num_classes == 100 and raw.augment is True
    assert raw.x_train.shape == (12, 3, 32, 32) and raw.x_test.shape == (5, 3, 32, 32)
    assert raw.y_train.tolist() == train_fine.tolist()
    assert raw.y_test.tolist() == test_fine.tolist()
    assert torch.equal(raw.x_test, as_float(test_x.reshape(-1, 3, 32, 32)))
    assert 0.0 <= float(raw.x_train.min()) and float(raw.x_train.max()) <= 1.0


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_reader_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Sneaky(), b"labels": []}))
    with pytest.raises(data.DamagedFileError, match="refusing to load (posix|os|nt).getcwd"):
        data.read_cifar_batch(path)


# ------------------------------------------------------------------------------------------
# digits (real data) and the missing-data error
# ------------------------------------------------------------------------------------------


def test_digits_real():
    raw = data.DATASETS.get("digits")()
    assert len(raw.x_train) + len(raw.x_test) == 1797
    assert len(raw.x_test) == data.DIGITS_TEST_SIZE == 360
    assert raw.x_train.shape[1:] == (1, 8, 8) and raw.x_test.shape[1:] == (1, 8, 8)
    assert raw.x_train.dtype == torch.float32 and raw.y_train.dtype == torch.int64
    assert float(raw.x_train.min()) == 0.0 and float(raw.x_train.max()) == 1.0
    assert raw.num_classes == 10 and set(raw.y_train.tolist()) == set(range(10))
    assert torch.bincount(raw.y_test, minlength=10).tolist() == [36] * 10  # stratified
    again = data.DATASETS.get("digits")()
    assert torch.equal(again.x_test, raw.x_test)  # the same test set every time


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_data_error(tmp_path, no_download, dataset):
    root = tmp_path / "empty-root"
    with pytest.raises(data.MissingDatasetError) as info:
        data.DATASETS.get(dataset)(data_dir=root)
    err = info.value
    msg = str(err)
    assert isinstance(err, FileNotFoundError)
    assert repr(dataset) in msg
    assert str(root) in msg and str(root / data.DATASETS.facts(dataset)["disk"].folder) in msg  # every folder tried
    assert "--data-dir" in msg and "data_dir" in msg and "BILAW_DATA_DIR" in msg
    assert "dataset=digits" in msg
    assert "URLError" in msg and "Temporary failure in name resolution" in msg  # one line
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert no_download == [(dataset, root)]
    if dataset == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in msg
        assert str(tmp_path / "no-debian-copy") in msg
    else:
        assert "dataset-fashion-mnist" not in msg


def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get on this machine: Debian's dataset-fashion-mnist is not available")
    folder = Path(data.DEBIAN_FASHION_MNIST_DIR)
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"Fashion-MNIST is missing from {folder}: run scripts/setup.sh "
            "(it runs `apt-get install -y dataset-fashion-mnist`)"
        )

    def refuse(dataset, root):
        raise AssertionError("must not download: Debian's copy is there")

    monkeypatch.setattr(data, "download_with_torchvision", refuse)
    raw = data.DATASETS.get("fashion_mnist")(data_dir=tmp_path)
    assert raw.x_train.shape == (60000, 1, 28, 28) and raw.x_test.shape == (10000, 1, 28, 28)
    assert raw.num_classes == 10
    assert torch.bincount(raw.y_train, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(raw.y_test, minlength=10).tolist() == [1000] * 10
    assert 0.0 <= float(raw.x_test.min()) and float(raw.x_test.max()) <= 1.0


# ------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------


def balanced_labels(per_class: int = 300, classes: int = 10, seed: int = 0) -> torch.Tensor:
    y = torch.arange(classes).repeat_interleave(per_class)
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_split_sizes_disjoint_stratified():
    y = balanced_labels()
    s = data.split_indices(y, meta_val_size=1000, holdout_val_size=1000, seed=0)
    assert (len(s.train), len(s.meta_val), len(s.holdout)) == (1000, 1000, 1000)
    assert s.train.dtype == s.meta_val.dtype == s.holdout.dtype == torch.int64
    union = torch.cat([s.train, s.meta_val, s.holdout])
    assert torch.equal(torch.sort(union).values, torch.arange(len(y)))  # disjoint and complete
    assert torch.bincount(y[s.meta_val], minlength=10).tolist() == [100] * 10
    assert torch.bincount(y[s.holdout], minlength=10).tolist() == [100] * 10


def test_split_deterministic_by_seed():
    y = balanced_labels()
    a = data.split_indices(y, meta_val_size=200, holdout_val_size=300, seed=5)
    b = data.split_indices(y, meta_val_size=200, holdout_val_size=300, seed=5)
    c = data.split_indices(y, meta_val_size=200, holdout_val_size=300, seed=6)
    assert torch.equal(a.meta_val, b.meta_val) and torch.equal(a.holdout, b.holdout)
    assert torch.equal(a.train, b.train)
    assert not torch.equal(a.meta_val, c.meta_val) and not torch.equal(a.holdout, c.holdout)


def test_split_remainder_and_small_classes():
    y = balanced_labels()
    s = data.split_indices(y, meta_val_size=1003, holdout_val_size=7, seed=0)
    assert torch.bincount(y[s.meta_val], minlength=10).tolist() == [101] * 3 + [100] * 7
    assert torch.bincount(y[s.holdout], minlength=10).tolist() == [1] * 7 + [0] * 3
    # a class with only 5 samples gives all it has; the others share the rest equally
    y_small = torch.cat([torch.zeros(5, dtype=torch.long), torch.arange(1, 4).repeat_interleave(100)])
    s = data.split_indices(y_small, meta_val_size=65, holdout_val_size=0, seed=0)
    assert torch.bincount(y_small[s.meta_val], minlength=4).tolist() == [5, 20, 20, 20]


@pytest.mark.parametrize("meta, hold, pattern", [
    (-1, 10, "meta_val_size=-1"),
    (10, -2, "holdout_val_size=-2"),
    (2000, 1000, "meta_val_size=2000 .*holdout_val_size=1000.* 3000"),
])
def test_split_rejects_bad_sizes(meta, hold, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.split_indices(balanced_labels(), meta_val_size=meta, holdout_val_size=hold, seed=0)


# ------------------------------------------------------------------------------------------
# label noise
# ------------------------------------------------------------------------------------------


def test_label_noise_exact_and_always_wrong():
    y = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(0))
    y_noisy, idx = data.apply_label_noise(y, 0.3, 10, torch.Generator().manual_seed(1))
    assert len(idx) == 300 and len(torch.unique(idx)) == 300
    assert bool((y_noisy[idx] != y[idx]).all())
    clean = torch.ones(len(y), dtype=torch.bool)
    clean[idx] = False
    assert torch.equal(y_noisy[clean], y[clean])
    assert int((y_noisy != y).sum()) == 300
    assert y_noisy.min() >= 0 and y_noisy.max() < 10
    assert torch.equal(y, torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(0)))


def test_label_noise_uniform_over_wrong_classes_and_bounds():
    y = torch.zeros(20000, dtype=torch.long)
    y_noisy, idx = data.apply_label_noise(y, 0.5, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(y_noisy[idx], minlength=10).tolist()
    assert counts[0] == 0 and all(900 < c < 1350 for c in counts[1:])  # ~1111 each
    y0, idx0 = data.apply_label_noise(y, 0.0, 10, torch.Generator())
    assert len(idx0) == 0 and idx0.dtype == torch.int64 and torch.equal(y0, y)
    assert len(data.apply_label_noise(y[:7], 0.25, 10, torch.Generator())[1]) == round(0.25 * 7)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            data.apply_label_noise(y, bad, 10, torch.Generator())


# ------------------------------------------------------------------------------------------
# load_data
# ------------------------------------------------------------------------------------------


def test_load_data_digits_with_noise_keeps_validation_and_test_clean():
    raw = data.DATASETS.get("digits")()
    b = data.load_data("digits", meta_val_size=100, holdout_val_size=100, seed=3, label_noise=0.4)
    split = data.split_indices(raw.y_train, meta_val_size=100, holdout_val_size=100, seed=3)

    assert b.name == "digits" and b.num_classes == 10 and b.input_shape == (1, 8, 8)
    assert b.augment is False and b.x_train.device.type == "cpu"
    assert (len(b.x_train), len(b.x_meta), len(b.x_holdout)) == (1237, 100, 100)
    assert torch.equal(b.x_train, raw.x_train[split.train])
    assert torch.equal(b.y_train_clean, raw.y_train[split.train])
    assert len(b.noisy_idx) == round(0.4 * 1237)
    assert bool((b.y_train[b.noisy_idx] != b.y_train_clean[b.noisy_idx]).all())
    assert int((b.y_train != b.y_train_clean).sum()) == len(b.noisy_idx)
    # validation and test sets: the original (clean) labels and images
    assert torch.equal(b.x_meta, raw.x_train[split.meta_val])
    assert torch.equal(b.y_meta, raw.y_train[split.meta_val])
    assert torch.equal(b.y_holdout, raw.y_train[split.holdout])
    assert torch.equal(b.x_test, raw.x_test) and torch.equal(b.y_test, raw.y_test)


def test_load_data_include_val_in_train_same_noise():
    kw = dict(meta_val_size=100, holdout_val_size=100, seed=1, label_noise=0.2)
    plain = data.load_data("digits", **kw)
    full = data.load_data("digits", include_val_in_train=True, **kw)
    raw = data.DATASETS.get("digits")()

    assert len(full.x_train) == len(raw.x_train) == 1437
    assert torch.equal(full.x_train, raw.x_train) and torch.equal(full.y_train_clean, raw.y_train)
    assert torch.equal(full.x_meta, plain.x_meta) and torch.equal(full.y_holdout, plain.y_holdout)
    # the same samples get the same wrong labels; validation positions stay clean
    assert len(full.noisy_idx) == len(plain.noisy_idx)
    assert torch.equal(full.x_train[full.noisy_idx], plain.x_train[plain.noisy_idx])
    assert torch.equal(full.y_train[full.noisy_idx], plain.y_train[plain.noisy_idx])
    assert int((full.y_train != full.y_train_clean).sum()) == len(full.noisy_idx)


def test_load_data_no_noise_and_seeds_differ():
    a = data.load_data("digits", meta_val_size=50, holdout_val_size=50, seed=0)
    b = data.load_data("digits", meta_val_size=50, holdout_val_size=50, seed=1)
    assert a.noisy_idx.numel() == 0 and a.noisy_idx.dtype == torch.int64
    assert torch.equal(a.y_train, a.y_train_clean)
    assert not torch.equal(a.x_meta, b.x_meta)
    assert torch.equal(a.x_test, b.x_test)  # the digits test set does not move with the seed


# ------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------


def test_batch_indices_cover_each_index_once():
    batches = list(data.batch_indices(103, 10, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert torch.equal(torch.sort(torch.cat(batches)).values, torch.arange(103))
    assert not torch.equal(torch.cat(batches), torch.arange(103))  # shuffled
    again = list(data.batch_indices(103, 10, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(p, q) for p, q in zip(batches, again))
    dropped = list(data.batch_indices(103, 10, generator=torch.Generator(), drop_last=True))
    assert [len(b) for b in dropped] == [10] * 10
    ordered = list(data.batch_indices(25, 10, shuffle=False, device="cpu"))
    assert torch.equal(torch.cat(ordered), torch.arange(25))
    assert all(b.dtype == torch.int64 for b in ordered)


def test_cycling_batches_state_round_trip():
    x = torch.arange(23, dtype=torch.float32)[:, None]
    y = torch.arange(23)
    it = data.CyclingBatches(x, y, 5, torch.Generator().manual_seed(0))
    first_pass = [next(it) for _ in range(4)]  # 20 of 23: no repeats within a pass
    seen = torch.cat([yb for _, yb in first_pass])
    assert len(torch.unique(seen)) == 20
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in first_pass)
    for _ in range(3):
        next(it)  # into the second pass
    buffer = io.BytesIO()
    torch.save(it.state_dict(), buffer)
    expected = [next(it)[1] for _ in range(12)]  # crosses more reshuffles

    resumed = data.CyclingBatches(x, y, 5, torch.Generator().manual_seed(999))
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    got = [next(resumed)[1] for _ in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_cycling_batches_batch_larger_than_data():
    it = data.CyclingBatches(torch.zeros(3, 1), torch.arange(3), 8, torch.Generator())
    xb, yb = next(it)
    assert sorted(yb.tolist()) == [0, 1, 2]


# ------------------------------------------------------------------------------------------
# augmentation
# ------------------------------------------------------------------------------------------


def all_crops_and_flips(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop of the zero-padded image, plain and mirrored, built one by one."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad)
    padded[:, pad:pad + h, pad:pad + w] = image
    out = []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = padded[:, top:top + h, left:left + w]
            out += [crop, torch.flip(crop, dims=[2])]
    return out


def test_augment_each_output_is_a_crop_or_flip_of_the_input():
    x = torch.rand(24, 3, 10, 10, generator=torch.Generator().manual_seed(0)) + 0.01  # no zeros
    out = data.augment_crop_flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.01
    kinds = set()
    for i in range(len(x)):
        candidates = all_crops_and_flips(x[i], 4)
        matches = [k for k, cand in enumerate(candidates) if torch.equal(out[i], cand)]
        assert matches, f"sample {i} is not a crop/flip of its padded input"
        kinds.add(matches[0])
    offsets = {(k // 2 // 9, k // 2 % 9) for k in kinds}  # (top, left) of each sample's crop
    assert len({t for t, _ in offsets}) > 3 and len({l for _, l in offsets}) > 3
    assert any(t != l for t, l in offsets)  # vertical and horizontal offsets drawn separately
    assert {k % 2 for k in kinds} == {0, 1}  # both flipped and unflipped occur


def test_augment_deterministic_and_range():
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = data.augment_crop_flip(x, torch.Generator().manual_seed(5))
    b = data.augment_crop_flip(x, torch.Generator().manual_seed(5))
    c = data.augment_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    flips = data.augment_crop_flip(x, torch.Generator().manual_seed(5), pad=0)
    # no padding: each sample is either itself or its mirror image
    for i in range(len(x)):
        assert torch.equal(flips[i], x[i]) or torch.equal(flips[i], torch.flip(x[i], dims=[2]))


@pytest.mark.gpu
def test_on_cuda_device():
    """Batching and augmentation keep everything on the GPU, with either generator device."""
    x = torch.rand(32, 3, 32, 32, device="cuda")
    for gen_device in ("cuda", "cpu"):
        a = data.augment_crop_flip(x, torch.Generator(device=gen_device).manual_seed(0))
        b = data.augment_crop_flip(x, torch.Generator(device=gen_device).manual_seed(0))
        assert a.device.type == "cuda" and torch.equal(a, b)
    batches = list(data.batch_indices(50, 8, generator=torch.Generator().manual_seed(0), device="cuda"))
    assert batches[0].device.type == "cuda"
    assert torch.equal(torch.sort(torch.cat(batches)).values.cpu(), torch.arange(50))
    it = data.CyclingBatches(x, torch.arange(32, device="cuda"), 8, torch.Generator().manual_seed(0))
    xb, yb = next(it)
    assert xb.device.type == "cuda" and torch.equal(xb, x[yb])
    b = data.load_data("digits", meta_val_size=50, holdout_val_size=50, label_noise=0.1, device="cuda")
    assert all(t.device.type == "cuda" for t in (b.x_train, b.y_meta, b.x_test, b.noisy_idx))

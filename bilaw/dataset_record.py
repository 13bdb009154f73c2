"""What data a run trained and was judged on, in a few fields a tracker can record: the
dataset's name and source, the size of each split, and a digest of the exact split (the train,
meta-validation and hold-out indices, and which training labels were corrupted), so two runs
with the same digest saw the same samples."""
from __future__ import annotations

import hashlib
from typing import Any

from .data import DATASETS
from .splits import split_and_corrupt


def dataset_record(dataset: str, *, data_dir: str | None, meta_val_size: int, holdout_val_size: int, seed: int,
                   label_noise: float = 0.0, include_val_in_train: bool = False) -> dict[str, Any]:
    """The record of `load_data` called with the same arguments (it reads the dataset's labels)."""
    raw = DATASETS.get(dataset)(data_dir=data_dir)
    split, _, noisy_local = split_and_corrupt(raw, meta_val_size=meta_val_size, holdout_val_size=holdout_val_size,
                                              seed=seed, label_noise=label_noise)
    digest = hashlib.sha256()
    for name, part in (("train", split.train), ("meta_val", split.meta_val), ("holdout", split.holdout),
                       ("noisy", split.train[noisy_local]), ("test", range(len(raw.y_test)))):
        digest.update(name.encode())
        digest.update(b"".join(int(i).to_bytes(8, "little") for i in part))
    return {"name": dataset, "source": str(data_dir) if data_dir else f"bilaw dataset {dataset!r} (default location)",
            "digest": digest.hexdigest()[:32],
            "train": len(raw.y_train) if include_val_in_train else len(split.train),
            "meta_val": len(split.meta_val), "holdout": len(split.holdout), "test": len(raw.y_test),
            "noisy": len(noisy_local), "train_includes_val": include_val_in_train}

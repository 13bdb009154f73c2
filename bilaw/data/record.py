"""What data a run trained and was judged on, in a few fields a tracker can record: the
dataset's name and source, the size of each split, and a digest of the exact split (the train,
meta-validation and hold-out indices, and which training labels were corrupted), so two runs
with the same digest saw the same samples. `load_data` computes it from the split it makes
(`DataBundle.record`), so whoever holds the data has its record without reading it again."""
from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from bilaw.data.splits import SplitIndices


def split_record(dataset: str, data_dir: str | os.PathLike[str] | None, split: SplitIndices, noisy_local: torch.Tensor,
                 n_train_total: int, n_test: int, include_val_in_train: bool) -> dict[str, Any]:
    """The record of a split of `dataset` (`noisy_local`: the corrupted positions in `split.train`)."""
    digest = hashlib.sha256()
    for name, part in (("train", split.train), ("meta_val", split.meta_val), ("holdout", split.holdout),
                       ("noisy", split.train[noisy_local]), ("test", range(n_test))):
        digest.update(name.encode())
        digest.update(b"".join(int(i).to_bytes(8, "little") for i in part))
    return {"name": dataset, "source": str(data_dir) if data_dir else f"bilaw dataset {dataset!r} (default location)",
            "digest": digest.hexdigest()[:32],
            "train": n_train_total if include_val_in_train else len(split.train),
            "meta_val": len(split.meta_val), "holdout": len(split.holdout), "test": n_test,
            "noisy": len(noisy_local), "train_includes_val": include_val_in_train}

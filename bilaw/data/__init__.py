"""Datasets as tensors: loading each dataset (`load_data`, the `DATASETS` registry), the files
on disk (IDX and CIFAR batches), the class-stratified train / meta-validation / held-out split
with label noise on the train part, on-device batching and augmentation, and the few fields a
tracker records of what a run trained on (`DataBundle.record`).
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "load_data": "datasets",
    "DATASETS": "datasets",
    "DataBundle": "datasets",
    "MissingDatasetError": "datasets",
    "split_indices": "splits",
    "batch_indices": "batches",
    "split_record": "record",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

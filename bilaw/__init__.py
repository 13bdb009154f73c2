"""bilaw: BiLAW (bilevel learnable adversarial reweighting) and its baselines in plain PyTorch.

`train(cfg)` runs one config (`TrainConfig`); `load_run(DIR)` loads a finished run's best model.
Names are imported lazily so that `python -m bilaw.train` / `python -m bilaw.evaluate` run cleanly.
Once the CLI module `bilaw.train` has been imported, Python binds that name to the module; code
that may meet it should import the function as `from bilaw.trainer import train`.
"""
from importlib import import_module

_EXPORTS = {
    "ConfigError": "config", "TrainConfig": "config", "TrainResult": "trainer", "train": "trainer",
    "load_run": "runs", "save_run": "runs", "evaluate_run": "runs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'bilaw' has no attribute {name!r}")

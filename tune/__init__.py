"""tune: the Ray Tune + Optuna + MLflow search system around `bilaw` (the only Ray/MLflow code)."""

from tune import moved_modules as _moved_modules

_moved_modules.install()

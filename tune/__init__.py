"""tune: the Ray Tune + Optuna + MLflow search system around `bilaw` (the only Ray/MLflow code)."""

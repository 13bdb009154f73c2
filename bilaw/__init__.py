"""bilaw: BiLAW (bilevel learnable adversarial reweighting) and its baselines in plain PyTorch.

`bilaw.training.train(cfg)` runs one config (`TrainConfig`); `load_run(DIR)` loads a finished run's
best model. The subpackages, in layer order (each imports only those before it; LAYERS in
tests/test_structure.py checks it): eval (attacks, AutoAttack, accuracy), data (datasets and
splits), methods (objectives, weightings, the bilevel step), config (the run's keys, validated
against those registries), analysis (what the weights mean, figures), training (the loop,
checkpoints), runs (finished runs on disk); below them the modules every layer may use
(registry, file_errors, lazy_exports, metrics, models, epochs, gpu_memory), above them the commands
`python -m bilaw.train`, `python -m bilaw.evaluate` and `python -m bilaw.export`.
Names are imported lazily, so that importing one module never loads the rest.
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "ConfigError": "config.yaml_values", "TrainConfig": "config.train_config", "TrainResult": "training.trainer",
    "load_run": "runs.saved", "save_run": "runs.saved", "evaluate_run": "evaluate",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

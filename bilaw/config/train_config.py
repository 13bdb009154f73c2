"""`TrainConfig`: every knob of one training run, loaded and validated in one place.

The same keys are used in YAML files, `--set key=value`, search spaces and MLflow params.
`None` means "derived": `TrainConfig.resolved()` fills those from the dataset, norm, method and
schedule (e.g. `pgd_step_size` = eps/4, `burn_in_epochs` per weighting), and `validate()` collects
every error at once, naming the key, the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from bilaw.config.yaml_values import (ConfigError, coerce, load_yaml_mapping,  # noqa: F401 (the config API)
                                      parse_overrides, yaml_load)
from bilaw.data.datasets import DATASETS
from bilaw.eval.attacks import NORMS, default_step_size
from bilaw.methods import learned as _learned_weightings  # noqa: F401  (registers bilaw and nonparam)
from bilaw.methods.margins import MARGIN_INPUTS
from bilaw.methods.objectives import OBJECTIVES
from bilaw.methods.weighting import WEIGHTINGS, is_learned, unread_keys
from bilaw.models import MODELS
from bilaw.registry import Registry, unknown_name_message

# Keys whose values are registry names: validated against the registry when checked, so a name
# registered by a plug-in is accepted like a built-in one.
REGISTRY_KEYS: dict[str, Registry] = {"dataset": DATASETS, "model": MODELS, "norm": NORMS, "objective": OBJECTIVES,
                                      "weighting": WEIGHTINGS, "margin_input": MARGIN_INPUTS}

# Named methods are presets of (objective, weighting).
METHODS: dict[str, tuple[str, str]] = {
    "plain": ("plain", "none"),
    "at": ("at", "none"),
    "trades": ("trades", "none"),
    "gairat": ("at", "gairat"),
    "wmmr": ("at", "wmmr"),
    "mail": ("at", "mail"),
    "nonparam": ("at", "nonparam"),
    "bilaw": ("at", "bilaw"),
    "bilaw_frozen": ("at", "bilaw_frozen"),
    "bilaw_trades": ("trades", "bilaw"),
}
CUSTOM_METHOD = "custom"  # an (objective, weighting) pair that is no preset

# meta_preset "fast": a smaller, weaker validation attack per meta step (docs/performance.md).
FAST_VAL_BATCH, FAST_VAL_PGD_STEPS = 32, 3
HYPERGRADS = ("double_backward", "jvp")
META_OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
META_GRAD_SCALES = ("raw", "per_lr")
# Keys added after configs were first stored, with the value that reproduces what a config written
# before the key existed did. A stored config that lacks such a key is read with this value, not
# with the key's current default, wherever stored and current configs are compared.
# The meta-optimiser keys are listed too: their defaults changed (docs/results.md, "BiLAW's
# meta-optimiser"), and configs stored before they existed ran the old values.
LEGACY_VALUES: dict[str, Any] = {"meta_grad_scale": "raw", "meta_optimizer": "adam", "meta_lr": 1e-3,
                                 "meta_weight_decay": 1e-4}


WEIGHT_NET_PATTERN = re.compile(r"^[1-9][0-9]*(-[1-9][0-9]*)*$")


@dataclass
class TrainConfig:
    """One training run. `python -m bilaw.train --help` lists every key; docs/methods.md says what each does."""

    # what to train
    dataset: str = "digits"
    model: str = "fc1"
    wrn_depth: int = 32          # only for model=wrn
    wrn_width: int = 10          # only for model=wrn
    method: str = "at"
    objective: str | None = None   # derived from method unless set
    weighting: str | None = None   # derived from method unless set
    # threat model and attacks
    norm: str = "linf"
    eps: float | None = None             # derived: paper budget for (dataset, norm)
    pgd_steps: int = 10                  # training attack
    pgd_step_size: float | None = None   # derived: eps / 4
    eval_pgd_steps: int = 20
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_milestones: list[float] = field(default_factory=lambda: [0.3, 0.6])
    lr_gamma: float = 0.1
    early_stop_patience: int = 0         # epochs without a new best held-out PGD acc; 0 = never stop
    # TRADES
    trades_beta: float = 6.0             # the paper's 1/lambda
    # BiLAW / non-parametric (bilevel step)
    weight_net: str = "128"
    margin_input: str = "multiclass"
    margin_on: str = "clean"
    meta_lr: float = 0.025
    meta_weight_decay: float = 1e-5
    meta_optimizer: str = "sgd"          # sgd, adam (coupled L2 decay) or adamw (decoupled decay)
    meta_grad_scale: str = "raw"         # per_lr: the meta-gradient divided by the classifier's current lr
    meta_interval: int = 1
    val_attack_at: str = "pseudo"
    meta_preset: str = "exact"           # "fast": validation batch 32 and PGD-3 unless set
    val_batch_size: int | None = None    # derived: batch_size (fast: 32)
    val_pgd_steps: int | None = None     # derived: pgd_steps (fast: 3)
    hypergrad: str = "double_backward"   # or "jvp": Eq. 6 as one forward-mode JVP (same value)
    burn_in_epochs: int | None = None    # derived per weighting (docs/methods.md A13)
    # heuristic baselines
    gairat_lambda: float = -1.0
    gairat_lambda_max: float = math.inf
    gairat_schedule: str = "fixed"
    gairat_weight_fn: str = "tanh"
    wmmr_alpha: float = 0.1
    wmmr_detach: bool = False
    wmmr_normalize: bool = False
    mail_gamma: float = 5.0
    mail_beta: float = 0.05
    # data and splits
    meta_val_size: int | None = None     # derived: 1000 (paper), 150 for digits
    holdout_val_size: int | None = None  # derived: 1000 (paper), 150 for digits
    baselines_full_train: bool = False
    label_noise: float = 0.0
    data_dir: str | None = None
    # evaluation
    aa_samples: int = 1000               # 0 skips AutoAttack
    aa_version: str = "standard"
    aa_attacks: list[str] | None = None  # a cheap custom AutoAttack subset, e.g. [apgd-ce]
    aa_n_iter: int | None = None         # iterations of the custom subset's APGD attacks
    masking_gap: float = 5.0             # PGD-20 minus AutoAttack (points) beyond which a run is flagged
    eval_batch_size: int = 1024
    # interpretability (bilaw/analysis/weights.py, bilaw/analysis/plots.py)
    analysis_samples: int = 1000         # training and test samples analysed at the end; 0 = none
    plots: bool = True                   # write OUT/plots/*.png (needs analysis_samples > 0)
    plot_every: int = 0                  # also redraw the plots every N epochs (0 = at the end only)
    # run
    seed: int = 0
    device: str = "auto"
    amp: bool = False                    # bf16 autocast of the attack loops (CUDA only)
    channels_last: bool = False          # channels_last memory format for conv models
    compile: bool = False                # torch.compile the forward of the attacks and real step
    threads: int | None = None           # torch CPU threads; None: torch's default (a run records the count it used)

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TrainConfig":
        """Build from a mapping; unknown keys and values of the wrong type are errors."""
        data = dict(data or {})
        errors = [unknown_name_message("config key", k, KEYS) for k in data if k not in KEYS]
        kwargs = {}
        for key, value in data.items():
            if key in REGISTRY_KEYS and isinstance(value, str) and value in REGISTRY_KEYS[key]:
                kwargs[key] = value  # a registered name, even one spelled like a null ("none")
            elif key in KEYS:
                try:
                    kwargs[key] = coerce(key, value, TYPE_HINTS[key])
                except ValueError as exc:
                    errors.append(str(exc))
        cfg = cls(**kwargs)
        errors += [e for check in _CHECKS for e in check(cfg)]
        if errors:
            raise ConfigError(errors)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(load_yaml_mapping(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with `changes` applied (coerced and validated like `from_dict`)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    # ----- derived values and validation ---------------------------------------------------
    def resolved(self) -> "TrainConfig":
        """A copy with every derived (None) value filled in; validates first."""
        self.validate()
        c = dataclasses.replace(self, lr_milestones=list(self.lr_milestones))
        if c.objective is None or c.weighting is None:
            preset = METHODS.get(c.method, (None, None))
            c.objective = c.objective or preset[0]
            c.weighting = c.weighting or preset[1]
        c.method = next((m for m, pair in METHODS.items() if pair == (c.objective, c.weighting)), CUSTOM_METHOD)
        if c.eps is None:
            budgets = DATASETS.facts(c.dataset).get("eps", {})
            if c.norm not in budgets:
                raise ConfigError([f"eps: dataset {c.dataset!r} has no default budget for norm {c.norm!r}; set eps"])
            c.eps = budgets[c.norm]
        if c.pgd_step_size is None:
            c.pgd_step_size = default_step_size(c.eps)
        fast = c.meta_preset == "fast"
        c.val_batch_size = c.val_batch_size or (FAST_VAL_BATCH if fast else c.batch_size)
        if c.val_pgd_steps is None:
            c.val_pgd_steps = min(FAST_VAL_PGD_STEPS, c.pgd_steps) if fast else c.pgd_steps
        default_val = DATASETS.facts(c.dataset)["val_size"]
        c.meta_val_size = default_val if c.meta_val_size is None else c.meta_val_size
        c.holdout_val_size = default_val if c.holdout_val_size is None else c.holdout_val_size
        if c.burn_in_epochs is None:
            c.burn_in_epochs = default_burn_in(c.weighting, c.epochs)
        c.validate()
        return c

    def validate(self) -> None:
        """Raise `ConfigError` listing every invalid entry."""
        errors = [e for check in _CHECKS for e in check(self)]
        if errors:
            raise ConfigError(errors)

    @property
    def weight_net_hidden(self) -> tuple[int, ...]:
        """The capacity string "64-64" as hidden sizes (64, 64)."""
        return tuple(int(h) for h in self.weight_net.split("-"))


KEYS: dict[str, dataclasses.Field] = {f.name: f for f in fields(TrainConfig)}
TYPE_HINTS: dict[str, Any] = typing.get_type_hints(TrainConfig)  # key -> its field type


def default_burn_in(weighting: str, epochs: int) -> int:
    """Unweighted epochs before `weighting` starts (its registered `burn_in(epochs)`; none if it
    registered no burn-in)."""
    rule = WEIGHTINGS.facts(weighting).get("burn_in")
    return 0 if rule is None else rule(epochs)


# ----- checks: each returns a list of messages -----------------------------------------------
def _choice(key: str, allowed: tuple[str, ...], kind: str | None = None):
    def check(c: TrainConfig) -> list[str]:
        value = getattr(c, key)
        if value is None or value in allowed:
            return []
        return [f"{key}: " + unknown_name_message(kind or key, value, allowed)]

    return check


def _registered(key: str, registry: Registry):
    def check(c: TrainConfig) -> list[str]:
        value = getattr(c, key)
        if value is None or value in registry:
            return []
        return [f"{key}: " + unknown_name_message(registry.kind, value, registry.names())]

    return check


def _range(key: str, lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False):
    def check(c: TrainConfig) -> list[str]:
        v = getattr(c, key)
        if v is None:
            return []
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi))
        if not bad and not (isinstance(v, float) and not math.isfinite(v)):
            return []
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        return [f"{key}: {v!r} is out of range (allowed: {' and '.join(s for s in (left, right) if s)})"]

    return check


def _check_method(c: TrainConfig) -> list[str]:
    if c.method in METHODS:
        return []
    if c.method == CUSTOM_METHOD and c.objective is not None and c.weighting is not None:
        return []
    if c.method == CUSTOM_METHOD:
        return ["method: 'custom' needs both objective and weighting set"]
    return ["method: " + unknown_name_message("method", c.method, METHODS)]


def _check_weight_net(c: TrainConfig) -> list[str]:
    if isinstance(c.weight_net, str) and WEIGHT_NET_PATTERN.match(c.weight_net):
        return []
    return [f"weight_net: {c.weight_net!r} is not a capacity string; allowed: positive hidden sizes "
            f"joined by '-', e.g. '128', '64', '64-64', '256'"]


def _check_milestones(c: TrainConfig) -> list[str]:
    ms = c.lr_milestones
    if all(0 < m <= 1 for m in ms) and list(ms) == sorted(ms):
        return []
    return [f"lr_milestones: {ms!r} must be increasing fractions of training in (0, 1], e.g. [0.3, 0.6]"]


def _check_eps(c: TrainConfig) -> list[str]:
    """l-inf budgets are fractions of the [0, 1] pixel range; an l-2 budget may exceed 1."""
    if c.eps is None:
        return []
    hi = 1.0 if c.norm == "linf" else math.inf
    if isinstance(c.eps, (int, float)) and not isinstance(c.eps, bool) and math.isfinite(c.eps) and 0 < c.eps <= hi:
        return []
    allowed = "> 0 and <= 1" if hi == 1.0 else "> 0 and finite, norm l2"
    return [f"eps: {c.eps!r} is out of range (allowed: {allowed})"]


def _check_meta_val(c: TrainConfig) -> list[str]:
    if c.weighting in WEIGHTINGS and is_learned(c.weighting) and c.meta_val_size == 0:
        return [f"meta_val_size: 0 is not allowed with weighting {c.weighting!r} (it learns from that set)"]
    return []


def _check_gairat(c: TrainConfig) -> list[str]:
    if c.gairat_schedule == "linear" and not math.isfinite(c.gairat_lambda_max):
        return [f"gairat_lambda_max: {c.gairat_lambda_max!r} must be finite with gairat_schedule 'linear'"]
    return []


# Keys whose value is one of a fixed set of names (with REGISTRY_KEYS: what `choices()` lists).
CHOICES: dict[str, tuple[str, ...]] = {
    "margin_on": ("clean", "adv"),
    "meta_optimizer": META_OPTIMIZER_NAMES, "meta_grad_scale": META_GRAD_SCALES,
    "val_attack_at": ("pseudo", "current"), "meta_preset": ("exact", "fast"), "hypergrad": HYPERGRADS,
    "gairat_schedule": ("fixed", "linear", "piecewise"), "gairat_weight_fn": ("tanh", "sigmoid", "discrete"),
    "device": ("auto", "cpu", "cuda"), "aa_version": ("standard", "plus", "rand"),
}
_KINDS = {"meta_optimizer": "meta optimizer", "meta_grad_scale": "meta gradient scale"}


def choices() -> dict[str, tuple[str, ...]]:
    """Every key whose value is a name, with the names allowed now (registries included)."""
    return {**{key: tuple(reg.names()) for key, reg in REGISTRY_KEYS.items()}, **CHOICES}


_CHECKS = [
    _check_method, *(_registered(key, reg) for key, reg in REGISTRY_KEYS.items()),
    *(_choice(key, names, _KINDS.get(key)) for key, names in CHOICES.items()),
    _check_eps, _range("pgd_step_size", 0, lo_open=True),
    _range("pgd_steps", 0), _range("eval_pgd_steps", 0), _range("val_pgd_steps", 0),
    _range("epochs", 1), _range("batch_size", 1), _range("val_batch_size", 1), _range("eval_batch_size", 1),
    _range("lr", 0, lo_open=True), _range("momentum", 0, 1, hi_open=True), _range("weight_decay", 0),
    _range("lr_gamma", 0, 1, lo_open=True), _range("early_stop_patience", 0), _range("trades_beta", 0),
    _range("meta_lr", 0, lo_open=True), _range("meta_weight_decay", 0), _range("meta_interval", 1),
    _range("burn_in_epochs", 0), _range("wmmr_alpha", 0), _range("mail_gamma", 0),
    _range("meta_val_size", 0), _range("holdout_val_size", 1), _range("label_noise", 0, 1, hi_open=True),
    _range("aa_samples", 0), _range("aa_n_iter", 1), _range("masking_gap", 0), _range("analysis_samples", 0), _range("plot_every", 0), _range("wrn_depth", 8), _range("wrn_width", 1), _range("seed", 0), _range("threads", 1),
    _check_weight_net, _check_milestones, _check_gairat, _check_meta_val,
]


# How a key may differ between a stored config (a checkpoint's, a finished run's) and the current
# one. "output": where the run reads and writes, and what it draws at the end (free to change on
# resume and for reusing a finished run); "evaluation": what the final evaluation measures (free on
# resume, which evaluates at the end anyway, not for reuse); "implementation": how training is
# computed, not what (free for reuse; not on resume, whose bit-exactness it would break).
KEY_ROLES: dict[str, str] = {
    "device": "output", "data_dir": "output", "eval_batch_size": "output", "analysis_samples": "output",
    "plots": "output", "plot_every": "output",
    "aa_samples": "evaluation", "aa_version": "evaluation", "aa_attacks": "evaluation", "aa_n_iter": "evaluation", "masking_gap": "evaluation",
    "hypergrad": "implementation", "compile": "implementation", "channels_last": "implementation",
    "threads": "implementation",
}
# Keys a run fills in when it starts (bilaw/config/reproducibility.py): a stored None (or a config stored
# before the key existed) did not record what that run used, so it matches any current value.
RECORDED_AT_START = ("threads",)
RESUME_FREE_KEYS = tuple(k for k, role in KEY_ROLES.items() if role in ("output", "evaluation"))
REUSE_FREE_KEYS = tuple(k for k, role in KEY_ROLES.items() if role in ("output", "implementation"))


def config_differences(saved: Mapping[str, Any], cfg: "TrainConfig", free: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """(key, stored value, current value) for each key outside `free` where a stored config
    differs from `cfg`; keys the stored config predates count as `stored_config_dict` fills them,
    and a stored None of a `RECORDED_AT_START` key matches any value (that run did not record it).
    Keys that only another weighting reads are free too (an AT run is the same run whatever its
    meta_lr); where the weightings differ, `weighting` itself is the difference."""
    now, saved = cfg.to_dict(), stored_config_dict(saved)
    weighting = cfg.weighting or METHODS.get(cfg.method, (None, None))[1]
    unread = unread_keys(weighting) if weighting in WEIGHTINGS else frozenset()
    return [(k, saved[k], now[k]) for k in now
            if k not in free and k not in unread and saved[k] != now[k] and not _both_nan(saved[k], now[k])
            and not (k in RECORDED_AT_START and saved[k] is None)]


def _both_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def stored_config_dict(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config (a checkpoint's or a run's `config.yaml`) with every key it predates filled
    in: `LEGACY_VALUES` where a key changed what runs without it did, else the key's default."""
    defaults = TrainConfig().to_dict()
    return {**{k: LEGACY_VALUES.get(k, v) for k, v in defaults.items() if k not in saved}, **saved}



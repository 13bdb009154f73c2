"""TrainConfig: derived defaults, method presets, YAML round trip, and error messages."""
from __future__ import annotations

import math

import pytest

from bilaw.config.train_config import ConfigError, TrainConfig, load_yaml_mapping, parse_overrides


def _errors(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    return info.value.errors


def _one_error(data) -> str:
    errors = _errors(data)
    assert len(errors) == 1, errors
    return errors[0]


# ----- derived defaults --------------------------------------------------------------------------
def test_defaults_resolve_to_pgd_at_on_digits():
    c = TrainConfig().resolved()
    assert (c.method, c.objective, c.weighting) == ("at", "at", "none")
    assert (c.dataset, c.norm) == ("digits", "linf")
    assert c.eps == pytest.approx(0.2)
    assert c.pgd_step_size == pytest.approx(0.05)
    assert c.val_batch_size == 128 and c.val_pgd_steps == 10
    assert c.meta_val_size == 150 and c.holdout_val_size == 150
    assert c.burn_in_epochs == 0


def test_resolved_does_not_modify_the_original_and_is_idempotent():
    c = TrainConfig()
    r = c.resolved()
    assert c.eps is None and c.objective is None and c.burn_in_epochs is None
    assert r.resolved() == r
    r.lr_milestones.append(0.9)  # the copy owns its list
    assert c.lr_milestones == [0.3, 0.6]


@pytest.mark.parametrize("dataset,norm,eps", [
    ("digits", "linf", 0.2), ("digits", "l2", 1.0), ("mnist", "linf", 0.1), ("mnist", "l2", 0.3),
    ("fashion_mnist", "linf", 0.1), ("cifar10", "linf", 0.031), ("cifar100", "linf", 0.031),
])
def test_eps_and_step_size_derive_from_dataset_and_norm(dataset, norm, eps):
    c = TrainConfig(dataset=dataset, norm=norm).resolved()
    assert c.eps == pytest.approx(eps)
    assert c.pgd_step_size == pytest.approx(eps / 4)


def test_explicit_eps_drives_step_size_and_explicit_step_size_is_kept():
    assert TrainConfig(eps=0.3).resolved().pgd_step_size == pytest.approx(0.075)
    c = TrainConfig(eps=0.3, pgd_step_size=0.01).resolved()
    assert (c.eps, c.pgd_step_size) == (0.3, 0.01)


@pytest.mark.parametrize("dataset,size", [
    ("digits", 150), ("mnist", 1000), ("fashion_mnist", 1000), ("cifar10", 1000), ("cifar100", 1000),
])
def test_validation_sizes(dataset, size):
    c = TrainConfig(dataset=dataset).resolved()
    assert (c.meta_val_size, c.holdout_val_size) == (size, size)
    c = TrainConfig(dataset=dataset, meta_val_size=77, holdout_val_size=33).resolved()
    assert (c.meta_val_size, c.holdout_val_size) == (77, 33)


@pytest.mark.parametrize("method,epochs,burn_in", [
    ("gairat", 100, 30), ("gairat", 20, 6), ("gairat", 50, 15), ("gairat", 109, 33),
    ("gairat", 110, 60), ("gairat", 120, 60), ("gairat", 200, 60),
    ("mail", 100, 60), ("mail", 120, 72), ("mail", 20, 12), ("mail", 10, 6),
    ("bilaw", 100, 0), ("bilaw", 120, 0), ("bilaw_trades", 100, 0), ("nonparam", 100, 0),
    ("wmmr", 100, 0), ("at", 100, 0), ("trades", 100, 0),
])
def test_burn_in_per_weighting(method, epochs, burn_in):
    assert TrainConfig(method=method, epochs=epochs).resolved().burn_in_epochs == burn_in


def test_explicit_burn_in_is_kept():
    assert TrainConfig(method="gairat", epochs=100, burn_in_epochs=5).resolved().burn_in_epochs == 5
    assert TrainConfig(method="mail", epochs=100, burn_in_epochs=0).resolved().burn_in_epochs == 0


# ----- methods as presets of (objective, weighting) ------------------------------------------------
PRESETS = {
    "plain": ("plain", "none"), "at": ("at", "none"), "trades": ("trades", "none"),
    "gairat": ("at", "gairat"), "wmmr": ("at", "wmmr"), "mail": ("at", "mail"),
    "nonparam": ("at", "nonparam"), "bilaw": ("at", "bilaw"), "bilaw_trades": ("trades", "bilaw"),
}


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_named_method_maps_to_objective_and_weighting(method):
    c = TrainConfig.from_dict({"method": method}).resolved()
    assert (c.objective, c.weighting) == PRESETS[method]
    assert c.method == method


@pytest.mark.parametrize("objective,weighting", [
    ("trades", "mail"), ("trades", "gairat"), ("plain", "wmmr"), ("trades", "nonparam"), ("plain", "bilaw"),
])
def test_non_preset_pair_is_custom(objective, weighting):
    c = TrainConfig.from_dict({"objective": objective, "weighting": weighting}).resolved()
    assert (c.method, c.objective, c.weighting) == ("custom", objective, weighting)
    # declared custom explicitly: the same
    c2 = TrainConfig.from_dict({"method": "custom", "objective": objective, "weighting": weighting}).resolved()
    assert c2 == c


def test_one_explicit_half_combines_with_the_method_preset():
    c = TrainConfig.from_dict({"method": "mail", "objective": "trades"}).resolved()
    assert (c.method, c.objective, c.weighting) == ("custom", "trades", "mail")
    assert c.burn_in_epochs == round(0.6 * c.epochs)  # MAIL's burn-in follows the weighting
    c = TrainConfig.from_dict({"method": "trades", "weighting": "bilaw"}).resolved()
    assert (c.method, c.objective, c.weighting) == ("bilaw_trades", "trades", "bilaw")


def test_explicit_preset_pair_resolves_to_the_named_method():
    c = TrainConfig.from_dict({"objective": "at", "weighting": "gairat"}).resolved()
    assert c.method == "gairat"


def test_custom_without_both_halves_is_an_error():
    err = _one_error({"method": "custom", "objective": "trades"})
    assert err.startswith("method:") and "custom" in err and "objective and weighting" in err


# ----- YAML round trip -----------------------------------------------------------------------------
@pytest.mark.parametrize("weight_net", ["64-64", "128", "256", "64"])
def test_yaml_round_trip(tmp_path, weight_net):
    c = TrainConfig.from_dict({
        "method": "bilaw", "dataset": "mnist", "weight_net": weight_net,
        "lr_milestones": [0.25, 0.5, 0.75], "gairat_lambda_max": math.inf, "eps": 0.15,
        "aa_attacks": ["apgd-ce", "apgd-t"], "data_dir": "/some/dir", "wmmr_detach": True,
    })
    path = tmp_path / "c.yaml"
    text = c.to_yaml(path)
    assert path.read_text() == text
    back = TrainConfig.from_yaml(path)
    assert back == c
    assert back.weight_net == weight_net and isinstance(back.weight_net, str)
    assert back.lr_milestones == [0.25, 0.5, 0.75]
    assert back.gairat_lambda_max == math.inf
    assert back.aa_attacks == ["apgd-ce", "apgd-t"] and back.wmmr_detach is True


def test_resolved_config_round_trips(tmp_path):
    c = TrainConfig(method="gairat", dataset="cifar10", model="small_cnn", epochs=120).resolved()
    path = tmp_path / "r.yaml"
    c.to_yaml(path)
    assert TrainConfig.from_yaml(path) == c


def test_handwritten_yaml_reads_int_capacity_as_string(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("weight_net: 128\nlr_milestones: [0.5, 0.75]\ngairat_lambda_max: .inf\n"
                    "epochs: 7\neps: 0.05\namp: yes\ndata_dir: null\n")
    c = TrainConfig.from_yaml(path)
    assert c.weight_net == "128" and c.weight_net_hidden == (128,)
    assert c.lr_milestones == [0.5, 0.75]
    assert c.gairat_lambda_max == math.inf
    assert c.epochs == 7 and isinstance(c.epochs, int)
    assert c.eps == 0.05 and c.amp is True and c.data_dir is None


def test_weight_net_hidden():
    assert TrainConfig(weight_net="64-64").weight_net_hidden == (64, 64)
    assert TrainConfig(weight_net="256").weight_net_hidden == (256,)


# ----- errors --------------------------------------------------------------------------------------
def test_unknown_key_with_did_you_mean():
    err = _one_error({"wieght_net": "64-64"})
    assert "unknown config key 'wieght_net'" in err
    assert "did you mean 'weight_net'?" in err
    assert "weight_net" in err.split(";")[1]  # the valid keys are listed


@pytest.mark.parametrize("key,value,kind,valid,suggestion", [
    ("method", "gairt", "method", "at, bilaw, bilaw_frozen, bilaw_trades, gairat, mail, nonparam, plain, trades, wmmr", "gairat"),
    ("model", "resnet18", "model", "fc1, small_cnn, tiny_cnn, wrn, wrn32_10, wrn34_10", None),
    ("model", "tiny_cn", "model", "fc1, small_cnn, tiny_cnn, wrn, wrn32_10, wrn34_10", "tiny_cnn"),
    ("dataset", "fashion-mnist", "dataset", "cifar10, cifar100, digits, fashion_mnist, mnist", "fashion_mnist"),
    ("norm", "l1", "norm", "l2, linf", None),
    ("margin_input", "multclass", "margin input", "loss_diff, margin, multiclass, robust_loss", "multiclass"),
    ("objective", "trade", "objective", "at, plain, trades", "trades"),
    ("weighting", "gairatt", "weighting", "bilaw, bilaw_frozen, gairat, mail, none, nonparam, wmmr", "gairat"),
])
def test_unknown_choice_names_key_value_and_allowed(key, value, kind, valid, suggestion):
    err = _one_error({key: value})
    assert err.startswith(f"{key}: unknown {kind} {value!r}")
    assert f"valid {kind}s: {valid}" in err
    if suggestion is not None:
        assert f"did you mean {suggestion!r}?" in err


def test_unknown_norm_suggests_a_close_one():
    assert "did you mean" in _one_error({"norm": "linfty"})


@pytest.mark.parametrize("key,value,shown,allowed", [
    ("eps", 0, "0.0", "> 0 and <= 1"),
    ("eps", -0.1, "-0.1", "> 0 and <= 1"),
    ("eps", 1.5, "1.5", "> 0 and <= 1"),
    ("eps", float("nan"), "nan", "> 0 and <= 1"),
    ("lr", 0, "0.0", "> 0"),
    ("lr", -0.01, "-0.01", "> 0"),
    ("epochs", 0, "0", ">= 1"),
    ("epochs", -3, "-3", ">= 1"),
    ("momentum", 1.0, "1.0", ">= 0 and < 1"),
    ("label_noise", 1, "1.0", ">= 0 and < 1"),
])
def test_out_of_range(key, value, shown, allowed):
    err = _one_error({key: value})
    assert err == f"{key}: {shown} is out of range (allowed: {allowed})"


def test_boundaries_that_are_allowed():
    c = TrainConfig.from_dict({"eps": 1.0, "epochs": 1, "lr": 1e-9, "momentum": 0.0}).resolved()
    assert (c.eps, c.epochs, c.lr, c.momentum) == (1.0, 1, 1e-9, 0.0)


@pytest.mark.parametrize("capacity", ["abc", "0-64", "64-", "-64", "64--64", "64-0", "64.5", "64 64"])
def test_bad_capacity_strings(capacity):
    err = _one_error({"weight_net": capacity})
    assert err.startswith(f"weight_net: {capacity!r} is not a capacity string")
    assert "'64-64'" in err  # says what is allowed


@pytest.mark.parametrize("milestones", [[0.6, 0.3], [0.5, 1.5], [0.0, 0.5], [-0.2]])
def test_bad_lr_milestones(milestones):
    err = _one_error({"lr_milestones": milestones})
    assert err.startswith(f"lr_milestones: {milestones!r} must be increasing fractions")
    assert "(0, 1]" in err


def test_lr_milestones_that_are_not_numbers():
    assert _one_error({"lr_milestones": "abc"}) == "lr_milestones: 'abc' is not a number"
    assert _one_error({"lr_milestones": 0.5}) == "lr_milestones: 0.5 is not a list of float"


def test_wrong_types():
    assert _one_error({"epochs": 2.5}) == "epochs: 2.5 is not an integer"
    assert _one_error({"epochs": True}) == "epochs: True is not an integer"
    assert _one_error({"amp": "maybe"}) == "amp: 'maybe' is not a boolean (use true or false)"
    assert _one_error({"lr": "fast"}) == "lr: 'fast' is not a number"
    assert _one_error({"epochs": None}) == "epochs: None is not allowed (expected int)"
    assert _one_error({"dataset": ["mnist"]}) == "dataset: ['mnist'] is not a string"


def test_linear_gairat_schedule_needs_finite_lambda_max():
    err = _one_error({"gairat_schedule": "linear"})
    assert err.startswith("gairat_lambda_max: inf") and "linear" in err
    TrainConfig.from_dict({"gairat_schedule": "linear", "gairat_lambda_max": 3.0})


def test_several_errors_reported_at_once():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"wieght_net": "64", "eps": 2.0, "model": "resnet", "lr": -1,
                               "weight_net": "abc", "epochs": "x"})
    errors = info.value.errors
    assert len(errors) == 6, errors
    message = str(info.value)
    for fragment in ("'wieght_net'", "eps: 2.0", "model: unknown model 'resnet'", "lr: -1.0",
                     "weight_net: 'abc'", "epochs: 'x' is not an integer"):
        assert fragment in message
    assert message.count("\n  - ") == 6
    assert isinstance(info.value, ValueError)


def test_validate_catches_direct_construction_errors():
    c = TrainConfig(eps=0.0, norm="l3")
    with pytest.raises(ConfigError) as info:
        c.resolved()
    assert len(info.value.errors) == 2


def test_replace_coerces_and_validates():
    c = TrainConfig().replace(weight_net=64, epochs="5")
    assert (c.weight_net, c.epochs) == ("64", 5)
    with pytest.raises(ConfigError, match="eps: 3.0 is out of range"):
        TrainConfig().replace(eps=3)


# ----- --set overrides -----------------------------------------------------------------------------
def test_parse_overrides_types():
    out = parse_overrides(["eps=0.1", "epochs=5", "amp=true", "wmmr_detach=False",
                           "lr_milestones=[0.5, 0.8]", "weight_net=64-64", "weight_net_int=128",
                           "dataset=mnist", "data_dir=", " seed = 3"])
    assert out == {"eps": 0.1, "epochs": 5, "amp": True, "wmmr_detach": False,
                   "lr_milestones": [0.5, 0.8], "weight_net": "64-64", "weight_net_int": 128,
                   "dataset": "mnist", "data_dir": None, "seed": 3}
    assert type(out["epochs"]) is int and type(out["eps"]) is float
    assert parse_overrides(None) == {} and parse_overrides([]) == {}


def test_overrides_through_from_dict():
    c = TrainConfig.from_dict(parse_overrides([
        "eps=none", "weight_net=128", "lr_milestones=0.25,0.5", "gairat_lambda_max=inf", "lr=1e-2",
        "aa_attacks=apgd-ce", "data_dir=none",
    ]))
    assert c.eps is None and c.resolved().eps == pytest.approx(0.2)
    assert c.weight_net == "128"
    assert c.lr_milestones == [0.25, 0.5]
    assert c.gairat_lambda_max == math.inf
    assert c.lr == pytest.approx(0.01)
    assert c.aa_attacks == ["apgd-ce"]
    assert c.data_dir is None


@pytest.mark.parametrize("item", ["eps0.1", "=0.1", " =3", ""])
def test_malformed_override(item):
    with pytest.raises(ConfigError) as info:
        parse_overrides(["epochs=3", item])
    assert info.value.errors == [f"--set {item!r}: expected key=value"]


# ----- YAML files ----------------------------------------------------------------------------------
def test_malformed_yaml_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("eps: 0.1\nepochs: 5\nweight_net: 64: 64\nseed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(path)
    (err,) = info.value.errors
    assert err.startswith(str(path))
    assert "line 3" in err and "malformed YAML" in err


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- eps\n- epochs\n")
    with pytest.raises(ConfigError, match="expected a mapping of config keys, got list") as info:
        TrainConfig.from_yaml(path)
    assert str(path) in str(info.value)


def test_missing_and_empty_yaml(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_yaml_mapping(missing)
    assert str(missing) in str(info.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert load_yaml_mapping(empty) == {}
    assert TrainConfig.from_yaml(empty) == TrainConfig()


def test_yaml_with_unknown_key_is_reported(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("methd: bilaw\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'methd'.*did you mean 'method'\?"):
        TrainConfig.from_yaml(path)


# ----- YAML corner cases ----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["override", "yaml_file"])
def test_date_like_capacity_string_is_kept(tmp_path, source):
    if source == "override":
        data = parse_overrides(["weight_net=1024-64-64"])
    else:
        path = tmp_path / "w.yaml"
        path.write_text("weight_net: 1024-64-64\n")
        data = load_yaml_mapping(path)
    c = TrainConfig.from_dict(data)
    assert c.weight_net == "1024-64-64" and c.weight_net_hidden == (1024, 64, 64)


def test_malformed_list_value_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(parse_overrides(["lr_milestones=[0.3, 0.6", "epochs=x"]))
    assert len(info.value.errors) == 2
    assert info.value.errors[0].startswith("lr_milestones:") or info.value.errors[1].startswith("lr_milestones:")


def test_key_roles_give_the_resume_and_reuse_exemptions():
    from bilaw.config.train_config import KEY_ROLES, KEYS, RESUME_FREE_KEYS, REUSE_FREE_KEYS

    assert set(KEY_ROLES) <= set(KEYS)
    assert set(RESUME_FREE_KEYS) == {"device", "data_dir", "aa_samples", "aa_version", "aa_attacks", "aa_n_iter",
                                     "masking_gap", "eval_batch_size", "analysis_samples", "plots", "plot_every"}
    assert set(REUSE_FREE_KEYS) == {"device", "data_dir", "eval_batch_size", "hypergrad", "compile", "channels_last",
                                    "analysis_samples", "plots", "plot_every", "threads"}


def test_threads_is_validated_and_a_stored_run_without_a_count_matches_any():
    """A run records its torch thread count (bilaw/config/reproducibility.py); a checkpoint or run stored
    before it did (no `threads`, or null) resumes and is reused under any count, while two
    recorded counts that differ are a different run on resume (float sums differ)."""
    from bilaw.config.train_config import RESUME_FREE_KEYS, config_differences

    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"threads": 0})
    assert info.value.errors == ["threads: 0 is out of range (allowed: >= 1)"]
    cfg = TrainConfig(threads=2)
    old = {k: v for k, v in cfg.to_dict().items() if k != "threads"}
    assert config_differences(old, cfg, RESUME_FREE_KEYS) == []
    assert config_differences({**old, "threads": None}, cfg, RESUME_FREE_KEYS) == []
    assert config_differences({**old, "threads": 1}, cfg, RESUME_FREE_KEYS) == [("threads", 1, 2)]


def test_config_differences_fill_keys_a_stored_config_predates():
    from bilaw.config.train_config import config_differences

    cfg = TrainConfig(method="bilaw", gairat_lambda_max=math.nan)
    stored = {k: v for k, v in cfg.to_dict().items() if k != "meta_grad_scale"}
    assert config_differences(stored, cfg, ()) == []  # NaN equals NaN here; the missing key reads as raw
    assert config_differences(stored, cfg.replace(meta_grad_scale="per_lr", lr=0.05), ("lr",)) == [
        ("meta_grad_scale", "raw", "per_lr")]


def test_meta_optimiser_keys_predating_or_unread_do_not_make_a_different_run():
    """A stored config without the meta-optimiser keys ran the old Adam setting; a run whose
    weighting has no meta-optimiser is the same run whatever those keys hold."""
    from bilaw.config.train_config import config_differences

    def cfg(**keys):
        return TrainConfig.from_dict(keys)

    bilaw = cfg(method="bilaw")
    assert (bilaw.meta_optimizer, bilaw.meta_lr, bilaw.meta_weight_decay) == ("sgd", 0.025, 1e-5)
    old = {k: v for k, v in bilaw.to_dict().items() if k not in ("meta_optimizer", "meta_lr", "meta_weight_decay")}
    assert config_differences(old, bilaw, ()) == [("meta_lr", 0.001, 0.025), ("meta_weight_decay", 0.0001, 1e-05),
                                                  ("meta_optimizer", "adam", "sgd")]
    assert config_differences(old, cfg(method="bilaw", meta_optimizer="adam", meta_lr=1e-3,
                                       meta_weight_decay=1e-4), ()) == []
    for method in ("at", "trades", "gairat", "nonparam"):
        stored = cfg(method=method, meta_optimizer="adam", meta_lr=1e-3, meta_grad_scale="per_lr").to_dict()
        assert config_differences(stored, cfg(method=method), ()) == [], method
    # a key another weighting reads too is not free: nonparam reads meta_interval as BiLAW does
    stored = cfg(method="nonparam", meta_interval=2).to_dict()
    assert config_differences(stored, cfg(method="nonparam"), ()) == [("meta_interval", 2, 1)]
    # against a BiLAW run the AT run's meta_lr is a difference as well as its weighting
    stored = cfg(method="at", meta_lr=1e-3).to_dict()
    assert config_differences(stored, bilaw, ()) == [("method", "at", "bilaw"), ("meta_lr", 0.001, 0.025)]


def test_a_registered_plugin_name_is_valid_with_its_facts(monkeypatch):
    """Adding a weighting or a dataset is one registration: validation and derived values follow."""
    from bilaw.data.datasets import DATASETS
    from bilaw.methods.weighting import WEIGHTINGS, Weighting

    monkeypatch.setitem(WEIGHTINGS._entries, "halfway", lambda cfg: Weighting("halfway"))
    monkeypatch.setitem(WEIGHTINGS._facts, "halfway", {"burn_in": lambda epochs: epochs // 2})
    cfg = TrainConfig(method="custom", objective="at", weighting="halfway", epochs=10).resolved()
    assert cfg.burn_in_epochs == 5
    monkeypatch.setitem(DATASETS._entries, "tiny_set", DATASETS.get("digits"))
    monkeypatch.setitem(DATASETS._facts, "tiny_set", {"eps": {"linf": 0.3}, "val_size": 20, "disk": None})
    cfg = TrainConfig(dataset="tiny_set").resolved()
    assert (cfg.eps, cfg.meta_val_size, cfg.holdout_val_size) == (0.3, 20, 20)
    with pytest.raises(ConfigError, match=r"eps: dataset 'tiny_set' has no default budget for norm 'l2'; set eps"):
        TrainConfig(dataset="tiny_set", norm="l2").resolved()
    assert TrainConfig(dataset="tiny_set", norm="l2", eps=0.5).resolved().eps == 0.5


def test_config_errors_survive_pickling():
    """Ray sends a trial's exception to the driver pickled: the list of errors must come back whole."""
    import pickle

    err = ConfigError(["eps: 0 is out of range", "lr: -1 is out of range"])
    back = pickle.loads(pickle.dumps(err))
    assert back.errors == err.errors and str(back) == str(err)


def test_an_l2_budget_may_exceed_one_an_linf_budget_may_not():
    assert TrainConfig(dataset="mnist", norm="l2", eps=2.0).resolved().eps == 2.0
    with pytest.raises(ConfigError, match=r"eps: 2.0 is out of range \(allowed: > 0 and <= 1\)"):
        TrainConfig(dataset="mnist", norm="linf", eps=2.0).resolved()
    with pytest.raises(ConfigError, match=r"eps: inf is out of range \(allowed: > 0 and finite, norm l2\)"):
        TrainConfig.from_dict({"norm": "l2", "eps": "inf"})


def test_the_weighting_named_none_can_be_chosen():
    cfg = TrainConfig.from_dict({"method": "custom", "objective": "at", "weighting": "none"}).resolved()
    assert (cfg.weighting, cfg.method) == ("none", "at")

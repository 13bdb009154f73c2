"""A weighting is one registration: a new one trains through the unchanged trainer, its weights
reach the epoch statistics and the analysis, and a learned one keeps its state in checkpoints."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bilaw import TrainConfig
from bilaw.training.trainer import train
from bilaw.methods.weighting import WEIGHTINGS, StepInputs, WeightInputs, WeightOutput, Weighting

TINY = dict(dataset="digits", model="fc1", batch_size=64, epochs=2, meta_val_size=60, holdout_val_size=60,
            aa_samples=0, analysis_samples=100, plots=False, device="cpu", burn_in_epochs=0)


def _by_label(inputs: WeightInputs) -> WeightOutput:
    raw = 1.0 + inputs.y.float()  # label k gets weight k + 1
    return WeightOutput(raw / raw.mean(), raw)


@dataclass
class _Counting(Weighting):
    """A 'learned' weighting whose state is the number of batches it has weighted."""

    seen: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    def batch_weights(self, step: StepInputs):
        self.seen += 1
        w = torch.where(step.y % 2 == 0, 2.0, 1.0)
        return w / w.mean(), w

    def state_dict(self):
        return {"seen": self.seen.clone()}

    def load_state_dict(self, state):
        self.seen = state["seen"].clone()


def test_a_registered_heuristic_weighting_trains_and_is_analysed(monkeypatch):
    monkeypatch.setitem(WEIGHTINGS._entries, "by_label", lambda cfg: Weighting("by_label", _by_label))
    monkeypatch.setitem(WEIGHTINGS._facts, "by_label", {})
    result = train(TrainConfig.from_dict({**TINY, "method": "custom", "objective": "at", "weighting": "by_label"}),
                   progress=False)
    assert all(h["weight_std"] > 0.3 for h in result.history)
    x = result.analysis  # recorded weights are (label + 1) over their batch's mean: label 9 about 10x label 0
    ratio = x["weights"][x["y"] == 9].mean() / x["weights"][x["y"] == 0].mean()
    assert 7 < ratio.item() < 13
    assert len(result.trace) == 2 and len(result.trace[0]["clean"]) > 0


def test_a_registered_learned_weighting_keeps_its_state_across_resume(monkeypatch, tmp_path):
    monkeypatch.setitem(WEIGHTINGS._entries, "counting", lambda cfg: _Counting("counting", per_sample_formula=False))
    monkeypatch.setitem(WEIGHTINGS._facts, "counting", {"learned": True})
    cfg = TrainConfig.from_dict({**TINY, "method": "custom", "objective": "at", "weighting": "counting"})
    assert cfg.resolved().baselines_full_train is False
    train(cfg, checkpoint_dir=tmp_path, stop_after=1, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    batches = -(-(1437 - 120) // 64)
    assert state["seen"].item() == batches
    resumed = train(cfg, checkpoint_dir=tmp_path, progress=False)
    full = train(cfg, progress=False)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]

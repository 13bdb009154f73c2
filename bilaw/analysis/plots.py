"""The BiLAW paper's interpretability figures for one run, as PNGs (headless matplotlib).

`write_plots(folder, analysis=..., history=..., trace=..., final=...)` draws what the data
allows and returns the files written:
- weights_per_class.png     per-class distribution of the training weights (Fig. 3a / 6a)
- adv_confusion.png         adversarial confusion matrix of the returned model (Fig. 3b)
- weight_extremes.png       lowest- and highest-weight training images with labels (Fig. 3c/d, 7-9)
- weight_vs_heuristics.png  the run's weights against MAIL's and GAIRAT's, with correlations (Fig. 6c/e)
- weights_over_epochs.png   weights of a fixed subset over epochs, clean and adversarial (Fig. 5)
- likelihood_pca.png        PCA of the predicted likelihoods coloured by weight (Fig. 4)
- adv_rank_histogram.png    rank of the adversarial class among the clean logits (Fig. 1b)
- weights_noisy_vs_clean.png  mean weight of corrupted and clean samples per epoch (label noise)
`plot_weight_maps` draws weight_vs_margin.png: a weight net's weight against the true-class
margin at each map snapshot, the current net beside its initial state (bilaw/analysis/weight_maps.py).
`plot_curves` draws learning_curves.png (any run): the training loss and the held-out clean and
PGD accuracy per epoch, with the best epoch marked. Epoch axes count from 1 (bilaw/epochs.py).
Weight plots need a weighting; an unweighted run gets the confusion matrix, the rank histogram
and the PCA coloured by whether the PGD example is misclassified.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bilaw.metrics import TEST_PGD_ACC, TRAIN_LOSS, VAL_CLEAN_ACC, VAL_PGD_ACC


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    written.append(path)


def correlations(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(Pearson r, Spearman rho) of two 1-D tensors; NaN where one is constant."""
    def pearson(u: torch.Tensor, v: torch.Tensor) -> float:
        u, v = u.double() - u.double().mean(), v.double() - v.double().mean()
        den = (u.norm() * v.norm()).item()
        return float("nan") if den == 0 else (u @ v).item() / den

    def ranks(u: torch.Tensor) -> torch.Tensor:
        from scipy.stats import rankdata

        return torch.from_numpy(rankdata(u.numpy()))

    return pearson(a, b), pearson(ranks(a), ranks(b))


def _image(x: torch.Tensor):
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).clamp(0, 1).numpy()


def write_plots(folder: str | Path, *, analysis: dict[str, Any], history: list[dict[str, Any]],
                trace: list[dict[str, list[float]]] | None = None, final: dict[str, Any] | None = None) -> list[Path]:
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    a = analysis
    k = a["num_classes"]
    weighted = a["weighting"] != "none"
    w, y = a["weights"].float(), a["y"]

    if weighted:
        fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 3.5))
        ax.boxplot([w[y == c].numpy() for c in range(k)], showfliers=True)
        ax.set_xticks(range(1, k + 1), [str(c) for c in range(k)])
        ax.set(xlabel="class (training label)", ylabel="weight (mean-1 per batch)",
               title=f"{a['weighting']}: training weights per class (last epoch)")
        _save(fig, folder / "weights_per_class.png", written)

    if final is not None and final.get("test_adv_confusion") is not None:
        conf = torch.tensor(final["test_adv_confusion"], dtype=torch.float64)
        rates = conf / conf.sum(1, keepdim=True).clamp_min(1)
        fig, ax = plt.subplots(figsize=(4.5, 4))
        im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set(xlabel="predicted on the PGD example", ylabel="true class",
               title="adversarial confusion (test, best state)")
        ax.set_xticks(range(k)), ax.set_yticks(range(k))
        _save(fig, folder / "adv_confusion.png", written)

    if weighted:
        order = torch.argsort(w)
        n = min(8, len(w) // 2)
        fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.2), squeeze=False)
        for row, (name, picks) in enumerate((("lowest", order[:n]), ("highest", order.flip(0)[:n]))):
            for col, i in enumerate(picks.tolist()):
                ax = axes[row][col]
                ax.imshow(_image(a["x"][i]), cmap="gray" if a["x"].shape[1] == 1 else None)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"y={int(y[i])} w={w[i]:.2f}", fontsize=7)
            axes[row][0].set_ylabel(name, fontsize=8)
        fig.suptitle(f"{a['weighting']}: lowest- and highest-weight training samples", fontsize=9)
        _save(fig, folder / "weight_extremes.png", written)

        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
        for ax, other in zip(axes, ("mail", "gairat")):
            r, rho = correlations(w, a[other].float())
            ax.scatter(w.numpy(), a[other].numpy(), s=5, alpha=0.5)
            ax.set(xlabel=f"{a['weighting']} weight", ylabel=f"{other.upper()} weight (same samples)",
                   title=f"Pearson r={r:.2f}, Spearman rho={rho:.2f}")
        _save(fig, folder / "weight_vs_heuristics.png", written)

    if trace:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
        epochs = range(1, len(trace) + 1)  # one entry per epoch trained, counted from 1
        for ax, key in zip(axes, ("clean", "adv")):
            values = torch.tensor([t[key] for t in trace])  # (epochs, subset)
            ax.plot(epochs, values.numpy(), lw=0.6, alpha=0.6)
            ax.set(xlabel="epoch", title=f"{'clean' if key == 'clean' else 'adversarial'} training samples")
        axes[0].set_ylabel("weight (mean-1 over the subset)")
        _save(fig, folder / "weights_over_epochs.png", written)

    probs = a["probs_clean"].double()
    centred = probs - probs.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    pcs = (centred @ v[:2].T).numpy()
    fig, ax = plt.subplots(figsize=(4.8, 4))
    colour = w.numpy() if weighted else a["misclassified_adv"].float().numpy()
    sc = ax.scatter(pcs[:, 0], pcs[:, 1], c=colour, s=6, cmap="viridis")
    fig.colorbar(sc, ax=ax, fraction=0.046, label="weight" if weighted else "PGD example misclassified")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="PCA of the predicted likelihoods (training samples)")
    _save(fig, folder / "likelihood_pca.png", written)

    ranks = a["adv_ranks"]
    counts = torch.bincount(ranks, minlength=k)[1:]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.bar(range(1, k), counts.numpy())
    ax.set(xlabel="rank of the adversarial class among the clean logits (1 = 2nd largest)",
           ylabel="test samples", title=f"where PGD sends the prediction ({int(counts.sum())} flipped)")
    _save(fig, folder / "adv_rank_histogram.png", written)

    if history and "weight_mean_noisy" in history[0]:
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        ep = [h["epoch"] for h in history]
        ax.plot(ep, [h["weight_mean_noisy"] for h in history], marker="o", label="corrupted labels")
        ax.plot(ep, [h["weight_mean_clean"] for h in history], marker="o", label="clean labels")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set(xlabel="epoch", ylabel="mean weight (mean-1 per batch)", title=f"{a['weighting']}: label noise")
        ax.legend()
        _save(fig, folder / "weights_noisy_vs_clean.png", written)
    return written


def plot_weight_maps(folder: str | Path, maps: list[dict[str, Any]]) -> Path:
    """weight_vs_margin.png: one panel per map snapshot, the current and the initial net's weight
    of the same training points against their true-class margin, with each one's AUROC for
    'the PGD example is misclassified'."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(maps), figsize=(3.4 * len(maps), 3.3), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], maps):
        m = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in m.items()}
        ax.scatter(m["margin"], m["weight_init"], s=4, alpha=0.4, color="grey",
                   label=f"initial net (AUROC {m['auroc_init']:.2f})")
        ax.scatter(m["margin"], m["weight"], s=4, alpha=0.5, color="C0", label=f"current (AUROC {m['auroc']:.2f})")
        ax.set(xlabel="true-class margin p_y - max p_j", title=f"after epoch {m['epoch']}")
        ax.legend(fontsize=7, markerscale=3)
    axes[0][0].set_ylabel("weight (mean 1 over the points)")
    path = folder / "weight_vs_margin.png"
    _save(fig, path, [])
    return path


CURVES_NAME = "learning_curves.png"


def best_epoch_of(history: list[dict[str, Any]]) -> int | None:
    """The epoch whose held-out PGD accuracy is highest, the first of equals (the trainer keeps the
    state of the first best); None for an empty history."""
    if not history:
        return None
    top = max(h[VAL_PGD_ACC] for h in history)
    return next(int(h["epoch"]) for h in history if h[VAL_PGD_ACC] == top)


def curves_figure(history: list[dict[str, Any]]):
    """(figure, best epoch) of `plot_curves`; (None, None) for an empty history."""
    best = best_epoch_of(history)
    if best is None:
        return None, None
    plt = _pyplot()
    epochs = [int(h["epoch"]) for h in history]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(8, 3.2))
    loss.plot(epochs, [h[TRAIN_LOSS] for h in history], marker="o", color="black")
    loss.set(xlabel="epoch", ylabel="training loss (weighted)")
    acc.plot(epochs, [h[VAL_CLEAN_ACC] for h in history], marker="o", label="held-out clean")
    acc.plot(epochs, [h[VAL_PGD_ACC] for h in history], marker="o", label="held-out PGD")
    acc.set(xlabel="epoch", ylabel="accuracy", title=f"best epoch {best} (highest held-out PGD)")
    for ax in (loss, acc):
        ax.axvline(best, color="grey", ls="--", lw=1)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc.legend(fontsize=7)
    fig.tight_layout()
    return fig, best


def plot_curves(folder: str | Path, history: list[dict[str, Any]]) -> Path | None:
    """learning_curves.png: the training loss and the held-out clean and PGD accuracy per epoch
    (x from 1), the best epoch (`best_epoch_of`) marked, named in the title and stored in the
    PNG's text as `best_epoch`, so the figure can be checked against metrics.json; None without
    a history."""
    fig, best = curves_figure(history)
    if fig is None:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CURVES_NAME
    fig.savefig(path, dpi=110, metadata={"best_epoch": str(best)})
    _pyplot().close(fig)
    return path


PER_CLASS_JSON = "per_class_pgd_acc.json"


def write_per_class(folder: str | Path, per_class: list[float] | None, plot: bool = True) -> list[Path]:
    """The best state's PGD accuracy per test class (NaN: a class the test set lacks) as
    `per_class_pgd_acc.json` and, with `plot` (a run's `plots`), the bar plot
    `plots/per_class_pgd_acc.png` in `folder`; nothing without them. A search trial writes them
    into its saved run, so its driver only uploads files."""
    if not per_class:
        return []
    folder = Path(folder)
    path = folder / PER_CLASS_JSON
    path.write_text(json.dumps({TEST_PGD_ACC: {str(k): v for k, v in enumerate(per_class)},
                                "note": "PGD accuracy per test class at the best state (NaN: class absent)"}, indent=1))
    written = [path]
    if not plot:
        return written
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    fig, ax = _pyplot().subplots(figsize=(max(4.0, 0.35 * len(per_class)), 3.0))
    ax.bar(range(len(per_class)), [a if a == a else 0.0 for a in per_class], color="tab:red")
    ax.set(xlabel="class", ylabel="PGD accuracy", ylim=(0, 1), title="robust accuracy per class (best state)")
    fig.tight_layout()
    fig.savefig(folder / "plots" / "per_class_pgd_acc.png", dpi=100)
    _pyplot().close(fig)
    return written + [folder / "plots" / "per_class_pgd_acc.png"]

"""Render the README's figures from TensorBoard logs, read back with TensorBoard's own reader.

    python experiments/plot_curves.py                       # train the runs, then draw
    python experiments/plot_curves.py --logdir runs --no-train   # draw from existing logs

Unless ``--no-train``, it first trains, into ``--logdir`` (a temporary folder by default):

- ``tutorial/run``: ``experiments/linear_regression.yaml``
- ``compare_backends/manual`` and ``compare_backends/native``:
  ``experiments/compare_backends.yaml`` under each backend
- ``spiral/manual`` and ``spiral/native``: ``experiments/spiral_classifier.yaml`` under each
  backend
- ``tiny_gpt/manual`` and ``tiny_gpt/native``: ``experiments/tiny_gpt.yaml`` under each backend

and then writes into ``--out`` (``experiments/figures`` by default):

- ``tutorial_loss.png``: the tutorial's training loss per step and validation loss per
  epoch, and the learned weight and bias against the true 3 and 2.
- ``manual_vs_autograd.png``: the MLP's losses with hand-derived gradients and with native
  autograd side by side, and the gradient audit's largest difference between the two.
- ``spiral_classifier.png``: the decision regions the classifier learned on hand-derived
  gradients, over the spiral's points, and its cross-entropy and accuracy, manual vs native.
- ``tiny_gpt.png``: the tiny GPT's cross-entropy and exact-sequence accuracy (greedy
  decoding), manual vs native, and the gradient audit's largest relative difference.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib
import torch
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    SCALARS,
    EventAccumulator,
)

HERE = Path(__file__).resolve().parent
BACKENDS = ("manual", "native")


def train(logdir: Path, max_epochs: int | None = None) -> None:
    """Run the fits whose logs the figures are drawn from."""
    from manualgrad.lightning.cli import run

    def fit(config: str, name: str, version: str, *extra: str) -> None:
        args = ["fit", "--config", str(HERE / config), *extra]
        args += ["--trainer.logger.save_dir", str(logdir), "--trainer.logger.name", name]
        args += ["--trainer.logger.version", version, "--trainer.enable_progress_bar", "false"]
        if max_epochs is not None:
            args += ["--trainer.max_epochs", str(max_epochs)]
        run(args)

    fit("linear_regression.yaml", "tutorial", "run")
    for backend in BACKENDS:
        fit("compare_backends.yaml", "compare_backends", backend, "--model.backend", backend)
    for backend in BACKENDS:
        fit("spiral_classifier.yaml", "spiral", backend, "--model.backend", backend)
    for backend in BACKENDS:
        fit("tiny_gpt.yaml", "tiny_gpt", backend, "--model.backend", backend)


def scalars(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar tag of one run: ``{tag: (steps, values)}``."""
    events = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
    events.Reload()
    return {
        tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
        for tag in events.Tags()[SCALARS]
    }


def plot_losses(ax, run: dict, title: str) -> None:
    ax.plot(*run["train/loss"], label="train/loss (per step)", lw=1)
    ax.plot(*run["val/loss"], "o-", ms=2, label="val/loss (per epoch)")
    ax.set(yscale="log", xlabel="step", ylabel="MSE", title=title)
    ax.legend()


def tutorial_figure(run: dict, path: Path) -> None:
    fig, (loss_ax, param_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    plot_losses(loss_ax, run, "Tutorial: y = 3x + 2 + noise, ManualLinear(1, 1)")
    for tag, truth, color in (("params/weight", 3.0, "C0"), ("params/bias", 2.0, "C1")):
        steps, values = run[tag]
        param_ax.plot(steps, values, color=color, label=f"{tag} (final {values[-1]:.4f})")
        param_ax.axhline(truth, color=color, ls="--", lw=0.8)
    param_ax.set(xlabel="step", title="Learned parameters (dashed: true 3 and 2)")
    param_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def comparison_figure(runs: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, backend in zip(axes, BACKENDS, strict=False):
        final = runs[backend]["val/loss"][1][-1]
        plot_losses(ax, runs[backend], f"MLP on sin(x), backend={backend}: val MSE {final:.5f}")
    axes[1].sharey(axes[0])
    audit_ax = axes[2]
    for backend in BACKENDS:
        steps, values = runs[backend]["audit/grad_max_abs_diff"]
        audit_ax.plot(steps, values, "o-", ms=3, label=f"{backend} run (max {max(values):.2g})")
    audit_ax.set(
        xlabel="step",
        ylabel="max |g_manual - g_native|",
        title="Gradient audit: hand-derived vs native",
    )
    audit_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def decision_regions(ax, run_dir: Path) -> None:
    """The classes the run's last checkpoint assigns over the plane, under its data's points."""
    from manualgrad.lightning import Classifier, SpiralData

    model = Classifier.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu"
    )
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    x, y = SpiralData(**config["data"].get("init_args", {}))._data()["all"].tensors
    low, high = x.min().item() - 0.1, x.max().item() + 0.1
    axis = torch.linspace(low, high, 300)
    grid = torch.cartesian_prod(axis, axis)  # (300 * 300, 2): x1 slowest
    with torch.no_grad():
        classes = model(grid).argmax(-1).reshape(300, 300)  # [i, j]: x1 = axis[i], x2 = axis[j]
    k = int(y.max()) + 1
    cmap = plt.get_cmap("tab10", 10)
    levels = [c - 0.5 for c in range(k + 1)]
    ax.contourf(axis, axis, classes.T, levels=levels, colors=[cmap(c) for c in range(k)], alpha=0.3)
    ax.scatter(x[:, 0], x[:, 1], c=[cmap(int(c)) for c in y], s=6, edgecolors="none")
    ax.set(xlim=(low, high), ylim=(low, high), aspect="equal", xlabel="x1", ylabel="x2")


def spiral_figure(runs: dict[str, dict], run_dirs: dict[str, Path], path: Path) -> None:
    fig, (region_ax, loss_ax, acc_ax) = plt.subplots(1, 3, figsize=(15, 4.4))
    decision_regions(region_ax, run_dirs["manual"])
    final = runs["manual"]["val/acc"][1][-1]
    region_ax.set_title(f"Spiral, hand-derived gradients: val accuracy {final:.1%}")
    # native drawn over manual, thin, dotted and black: where the two agree it hides nothing
    over = {"manual": {}, "native": {"color": "k", "ls": ":", "lw": 0.9}}
    for backend in BACKENDS:
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
            for split, color, width in (("train", "C0", 0.6), ("val", "C1", 1.5)):
                tag = f"{split}/{metric}"
                style = {"color": color, "lw": width, **over[backend]}
                ax.plot(*runs[backend][tag], label=f"{tag} ({backend})", **style)
    loss_ax.set(yscale="log", xlabel="step", ylabel="cross-entropy", title="Loss, manual vs native")
    acc_ax.set(
        xlabel="step", ylabel="accuracy", ylim=(0.3, 1.01), title="Accuracy, manual vs native"
    )
    loss_ax.legend()
    acc_ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def gpt_figure(runs: dict[str, dict], path: Path) -> None:
    fig, (loss_ax, acc_ax, audit_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    over = {"manual": {}, "native": {"color": "k", "ls": ":", "lw": 0.9}}  # as the spiral's
    curves = (
        (loss_ax, "train/loss", "C0", 0.6),
        (loss_ax, "val/loss", "C1", 1.5),
        (acc_ax, "train/acc_teacher_forced", "C0", 0.6),
        (acc_ax, "val/acc", "C1", 1.5),
    )
    for backend in BACKENDS:
        for ax, tag, color, width in curves:
            style = {"color": color, "lw": width, **over[backend]}
            ax.plot(*runs[backend][tag], label=f"{tag} ({backend})", **style)
    final = runs["manual"]["val/acc"][1][-1]
    loss_ax.set(yscale="log", xlabel="step", ylabel="cross-entropy (answer tokens)")
    # float32 round-off (1e-7), amplified about tenfold every 3 steps by this training, parts
    # the two runs after some 15 steps; in float64 they agree to 1e-12 (tests/test_gpt.py)
    loss_ax.set_title("Tiny GPT sorting digits: loss, manual vs native", fontsize=11)
    acc_ax.set(xlabel="step", ylabel="exact-sequence accuracy", ylim=(-0.02, 1.02))
    acc_ax.set_title(f"val/acc: greedy decoding (manual, final {final:.1%})")
    # (the native run's audit compares native autograd with itself: 0, off a log scale)
    steps, values = runs["manual"]["audit/grad_max_rel_diff"]
    audit_ax.plot(steps, values, "o-", ms=3, label=f"manual run (max {max(values):.2g})")
    audit_ax.set(
        yscale="log",
        xlabel="step",
        ylabel="max |g_manual - g_native| / max |g_native|",
        title="Gradient audit (float32): hand-derived vs native",
    )
    for ax in (loss_ax, audit_ax):
        ax.legend()
    acc_ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", type=Path, help="where the runs' logs are (or go)")
    parser.add_argument("--out", type=Path, default=HERE / "figures", help="where the PNGs go")
    parser.add_argument("--no-train", action="store_true", help="only draw, from --logdir")
    parser.add_argument("--max-epochs", type=int, help="override each run's max_epochs")
    args = parser.parse_args(argv)
    if args.no_train and args.logdir is None:
        parser.error("--no-train needs --logdir")
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir or Path(tmp)
        if not args.no_train:
            train(logdir, args.max_epochs)
        args.out.mkdir(parents=True, exist_ok=True)
        tutorial_figure(scalars(logdir / "tutorial" / "run"), args.out / "tutorial_loss.png")
        runs = {b: scalars(logdir / "compare_backends" / b) for b in BACKENDS}
        comparison_figure(runs, args.out / "manual_vs_autograd.png")
        spiral_dirs = {b: logdir / "spiral" / b for b in BACKENDS}
        spiral = {b: scalars(run_dir) for b, run_dir in spiral_dirs.items()}
        spiral_figure(spiral, spiral_dirs, args.out / "spiral_classifier.png")
        gpt = {b: scalars(logdir / "tiny_gpt" / b) for b in BACKENDS}
        gpt_figure(gpt, args.out / "tiny_gpt.png")
    names = ("tutorial_loss.png", "manual_vs_autograd.png", "spiral_classifier.png", "tiny_gpt.png")
    print("Wrote " + ", ".join(str(args.out / name) for name in names))


if __name__ == "__main__":
    main()

"""``manualgrad explain``: the chain rule of a model's backward pass, op by op, each op's
derivation checked alone against native autograd (:func:`manualgrad.explain`).

``manualgrad explain`` explains the tutorial's neuron (``w = 2, b = 1, x = 3, y = 10``);
``manualgrad explain --config experiments/<name>.yaml`` explains one training batch of that
experiment's model with its loss. The exit status is 1 when an op's local check fails, 2 on
bad input (a missing or wrong config).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings

import torch

import manualgrad
from manualgrad.explain import Explanation, explain_step

__all__ = ["explain_config", "explain_tutorial", "main"]


def explain_tutorial() -> Explanation:
    """The tutorial's single neuron ``y_hat = w x + b`` scored by ``L = (y_hat - y)^2``."""
    neuron = manualgrad.ManualLinear(1, 1)
    with torch.no_grad():
        neuron.weight.fill_(2.0)
        neuron.bias.fill_(1.0)
    x, y = torch.tensor([[3.0]]), torch.tensor([[10.0]])
    return manualgrad.explain(neuron, x, target=y, loss_fn=manualgrad.ManualMSELoss())


def explain_config(config: str) -> Explanation:
    """One training batch of the experiment in ``config`` (a YAML file for ``manualgrad
    fit``): the model's forward and its ``loss_fn`` on the batch ``(x, y)``, or, for a
    model without ``loss_fn``, its ``training_step``."""
    from pytorch_lightning import LightningDataModule, LightningModule

    from manualgrad.lightning.cli import QUIET_WARNINGS, ManualgradCLI

    class _BuildOnly(ManualgradCLI):
        def before_instantiate_classes(self) -> None:
            pass  # the fit-only checks (optimizer options, the checkpoint's run): not used

    # no "Seed set", "GPU available": nothing trains here
    quiet = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric")]
    with warnings.catch_warnings(), _quiet(quiet):
        for message, category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message, category)
        cli = _BuildOnly(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "manualgrad explain"},
            # nothing is trained or logged: no logger, no checkpoint folder
            args=["--config", config, "--trainer.accelerator=cpu", "--trainer.logger=false"],
            run=False,
        )
        model, data = cli.model, cli.datamodule
        data.prepare_data()
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        wrt = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        loss_fn = getattr(model, "loss_fn", None)
        if loss_fn is not None and isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = batch

            def compute():
                output = model(x)
                return output, loss_fn(output, y)

            labels = {id(x): "x", id(y): "y"}
        else:
            # the step logs without a trainer: Lightning's warning says nothing here
            warnings.filterwarnings("ignore", r"You are trying to `self.log\(\)`")

            def compute():
                return None, model.training_step(batch, 0)

            labels = {}
        return explain_step(compute, {"": model}, wrt, labels)


@contextlib.contextmanager
def _quiet(loggers: list[logging.Logger]):
    """Only warnings and errors from ``loggers`` in the block."""
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def main(args: list[str] | None = None) -> int:
    """``manualgrad explain [--config FILE]``: print the explanation; 0 when every op's local
    check passes, 1 when one fails."""
    parser = argparse.ArgumentParser(
        prog="manualgrad explain",
        description="Explain a backward pass op by op: each hand-derived op's formulas, "
        "gradients and saved tensors, and a local check of its derivation against native "
        "autograd. Without --config: the tutorial's neuron (w = 2, b = 1, x = 3, y = 10).",
    )
    parser.add_argument(
        "--config", help="an experiment's YAML file (experiments/<name>.yaml): one batch of it"
    )
    options = parser.parse_args(args)
    try:
        explanation = (
            explain_tutorial() if options.config is None else explain_config(options.config)
        )
    except (ValueError, OSError, TypeError, RuntimeError) as error:
        print(f"manualgrad explain: error: {error}", file=sys.stderr, flush=True)
        return 2
    print(explanation, flush=True)
    return 0 if explanation.passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Plumbing (a first reader may skip it): the argument checks of the losses, each raising the
exception type the native op raises, in its order, with a message that names the problem:
the reductions every loss takes, and the checks of the classification losses
(:mod:`manualgrad.ops.cross_entropy`)."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from manualgrad.ops._apply import warn_traceable

__all__ = [
    "REDUCTIONS",
    "check_float_input",
    "check_index_target",
    "check_prob_target",
    "check_reduction",
    "check_types",
    "label_smoothing",
    "reduction_of",
]

#: the reductions every loss takes, as torch names them
REDUCTIONS = ("mean", "sum", "none")


def reduction_of(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """The reduction, from the legacy ``size_average``/``reduce`` when given, with torch's
    warnings; a bad value raises torch's ValueError."""
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = "mean" if size_average and reduce else "sum" if reduce else "none"
        warn_traceable(
            "size_average and reduce args will be deprecated, please use "
            f"reduction='{reduction}' instead."
        )
    elif reduction == "elementwise_mean":
        warn_traceable(
            "reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead."
        )
        reduction = "mean"
    return check_reduction(reduction)


def check_reduction(reduction: str) -> str:
    """``reduction`` itself, or torch's ValueError for a value it does not know."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return reduction


def check_types(name: str, input, target, weight, ignore_index) -> None:
    for arg, value in (("input", input), ("target", target), ("weight", weight)):
        if not (isinstance(value, Tensor) or (arg == "weight" and value is None)):
            raise TypeError(
                f"{name}(): argument '{arg}' must be Tensor, not {type(value).__name__}"
            )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int | Tensor):
        raise TypeError(
            f"{name}(): argument 'ignore_index' must be int, not {type(ignore_index).__name__}"
        )


def check_devices(name: str, *tensors: Tensor | None) -> None:
    devices = [t.device for t in tensors if t is not None]
    if any(d != devices[0] for d in devices):
        raise RuntimeError(
            f"{name}: expected input, target and weight on one device, got "
            + ", ".join(str(d) for d in devices)
        )


def check_weight(name: str, weight: Tensor | None, n_classes: int) -> None:
    if weight is not None and (weight.dim() != 1 or weight.numel() != n_classes):
        raise RuntimeError(
            f"{name}: weight tensor should be defined either for all {n_classes} classes or no "
            f"classes but got weight tensor of shape: {list(weight.shape)}"
        )


def check_float_input(name: str, input: Tensor) -> None:
    if not input.is_floating_point():
        raise NotImplementedError(f"{name}: expected a floating-point input, got {input.dtype}")


def check_index_target(name: str, input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    """Class-index targets, checked in native ``nll_loss_nd``'s order."""
    if input.dim() == 0:
        raise ValueError(f"{name}: Expected 1 or more dimensions (got 0) for input")
    batch = target.shape[0] if target.dim() else 0
    if input.dim() != 1 and input.shape[0] != batch:
        raise ValueError(
            f"{name}: Expected input batch_size ({input.shape[0]}) to match target batch_size "
            f"({batch})."
        )
    if input.dim() <= 2 and target.dim() > 1:
        raise RuntimeError(
            f"{name}: 0D or 1D target tensor expected, multi-target not supported (input shape "
            f"{list(input.shape)}, target shape {list(target.shape)})"
        )
    if input.dim() == 1 and target.dim() == 1 and target.numel() != 1:
        raise ValueError(
            f"{name}: For 1D input, 1D target must have size 1, but got target size: "
            f"{target.numel()}"
        )
    if input.dim() > 2 and target.shape[1:] != input.shape[2:]:
        expected = [input.shape[0], *input.shape[2:]]
        raise RuntimeError(f"{name}: Expected target size {expected}, got {list(target.shape)}")
    check_weight(name, weight, input.shape[-1] if input.dim() == 1 else input.shape[1])
    if target.dtype not in (torch.long, torch.uint8):
        raise RuntimeError(
            f"{name}: expected target dtype to be Long or Byte, but got {target.dtype}"
        )
    check_float_input(name, input)
    if weight is not None and weight.dtype != input.dtype:
        raise RuntimeError(
            f"{name}: expected weight of the input's dtype {input.dtype}, got {weight.dtype}"
        )
    check_devices(name, input, target, weight)
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{name}: weight is not differentiable with class-index targets (as in torch's "
            "nll_loss_forward); it cannot have requires_grad=True"
        )


def check_prob_target(input: Tensor, target: Tensor, weight, ignore_index: int) -> None:
    """Class-probability targets (the input's shape), in native ``cross_entropy``'s order."""
    if not target.is_floating_point():
        raise RuntimeError(
            "cross_entropy: Expected floating point type for target with class probabilities, "
            f"got {target.dtype}"
        )
    if ignore_index >= 0:
        raise RuntimeError(
            "cross_entropy: ignore_index is not supported for floating point target "
            f"(got ignore_index={ignore_index})"
        )
    if input.dim() == 0:
        raise IndexError("cross_entropy: input must have a class dimension, got a 0-dim tensor")
    check_weight("cross_entropy", weight, input.shape[0 if input.dim() == 1 else 1])
    check_float_input("cross_entropy", input)
    check_devices("cross_entropy", input, target, weight)


def label_smoothing(value) -> float:
    """As a float; native ignores a value that is not above 0 (nan included), refuses > 1."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value)
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"cross_entropy(): argument 'label_smoothing' must be float, not {type(value).__name__}"
        )
    if value > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {value:g}")
    return float(value) if value > 0.0 else 0.0

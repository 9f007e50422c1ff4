"""Plumbing (a first reader may skip it): the one place where manualgrad touches a private
torch API, each use guarded, each with a public fallback.

torch makes no promise about its private names, and manualgrad sets no upper bound on
torch (a cap would make pip downgrade a user's newer torch). So every private name is
looked up here once, at import, and checked; when it is missing or no longer behaves as
expected, the public path takes over. The fallback is always correct, only slower.

- ``torch._C._are_functorch_transforms_active()``: whether a torch.func transform (vmap,
  grad, jacrev, jacfwd) is running. It decides whether the fast eager path may be taken.
  Without it, :func:`functorch_active` answers True, i.e. "maybe": every call then takes
  ``Function.apply`` on the ``setup_context`` class, which is right in eager code and
  under every transform, and under torch.compile the op runs outside the graph rather
  than risk a silently dropped backward (see ``_apply.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["functorch_active", "resolve_functorch_check"]


def _assume_active() -> bool:
    """The fallback: we cannot tell, so assume a transform may be active (the safe path)."""
    return True


def resolve_functorch_check(namespace: object = torch._C) -> Callable[[], bool]:
    """torch's own check (looked up in ``namespace``) when it exists and answers False
    outside any transform (as it must here, at import), else :func:`_assume_active`."""
    check = getattr(namespace, "_are_functorch_transforms_active", None)
    try:
        usable = callable(check) and check() is False
    except Exception:  # changed signature or behaviour: use the public path
        usable = False
    return check if usable else _assume_active


functorch_active: Callable[[], bool] = resolve_functorch_check()

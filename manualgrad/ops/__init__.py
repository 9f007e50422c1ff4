"""The hand-derived ops, one file per op family.

Each file holds a whole op: the ``torch.autograd.Function`` (its derivation in the
docstring), the functional form (torch's signature) and the drop-in module. Files whose
names start with ``_`` are run-time plumbing, shared by every op, that a first reader may
skip.
"""

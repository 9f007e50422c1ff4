"""Reading a CSV table into tensors, with errors that name the file, the line and the column
(for :class:`~manualgrad.lightning.CSVData`)."""

from __future__ import annotations

import csv
import math
import os

import torch
from torch import Tensor

__all__ = ["check_file", "read_csv"]


def check_file(path: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` naming ``path`` (and the option ``data.path``) if it is
    not a file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path!s} (data.path)")


def read_csv(
    path: str | os.PathLike, target: str, features: list[str] | None, delimiter: str, labels: bool
) -> tuple[list[str], Tensor, Tensor]:
    """The feature names, ``x (N, features)`` and the target: ``y (N, 1)`` (float32), or
    with ``labels`` class indices ``y (N,)`` (int64)."""
    check_file(path)
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(file, delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise ValueError(f"{path!s}: empty file; expected a header row of column names")
        names = [n for n in header if n != target] if features is None else list(features)
        for name in [target, *names]:
            if name not in header:
                raise ValueError(f"{path!s}: no column {name!r}; the columns are {header}")
        if target in names:
            raise ValueError(f"{path!s}: column {target!r} is the target and cannot be a feature")
        if not names:
            raise ValueError(f"{path!s}: no feature columns besides the target {target!r}")
        columns = [*names, target]
        index = [header.index(name) for name in columns]
        rows: list[list[float]] = []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) != len(header):
                raise ValueError(
                    f"{path!s}, line {line}: {len(row)} fields, but the header has {len(header)}"
                )
            values = [
                _number(row[i], path, line, name) for i, name in zip(index, columns, strict=True)
            ]
            if labels and not (values[-1] >= 0 and values[-1] == int(values[-1])):
                raise ValueError(
                    f"{path!s}, line {line}, column {target!r}: {row[index[-1]].strip()!r} is "
                    f"not a class label (a whole number 0, 1, 2, ...)"
                )
            rows.append(values)
    if not rows:
        raise ValueError(f"{path!s}: no data rows below the header")
    table = torch.tensor(rows, dtype=torch.float64)  # (N, features + 1)
    x = table[:, :-1].float()
    return names, x, table[:, -1].long() if labels else table[:, -1:].float()


def _number(cell: str, path: str | os.PathLike, line: int, column: str) -> float:
    text = cell.strip()
    where = f"{path!s}, line {line}, column {column!r}"
    if not text:
        raise ValueError(f"{where}: empty cell (a missing value)")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {text!r} is not a finite number (NaN or inf)")
    return value

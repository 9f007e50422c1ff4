"""The data modules (manualgrad/lightning/data.py, csv_table.py): the tutorial's line, the
sine, the CS231n spiral, CSV tables with numeric targets or class labels, the seeded order."""

from __future__ import annotations

import pytest
import torch
from helpers_lightning import LIGHTNING_MARKS

from manualgrad.lightning import CSVData, LinearData, SineData, SpiralData, TutorialData
from manualgrad.lightning.loading import EpochShuffle

pytestmark = LIGHTNING_MARKS


def write_csv(path, header, rows) -> str:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def csv_path(tmp_path):
    return tmp_path / "table.csv"


def test_linear_data_is_the_tutorial_line():
    data = LinearData()
    splits = data._data()
    x, y = splits["all"].tensors
    assert x.shape == y.shape == (100, 1)
    assert 0.0 <= x.min() and x.max() <= 5.0
    residual = y - (3.0 * x + 2.0)
    assert residual.std().item() == pytest.approx(0.1, rel=0.25)
    assert len(splits["train"]) == 80 and len(splits["val"]) == 20
    rows = {tuple(r) for r in torch.cat(splits["train"].tensors, 1).tolist()}
    assert not rows & {tuple(r) for r in torch.cat(splits["val"].tensors, 1).tolist()}
    torch.testing.assert_close(LinearData()._data()["train"].tensors[0], splits["train"].tensors[0])
    assert not torch.equal(LinearData(seed=1)._data()["all"].tensors[0], x)
    other = LinearData(slope=-1.0, intercept=0.5, noise=0.0, size=10, low=-2.0, high=-1.0)
    x2, y2 = other._data()["all"].tensors
    assert x2.shape == (10, 1) and -2.0 <= x2.min() and x2.max() <= -1.0
    torch.testing.assert_close(y2, -x2 + 0.5)
    assert TutorialData()._data()["all"].tensors[1].equal(y)


def test_sine_data():
    x, y = SineData(noise=0.0, size=64)._data()["all"].tensors
    assert x.shape == (64, 1)
    torch.testing.assert_close(y, torch.sin(x))


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    sampler = EpochShuffle(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    again = EpochShuffle(10, seed=3)
    again.set_epoch(1)
    assert list(again) == list(sampler)


def test_csv_data_reads_features_and_target(csv_path):
    write_csv(csv_path, ["a", "y", "b"], [[1, 10, 2], [3, 30, 4], [5, 50, 6], [7, 70, 8]])
    data = CSVData(str(csv_path), "y", val_fraction=0.25)
    data.setup("fit")
    assert data.feature_names == ["a", "b"]
    x, y = data._data()["all"].tensors
    torch.testing.assert_close(x, torch.tensor([[1.0, 2], [3, 4], [5, 6], [7, 8]]))
    torch.testing.assert_close(y, torch.tensor([[10.0], [30], [50], [70]]))
    assert (data.num_features, data.num_targets) == (2, 1)
    only_b = CSVData(str(csv_path), "y", features=["b"], val_fraction=0.25)
    torch.testing.assert_close(
        only_b._data()["all"].tensors[0], torch.tensor([[2.0], [4], [6], [8]])
    )


def test_csv_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        CSVData(str(missing), "y").setup("fit")


@pytest.mark.parametrize(
    "header, rows, target, features, message",
    [
        (["a", "y"], [[1, 2]], "price", None, r"table.csv: no column 'price'; the columns are"),
        (["a", "y"], [[1, 2]], "y", ["a", "c"], r"table.csv: no column 'c'"),
        (["a", "y"], [[1, 2], ["x1", 3]], "y", None, r"table.csv, line 3, column 'a': 'x1' is not"),
        (["a", "y"], [[1, 2], [2, "nan"]], "y", None, r"line 3, column 'y': 'nan' is not a finite"),
        (["a", "y"], [[1, 2], [2, "inf"]], "y", None, r"column 'y': 'inf' is not a finite"),
        (["a", "y"], [[1, 2], ["", 3]], "y", None, r"line 3, column 'a': empty cell"),
        (["a", "y"], [[1, 2], [1, 2, 3]], "y", None, r"line 3: 3 fields, but the header has 2"),
        (["a", "y"], [[1, 2]], "y", ["a", "y"], r"'y' is the target and cannot be a feature"),
        (["y"], [[1]], "y", None, r"no feature columns"),
        (["a", "y"], [], "y", None, r"no data rows"),
    ],
)
def test_csv_bad_tables_name_file_and_column(csv_path, header, rows, target, features, message):
    write_csv(csv_path, header, rows)
    with pytest.raises(ValueError, match=message):
        CSVData(str(csv_path), target, features=features).setup("fit")


def test_csv_empty_file(csv_path):
    csv_path.write_text("")
    with pytest.raises(ValueError, match="table.csv: empty file"):
        CSVData(str(csv_path), "y").setup("fit")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"batch_size": 0}, "batch_size"), ({"val_fraction": 1.0}, "val_fraction")],
)
def test_bad_split_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SineData(**kwargs)


def test_csv_data_learns_a_class_column(csv_path):
    write_csv(csv_path, ["a", "b", "label"], [[0.5, 1, 2], [1.5, 2, 0], [2.5, 3, 1], [3.5, 4, 2]])
    data = CSVData(str(csv_path), "label", task="classification", val_fraction=0.25)
    data.setup("fit")
    x, y = data._data()["all"].tensors
    torch.testing.assert_close(x, torch.tensor([[0.5, 1], [1.5, 2], [2.5, 3], [3.5, 4]]))
    assert y.dtype == torch.int64 and y.tolist() == [2, 0, 1, 2]  # (N,) class indices
    assert (data.num_features, data.num_classes, data.num_targets) == (2, 3, None)
    regression = CSVData(str(csv_path), "label", val_fraction=0.25)
    assert (regression.num_targets, regression.num_classes) == (1, None)


@pytest.mark.parametrize("label", ["1.5", "-1", "two"])
def test_csv_class_labels_must_be_whole_numbers_from_zero(csv_path, label):
    write_csv(csv_path, ["a", "y"], [[1, 0], [2, label]])
    message = rf"table.csv, line 3, column 'y': '{label}' is not a"
    with pytest.raises(ValueError, match=message):
        CSVData(str(csv_path), "y", task="classification").setup("fit")


def test_csv_bad_task(csv_path):
    write_csv(csv_path, ["a", "y"], [[1, 0]])
    with pytest.raises(ValueError, match="task must be 'regression' or 'classification'"):
        CSVData(str(csv_path), "y", task="ranking")


def test_spiral_is_the_cs231n_case_study():
    data = SpiralData(noise=0.0)
    x, y = data._data()["all"].tensors
    assert x.shape == (300, 2) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [0] * 100 + [1] * 100 + [2] * 100
    assert (data.num_features, data.num_classes, data.num_targets) == (2, 3, None)
    # Without noise, arm j's k-th point has radius k/99 and angle 4 j + 4 k/99 (radians).
    radius = torch.linspace(0.0, 1.0, 100)
    for j in range(3):
        angle = torch.linspace(4.0 * j, 4.0 * (j + 1), 100)
        arm = x[100 * j : 100 * (j + 1)]  # (100, 2)
        torch.testing.assert_close(
            arm, torch.stack([radius * angle.sin(), radius * angle.cos()], 1)
        )
    splits = data._data()
    assert len(splits["train"]) == 240 and len(splits["val"]) == 60


def test_spiral_noise_seed_and_size():
    x, y = SpiralData()._data()["all"].tensors
    again, _ = SpiralData()._data()["all"].tensors
    torch.testing.assert_close(x, again, rtol=0, atol=0)
    assert not torch.equal(SpiralData(seed=1)._data()["all"].tensors[0], x)
    clean, _ = SpiralData(noise=0.0)._data()["all"].tensors
    torch.testing.assert_close(x.norm(dim=1), clean.norm(dim=1))  # noise moves the angle only
    assert not torch.allclose(x, clean)
    x5, y5 = SpiralData(classes=5, points_per_class=20)._data()["all"].tensors
    assert x5.shape == (100, 2) and y5.bincount().tolist() == [20] * 5
    with pytest.raises(ValueError, match="classes must be at least 2"):
        SpiralData(classes=1)

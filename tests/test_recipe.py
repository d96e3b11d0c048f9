"""`cnnlab train`'s book recipe on the committed subset, checked against references outside the code
under test: PyTorch's own layers (the LeNet kernel trains as they do), the chapter's own network and
the IDX files read by hand (the reported accuracy is the count of right answers), and the recipe
itself run again (same seed, same numbers and weights; ``--preset book`` is the same run).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from book_code import book_net
from cnnlab.cli.main import main
from cnnlab.models import create
from cnnlab.presets import preset_config
from cnnlab.train.checkpoint import load_checkpoint
from conftest import SUBSET_DATA, SUBSET_TEST, SUBSET_TRAIN

EPOCHS = ["--epochs", "2"]
CPU = ["--data-dir", str(SUBSET_DATA), "--no-verify", "--device", "cpu", "--no-progress"]


def train(run: Path, *flags: str) -> list[str]:
    """Train into ``run``; the closing lines it printed (the epochs', then the final one), without times."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", *flags, *CPU, "--run-dir", str(run)]) == 0
    return [re.sub(r" \(\d+\.\ds\)$", "", line) for line in out.getvalue().splitlines()
            if line.startswith(("epoch ", "loss "))]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run)["model_state"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """``cnnlab train --epochs 2`` with every other setting the book's: the run and its closing lines."""
    run = tmp_path_factory.mktemp("recipe") / "default"
    return run, train(run, *EPOCHS)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file read from its definition (big-endian dimensions after a 4-byte magic), not by cnnlab."""
    data = gzip.decompress(path.read_bytes())
    assert data[:3] == b"\0\0\x08", path          # unsigned bytes
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def test_the_reported_test_accuracy_is_the_books_network_counting_right_answers(default_run):
    """The chapter's LeNet (built by its own code block) with the run's weights, on the test images as
    the book feeds them (pixels / 255), gets right exactly the share of the 1,000 the run reported."""
    run, lines = default_run
    net = book_net()
    net.load_state_dict(weights(run))             # the same layers in the same order: the book's network
    images = read_idx(SUBSET_DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SUBSET_DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (SUBSET_TEST, 28, 28)
    with torch.no_grad():
        predicted = net.eval()(torch.from_numpy(images.copy()).float().unsqueeze(1) / 255).argmax(1)
    right = int((predicted == torch.from_numpy(labels.astype(np.int64))).sum())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_acc"] == right / SUBSET_TEST
    assert lines[-1].endswith(f", test acc {right / SUBSET_TEST:.3f}")


def test_the_closing_lines_are_metrics_csv_rounded(default_run):
    """Each epoch's line and the final line print what metrics.csv holds for that epoch, to 3 decimals,
    and an epoch's train accuracy is a count of right answers over the 2,000 training images."""
    run, lines = default_run
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    ends = [r for r in rows if r["train_loss"] and float(r["epoch"]).is_integer()]
    tests = [r for r in rows if r["test_acc"]]
    assert len(ends) == len(tests) == 2
    expected = [f"epoch {i + 1}/2: train loss {float(end['train_loss']):.3f}, train acc {float(end['train_acc']):.3f}, "
                f"test acc {float(test['test_acc']):.3f}" for i, (end, test) in enumerate(zip(ends, tests))]
    assert lines == expected + [expected[-1].replace("epoch 2/2: train loss", "loss")]
    for end in ends:
        right = float(end["train_acc"]) * SUBSET_TRAIN
        assert right == pytest.approx(round(right), abs=1e-6)


def test_same_seed_same_run_and_book_is_the_default_recipe(default_run, tmp_path):
    """``--preset book`` names the default recipe: run again under that name, it gives the default run's
    metrics.csv byte for byte, its closing lines and its weights bit for bit."""
    run, lines = default_run
    again = tmp_path / "book"
    assert train(again, *EPOCHS, "--preset", "book") == lines
    assert (again / "metrics.csv").read_bytes() == (run / "metrics.csv").read_bytes()
    first, second = weights(run), weights(again)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other_seed = tmp_path / "seed1"
    train(other_seed, "--epochs", "1", "--seed", "1")
    assert not torch.equal(weights(other_seed)["0.weight"], first["0.weight"])   # the seed does matter


def test_the_lenet_kernel_trains_as_pytorchs_own_layers(tmp_path):
    """An epoch of the recipe with the fused LeNet kernel ends at the weights and numbers PyTorch's own
    layers (autograd, no kernel, no channels-last) reach from the same start; both in float32, whose sums
    the kernel orders differently, so equal to rounding."""
    fp32 = ["--epochs", "1", "--precision", "fp32"]
    kernel_lines = train(tmp_path / "kernel", *fp32, "--kernel", "on")
    plain_lines = train(tmp_path / "plain", *fp32, "--kernel", "off", "--channels-last", "off")
    speeds = [json.loads((tmp_path / r / "config.json").read_text())["speed"] for r in ("kernel", "plain")]
    assert "kernel=lenet" in speeds[0] and "kernel=off" in speeds[1], speeds
    kernel, plain = weights(tmp_path / "kernel"), weights(tmp_path / "plain")
    for name in plain:
        torch.testing.assert_close(kernel[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)
    rows = [list(csv.DictReader((tmp_path / r / "metrics.csv").open())) for r in ("kernel", "plain")]
    assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]]
    for a, b in zip(*rows):
        for key, tolerance in (("train_loss", 1e-4), ("train_acc", 2 / SUBSET_TRAIN), ("test_acc", 2 / SUBSET_TEST)):
            if b[key]:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=tolerance if key == "train_loss" else 0,
                                                      abs=0 if key == "train_loss" else tolerance), (key, a, b)
    assert len(kernel_lines) == len(plain_lines) == 2


@pytest.mark.slow
@pytest.mark.parametrize("preset, epochs", [("small", 2), ("fast", 2), ("best-5min", 2), ("best", 2),
                                            ("record-2min", 6), ("record-100k", 6)])
def test_each_preset_learns_in_a_few_epochs(preset, epochs, tmp_path):
    """A few epochs of a modern preset on the 2,000 training images lift the test accuracy far above
    chance (0.1).  Where measured they reached 0.65 to 0.72; other CPUs' rounding moves these short,
    augmented AdamW runs by a few points, which the threshold leaves room for.  The record presets train
    at batch 256, 8 steps an epoch here, and get six epochs for as many steps as two epochs at 128."""
    run = tmp_path / preset
    train(run, "--epochs", str(epochs), "--preset", preset, "--val-fraction", "0")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_acc"] > 0.5
    assert json.loads((run / "config.json").read_text())["config"]["preset"] == preset


@pytest.mark.parametrize("preset", ["record-2min", "record-100k"])
def test_a_record_preset_is_deterministic_on_the_cpu_with_a_seed(preset, tmp_path):
    """The records are reproducible: the same seed trains the same weights and scores the same numbers
    (one epoch on the 2,000 training images, validation split and flip-shift TTA included)."""
    runs = [tmp_path / f"{preset}-{i}" for i in (1, 2)]
    for run in runs:
        train(run, "--epochs", "1", "--preset", preset, "--seed", "7")
    first, second = (weights(run) for run in runs)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert (summaries[0]["val_acc"], summaries[0]["test_acc"]) == (summaries[1]["val_acc"], summaries[1]["test_acc"])


def test_the_100k_record_holds_at_most_100k_parameters():
    config = preset_config("record-100k")
    model = create(config.model, num_classes=10, in_channels=1, **config.model_options)
    assert 90_000 < sum(p.numel() for p in model.parameters()) <= 100_000

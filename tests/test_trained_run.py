"""One reader of a trained run (cnnlab.trained.TrainedRun): every command that reads runs reads them the
same way, a field missing from an older or hand-made checkpoint has one default everywhere, and a run is
prepared (checked, its data found) once."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.data import get_spec
from cnnlab.data.sources import read_idx
from cnnlab.trained import TrainedRun
from conftest import SUBSET_DATA

FASHION = SUBSET_DATA / "fashion-mnist"
SMALL = ["--train-limit", "512", "--test-limit", "200", "--batch-size", "128", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def _without_classes(tmp_path_factory):
    """A run whose checkpoint lacks ``classes`` (and ``image_shape``, ``splits``, ``dataset``): as the first
    versions wrote them, or as a hand-made one may be."""
    from conftest import use_subset_registry

    run = tmp_path_factory.mktemp("runs") / "old"
    with pytest.MonkeyPatch.context() as patch:
        use_subset_registry(patch)
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        assert main(["train", "--data-dir", str(FASHION), "--run-dir", str(run), "--epochs", "1", *SMALL]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    for field in ("classes", "image_shape", "splits", "dataset", "data"):
        ckpt.pop(field, None)
    torch.save(ckpt, run / "checkpoint.pt")
    return run


@pytest.fixture
def without_classes(_without_classes, subset_registry, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(_without_classes, copy)
    return copy


NAMES = [str(k) for k in range(10)]


def test_the_run_reads_with_one_default_per_field(without_classes):
    run = TrainedRun.open(without_classes)
    assert run.classes == tuple(NAMES) and run.dataset == "fashion-mnist" and run.image_shape == (1, 28, 28)
    assert run.splits == ("train", "test") and run.scoring_split == "test" and run.input_size == 28
    assert run.epoch == 1 and run.config.epochs == 1


def test_evaluate_names_the_classes_by_number(without_classes, capsys):
    assert main(["evaluate", str(without_classes), "--data-dir", str(FASHION), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[2:12]] == NAMES


def test_predict_a_file_and_an_index(without_classes, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "boot.png"
    Image.fromarray(read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[0]).save(image)
    assert main(["predict", str(without_classes), str(image), "--index", "0", "--data-dir", str(FASHION),
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    label = int(read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")[0])
    assert lines[0].startswith(f"{image}: ") and lines[1].startswith(f"test[0] (true: {label}): ")
    assert all(name in NAMES for line in lines for name in line.split(": ")[-1].split()[::2])


def test_export_and_inspect(without_classes, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(without_classes), "--format", "onnx", "--data-dir", str(FASHION)]) == 0
    assert main(["inspect", str(without_classes), "--data-dir", str(FASHION)]) == 0
    from cnnlab.export import open_onnx

    exported = open_onnx(without_classes / "model.onnx")
    assert exported.classes == NAMES and exported.description.splits == ("train", "test")


def test_explain_serves_it(without_classes):
    from cnnlab.explain.run import ExplainedRun

    explained = ExplainedRun(without_classes, data_dir=str(FASHION))
    assert explained.describe()["classes"] == NAMES


def test_resume_goes_on_from_it(without_classes, capsys):
    assert main(["train", "--resume", str(without_classes), "--epochs", "2", "--no-progress"]) == 0
    assert "epoch 2/2:" in capsys.readouterr().out
    # The resumed run wrote the classes its data has.
    assert TrainedRun.open(without_classes).classes == tuple(get_spec("fashion-mnist").classes)


def test_a_run_records_the_data_it_trained_on(fashion_dir, tmp_path):
    """config.json says where the data was read from, what it was (fingerprint), its classes, channels,
    image size and split sizes: enough to tell later which data a run saw."""
    run = tmp_path / "r"
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(run), "--epochs", "1",
                 "--val-fraction", "0.1", *SMALL]) == 0
    data = json.loads((run / "config.json").read_text(encoding="utf-8"))["data"]
    assert data["source"] == "registry" and data["name"] == "fashion-mnist" and data["location"] == str(fashion_dir)
    assert data["classes"] == list(get_spec("fashion-mnist").classes)
    assert (data["channels"], data["image_size"]) == (1, 28)
    labels = read_idx(fashion_dir / "train-labels-idx1-ubyte.gz")
    held_out = sum(round(0.1 * n) for n in np.bincount(labels))   # 10 % of each class, rounded
    assert data["splits"] == {"train": 512, "val": held_out, "test": 200}   # the limits applied after the split
    assert isinstance(data["fingerprint"], str) and len(data["fingerprint"]) == 16


def test_a_colour_folder_run_records_its_data(tmp_path):
    from conftest import colour_folder

    colour_folder(tmp_path / "pets", n_train=60, n_test=20, side=32)
    run = tmp_path / "r"
    assert main(["train", "--data", str(tmp_path / "pets"), "--run-dir", str(run), "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--no-progress"]) == 0
    data = json.loads((run / "config.json").read_text(encoding="utf-8"))["data"]
    assert (data["source"], data["channels"], data["image_size"]) == ("folder", 3, 32)
    assert data["splits"] == {"train": 60, "test": 20} and data["location"] == str((tmp_path / "pets").resolve())
    assert len(data["classes"]) == 10


def test_a_run_is_checked_and_its_data_found_once(fashion_dir, tmp_path, monkeypatch):
    """Each check and each data lookup of one `cnnlab train` runs once (they ran two or three times)."""
    import cnnlab.data.dataset
    import cnnlab.data.sources
    import cnnlab.device
    import cnnlab.models.registry
    import cnnlab.train.config
    import cnnlab.train.run

    counts: dict[str, int] = {}

    def counting(owner, name, *importers):
        """Count calls of ``owner.name``, wherever it was imported from (``importers``)."""
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return real(*args, **kwargs)

        for module in (owner, *importers):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counted)

    counting(cnnlab.train.config.TrainConfig, "validate")
    counting(cnnlab.data.dataset, "check_data_settings", cnnlab.train.run)
    counting(cnnlab.models.registry, "check_model", cnnlab.train.run)
    counting(cnnlab.data.sources, "locate", cnnlab.train.run, cnnlab.data.dataset)
    counting(cnnlab.data.sources._Stamps, "__init__")
    counting(cnnlab.device, "resolve_device", cnnlab.train.run)
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(tmp_path / "r"), "--epochs", "1",
                 *SMALL]) == 0
    assert counts == {"validate": 1, "check_data_settings": 1, "check_model": 1, "locate": 1, "__init__": 1,
                      "resolve_device": 1}, counts

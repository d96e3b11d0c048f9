"""``cnnlab export`` and ``predict --model-file``: the exported file computes what the trained network
computes, checked here with ONNX Runtime (and TorchScript) against PyTorch's own forward pass on the
whole committed test subset, for runs trained on the LeNet kernel in bf16, and for lenet_bn,
vgg_mini and resnet_mini."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlab.export
from cnnlab.cli.main import main
from cnnlab.data import get_spec, load_split
from cnnlab.errors import ExportError
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.trained import TrainedRun
from tests.conftest import SUBSET_DATA, SUBSET_TEST, colour_folder

RUNS = {
    "lenet": ["--kernel", "on", "--precision", "bf16"],
    "lenet_bn": ["--lr", "0.1"],
    "vgg_mini": ["--lr", "0.05"],
    "resnet_mini": ["--lr", "0.05"],
}


def train_tiny(run_dir, model, *flags):
    status = main(["train", "--model", model, "--data-dir", str(SUBSET_DATA), "--no-verify", "--train-limit", "512",
                   "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
                   "--run-dir", str(run_dir), *flags])
    assert status == 0
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    return {model: train_tiny(root / model, model, *flags) for model, flags in RUNS.items()}


@pytest.fixture(scope="module")
def test_images():
    images, labels = load_split("fashion-mnist", "test", SUBSET_DATA / "fashion-mnist", verify=False)
    assert len(labels) == SUBSET_TEST
    return images


def pytorch_logits(run_dir, images, tta="none"):
    """The reference: the checkpoint's network in PyTorch, on the images scaled as ToTensor does."""
    model = TrainedRun.open(run_dir).build_model()
    x = images.float() / 255.0
    with torch.no_grad():
        logits = model(x)
        if tta == "flip":
            logits = logits + model(x.flip(-1))
    return logits


def onnx_logits(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    out = [session.run(None, {inp.name: images[i:i + 300].numpy() if inp.type == "tensor(uint8)"
                              else images[i:i + 300].float().numpy()})[0] for i in range(0, len(images), 300)]
    return torch.from_numpy(np.concatenate(out)), session


@pytest.mark.parametrize("model", list(RUNS))
def test_onnx_export_matches_pytorch_on_the_whole_test_set(runs, test_images, model, capsys):
    run_dir = runs[model]
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    assert f"top-1 agrees on {SUBSET_TEST}/{SUBSET_TEST}" in printed
    printed_diff = float(re.search(r"max \|logit difference\| (\S+)", printed).group(1))
    assert printed_diff <= 1e-4
    path = run_dir / "model.onnx"
    assert f"exported: {path}" in printed

    got, session = onnx_logits(path, test_images)
    expected = pytorch_logits(run_dir, test_images)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert (got - expected).abs().max().item() <= 1e-4
    # The batch dimension is dynamic; the input is the dataset's own uint8 layout.
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 28, 28]
    one = session.run(None, {inp.name: test_images[:1].numpy()})[0]
    assert np.allclose(one, expected[:1].numpy(), atol=1e-4)
    meta = json.loads(session.get_modelmeta().custom_metadata_map["cnnlab"])
    assert meta["classes"] == list(get_spec("fashion-mnist").classes)
    assert meta["model"] == model and meta["input"]["dtype"] == "uint8" and meta["tta"] == "none"


def test_kernel_bf16_run_exports_its_fp32_network(runs):
    run_dir = runs["lenet"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["speed"].startswith("compile=off, precision=bf16") and "kernel=lenet" in config["speed"]
    state = load_checkpoint(run_dir)["model_state"]
    assert {t.dtype for t in state.values()} == {torch.float32}


def test_torchscript_export_with_metadata(runs, test_images, capsys):
    run_dir = runs["lenet_bn"]
    out = run_dir / "net.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    assert f"top-1 agrees on {SUBSET_TEST}/{SUBSET_TEST}" in capsys.readouterr().out
    extra = {"cnnlab.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["cnnlab.json"])["classes"] == list(get_spec("fashion-mnist").classes)
    with torch.no_grad():
        got = module(test_images)
    expected = pytorch_logits(run_dir, test_images)
    assert torch.equal(got.argmax(1), expected.argmax(1)) and (got - expected).abs().max() <= 1e-4


def test_float_input_and_built_in_tta(runs, test_images, tmp_path):
    run_dir = runs["lenet_bn"]
    assert main(["export", str(run_dir), "--format", "onnx", "--input-dtype", "float32", "--tta", "flip",
                 "--out", str(tmp_path / "f.onnx")]) == 0
    got, session = onnx_logits(tmp_path / "f.onnx", test_images)
    assert session.get_inputs()[0].type == "tensor(float)"
    expected = pytorch_logits(run_dir, test_images, tta="flip")
    assert torch.equal(got.argmax(1), expected.argmax(1)) and (got - expected).abs().max() <= 1e-4


def test_resize_in_the_file_is_the_training_resize():
    from cnnlab.data.loader import to_float
    from cnnlab.export import Deployed

    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    for size in (32, 20):
        deployed = Deployed(nn.Identity(), (1, 28, 28), size)
        expected = F.interpolate(images.float() / 255.0, size=(size, size), mode="bilinear",
                                 align_corners=False, antialias=True)
        assert torch.allclose(deployed(images), expected, atol=1e-6)
        assert torch.allclose(deployed(images), to_float(images, resize=size), atol=1e-6)


def test_existing_output_is_refused_unless_forced(runs, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", str(runs["lenet_bn"]), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and "--force" in err
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(runs["lenet_bn"]), "--format", "onnx", "--out", str(out), "--force"]) == 0
    assert out.read_bytes() != b"keep me"
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_an_export_finishing_second_at_one_new_out_fails_and_leaves_the_first(runs, tmp_path, capsys, monkeypatch):
    """Two exports to one new --out at once: the one that finishes second is refused in one line, and the
    file is the first one's (here the other export writes the file while this one checks its own)."""
    out = tmp_path / "model.onnx"
    checked = cnnlab.export.check_export

    def other_export_finishes_meanwhile(*args, **kwargs):
        out.write_bytes(b"the other run's model")
        return checked(*args, **kwargs)

    monkeypatch.setattr(cnnlab.export, "check_export", other_export_finishes_meanwhile)
    assert main(["export", str(runs["lenet_bn"]), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out} already exists; pass --force to replace it or choose another --out\n"
    assert out.read_bytes() == b"the other run's model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_unfinished_run_and_unwritable_folder_are_one_line(runs, tmp_path, capsys):
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text("{}")
    assert main(["export", str(started), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint.pt yet" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export", str(runs["lenet_bn"]), "--format", "onnx", "--out", str(blocker / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(blocker) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "started"]


class SVDValues(nn.Module):
    """A layer ONNX has no operator for."""

    def forward(self, x):
        return torch.linalg.svdvals(x.flatten(2)).flatten(1)


def test_a_layer_that_cannot_export_is_named(runs, capsys):
    from cnnlab.export import export_bytes
    from cnnlab.trained import TrainedRun

    run = TrainedRun.from_fields({"model": "custom", "classes": ["a", "b"], "dataset": "fashion-mnist",
                                  "image_shape": [1, 28, 28]}, "a test")
    with pytest.raises(ExportError) as info:
        export_bytes(run, nn.Sequential(nn.Conv2d(1, 2, 3), SVDValues(), nn.Linear(2, 2)).eval(), "onnx")
    message = str(info.value)
    assert "layer 1 (SVDValues)" in message and "linalg_svdvals" in message and "\n" not in message
    assert capsys.readouterr().out == ""   # the exporter's graph dump is not shown


def predicts_as_its_checkpoint(run_dir, image_file, index: int, tmp_path, capsys) -> None:
    """``predict`` of an image file and a split image with the run's ONNX export (ONNX Runtime) prints
    what ``predict`` with its checkpoint (PyTorch) prints."""
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(image_file), "--index", str(index)]) == 0
    from_checkpoint = capsys.readouterr().out
    assert main(["predict", "--model-file", str(tmp_path / "m.onnx"), str(image_file), "--index", str(index)]) == 0
    assert capsys.readouterr().out == from_checkpoint
    assert len(from_checkpoint.splitlines()) == 2


def test_predict_with_model_file_matches_the_checkpoint(runs, tmp_path, capsys):
    from PIL import Image

    images, _ = load_split("fashion-mnist", "test", SUBSET_DATA / "fashion-mnist", verify=False)
    Image.fromarray(images[3, 0].numpy()).save(tmp_path / "shoe.png")
    predicts_as_its_checkpoint(runs["vgg_mini"], tmp_path / "shoe.png", 5, tmp_path, capsys)


def test_predict_refuses_onnx_files_that_are_not_cnnlabs(tmp_path, capsys):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    import onnx
    from onnx import TensorProto, helper

    plain = tmp_path / "plain.onnx"   # a valid ONNX model (an identity), written without cnnlab
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "plain",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 28, 28])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    assert main(["predict", "--model-file", str(plain), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not cnnlab's" in err and "'cnnlab'" in err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    assert main(["predict", "--model-file", str(junk), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not an ONNX model" in err


def test_export_is_refused_without_the_extra(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # as if it were not installed: its import fails
    out = tmp_path / "m.onnx"
    assert main(["export", str(runs["lenet_bn"]), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --format onnx needs onnxruntime, which is not installed; "
                   "install it with: pip install onnxruntime (or, in cnnlab's folder, pip install -e \".[export]\")")
    assert not out.exists()


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    splits = colour_folder(root / "items")
    run_dir = root / "run"
    assert main(["train", "--data", str(root / "items"), "--model", "vgg_mini", "--lr", "0.05", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--no-progress", "--run-dir", str(run_dir)]) == 0
    return run_dir, splits


def test_a_run_on_its_own_colour_data_exports_with_its_normalisation(colour_run, capsys):
    """The file takes the folder's own images (3 x 32 x 32 uint8) and normalises each channel with the
    training split's mean and std; the reference computes those statistics from the PNGs with NumPy."""
    run_dir, splits = colour_run
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    assert "test (100 images): top-1 agrees on 100/100" in printed
    got, session = onnx_logits(run_dir / "model.onnx", torch.from_numpy(splits["test"]))
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32]

    train = splits["train"].astype(np.float64) / 255.0
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    x = (torch.from_numpy(splits["test"]).double() / 255.0 - torch.from_numpy(mean).view(1, 3, 1, 1)) \
        / torch.from_numpy(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = TrainedRun.open(run_dir).build_model()(x.float())
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert (got - expected).abs().max().item() <= 1e-4
    meta = json.loads(session.get_modelmeta().custom_metadata_map["cnnlab"])
    assert np.allclose(meta["normalize"], [mean, std], atol=1e-6)
    assert meta["classes"] == sorted(get_spec("fashion-mnist").classes)


def test_predict_with_the_colour_model_file_matches_the_checkpoint(colour_run, tmp_path, capsys):
    from PIL import Image

    run_dir, splits = colour_run
    Image.fromarray(splits["test"][7].transpose(1, 2, 0)).resize((50, 40)).save(tmp_path / "item.png")
    predicts_as_its_checkpoint(run_dir, tmp_path / "item.png", 3, tmp_path, capsys)


def test_a_run_without_a_test_split_is_checked_on_its_validation_split(tmp_path, capsys):
    colour_folder(tmp_path / "items", n_train=200, with_test=False)
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "items"), "--model", "lenet_bn", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--no-progress", "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "torchscript"]) == 0
    printed = capsys.readouterr().out
    found = re.search(r" val \((\d+) images\): top-1 agrees on \1/\1,", printed)
    assert found and 15 <= int(found.group(1)) <= 25, printed   # the default tenth of 200, per class rounded
    assert main(["evaluate", str(run_dir), "--split", "val", "--out", str(tmp_path / "c.png")]) == 0
    assert f" val ({found.group(1)} images)" in capsys.readouterr().out
    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0   # the split it has
    assert f" val ({found.group(1)} images)" in capsys.readouterr().out
    assert main(["evaluate", str(run_dir), "--split", "test", "--out", str(tmp_path / "c.png")]) == 2
    assert "has no test split: the run trained without a test split" in capsys.readouterr().err
    # The exported file knows its run's splits too: --index scores the validation split, as the run does.
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    capsys.readouterr()
    assert main(["predict", "--model-file", str(run_dir / "model.onnx"), "--index", "0", "--index", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["val[0]", "val[1]"]
    assert main(["predict", str(run_dir), "--index", "0", "--index", "1"]) == 0
    assert [line.split(": ")[0] for line in capsys.readouterr().out.splitlines()] == \
        [line.split(": ")[0] for line in lines]


def with_metadata(source, target, change) -> None:
    """``source`` (an exported ONNX file) written to ``target`` with its cnnlab metadata changed by
    ``change`` (a function of the metadata dict), the graph untouched."""
    import onnx

    proto = onnx.load(str(source))
    (entry,) = [e for e in proto.metadata_props if e.key == "cnnlab"]
    meta = json.loads(entry.value)
    change(meta)
    entry.value = json.dumps(meta)
    onnx.save(proto, str(target))


CRAFTED_METADATA = {   # what is changed -> (the field the error names, what it says the field must be)
    "two classes": (lambda m: m.update(classes=["a", "b"]), "'classes' names 2 classes, but the model gives 10"),
    "no classes": (lambda m: m.update(classes=[]), "'classes' must be a list of class names, got []"),
    "classes as text": (lambda m: m.update(classes="abcdefghij"), "'classes' must be a list of class names"),
    "classes as numbers": (lambda m: m.update(classes=list(range(10))), "'classes' must be a list of class names"),
    "config as a list": (lambda m: m.update(config=[1, 2]), "'config' must be a mapping of setting names"),
    "config out of range": (lambda m: m["config"].update(lr="x"), "'config' is not cnnlab's settings (config: "
                                                                 "learning rate must be a finite number"),
    "input shape short": (lambda m: m["input"].update(shape=["batch", 1, 28]), "'input.shape' must be [batch, "),
    "input shape of another model": (lambda m: m["input"].update(shape=["batch", 1, 32, 32]),
                                     "'input.shape' must be the model's input shape (['batch', 1, 28, 28])"),
    "input of no channels": (lambda m: m["input"].update(shape=["batch", 0, 28, 28]), "'input.shape' must be"),
    "input type of another model": (lambda m: m["input"].update(dtype="float32"),
                                    "'input.dtype' must be the model's input type (tensor(uint8))"),
    "input as a list": (lambda m: m.update(input=[1]), "'input' must be a mapping"),
    "version as text": (lambda m: m.update(version="2"), "'version' must be a whole number"),
    "splits as text": (lambda m: m.update(splits="test"), "'splits' must be a list of split names"),
    "dataset as a number": (lambda m: m.update(dataset=5), "'dataset' must be text"),
    "input size as text": (lambda m: m.update(input_size="x"), "'input_size' must be a side from 1 to 1024"),
    "normalize of another shape": (lambda m: m.update(normalize=[[0.5]]), "'normalize' must be null or [means"),
}


@pytest.fixture(scope="module")
def lenet_file(runs, tmp_path_factory):
    exported = tmp_path_factory.mktemp("exported") / "model.onnx"
    assert main(["export", str(runs["lenet"]), "--format", "onnx", "--out", str(exported)]) == 0
    return exported


@pytest.mark.parametrize("case", list(CRAFTED_METADATA))
def test_a_model_file_with_crafted_metadata_is_one_line_naming_the_field(lenet_file, tmp_path, case, capsys):
    """Each field of an exported file's metadata is checked once, when the file is opened, against what
    export writes and against the graph itself; they once reached predict unchecked (two class names for
    ten logits, a three-number input shape and a config list were tracebacks, class names as one text
    were read letter by letter)."""
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    change, says = CRAFTED_METADATA[case]
    crafted = tmp_path / "模型 crafted.onnx"
    with_metadata(lenet_file, crafted, change)
    capsys.readouterr()
    assert main(["predict", "--model-file", str(crafted), str(tmp_path / "x.png"), "--index", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model file {crafted}: metadata field {says}") and err.count("\n") == 1
    assert err.endswith("re-export the run with `cnnlab export RUN_DIR --format onnx`\n")
    with_metadata(lenet_file, crafted, lambda m: None)   # the same file unchanged predicts
    assert main(["predict", "--model-file", str(crafted), str(tmp_path / "x.png")]) == 0

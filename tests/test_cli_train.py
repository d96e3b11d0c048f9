"""`cnnlab train`, `evaluate` and `predict` as a user runs them: flags, files, messages, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli.main import main
from cnnlab.data import load_split
from cnnlab.inference import load_image, predict_logits
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.trained import TrainedRun
from tests.conftest import SUBSET_TEST

def without_speed_line(err: str) -> str:
    """stderr without the run's ``speed: ...`` line (the training step it chose, printed by every run)."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("speed: "))


SMALL = ["--train-limit", "1024", "--test-limit", "500", "--batch-size", "128", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def _trained_run(tmp_path_factory):
    """One short real run on the committed subset (Adam: off LeNet's plateau fast), trained once."""
    from tests.conftest import SUBSET_DATA, use_subset_registry

    fashion = SUBSET_DATA / "fashion-mnist"
    run = tmp_path_factory.mktemp("runs") / "r"
    with pytest.MonkeyPatch.context() as patch:
        use_subset_registry(patch)
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))   # as isolated_cache does
        code = main(["train", "--data-dir", str(fashion), "--run-dir", str(run), "--epochs", "4", "--lr", "0.01",
                     "--optimizer", "adam", "--batch-size", "64", "--device", "cpu", "--no-progress"])
    assert code == 0
    return run, fashion


@pytest.fixture
def trained_run(_trained_run, subset_registry):
    """The shared run and the data it trained on, with the registry describing that data, as it did."""
    return _trained_run


def test_train_prints_the_books_closing_lines(fashion_dir, tmp_path, capsys):
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(tmp_path / "r"), "--epochs", "1",
                 *SMALL]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "training on cpu"
    assert out[1].startswith("epoch 1/1: train loss ")
    import re
    assert re.fullmatch(r"loss \d+\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", out[2])
    assert re.fullmatch(r"\d+\.\d examples/sec on cpu", out[3])
    assert out[4] == f"run directory: {tmp_path / 'r'}"


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0"], "learning rate must be a positive number, got 0.0"),
    (["--lr", "-1"], "learning rate must be a positive number"),
    (["--batch-size", "0"], "batch size must be a positive integer, got 0"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--model", "nope"], "unknown model 'nope'; known models: "),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--device", "cuda:7"], "cuda"),
    (["--option", "noequals"], "is not key=value"),
    # Every number is finite and in range (NaN passes any range test; a huge seed overflowed torch).
    (["--warmup-epochs", "nan"], "warmup epochs must be a finite number, got nan"),
    (["--momentum", "nan"], "momentum must be a finite number, got nan"),
    (["--weight-decay", "inf"], "weight decay must be a finite number, got inf"),
    (["--lr", "nan"], "learning rate must be a finite number, got nan"),
    (["--lr-gamma", "nan"], "lr gamma must be a finite number, got nan"),
    (["--label-smoothing=-inf"], "label smoothing must be a finite number, got -inf"),
    (["--erase-prob", "nan"], "erase prob must be a finite number, got nan"),
    (["--seed", "99999999999999999999999"], "seed must be an integer from 0 to 4294967295, "
                                            "got 99999999999999999999999"),
    (["--seed", "-1"], "seed must be an integer from 0 to 4294967295, got -1"),
    (["--crop-padding", "1000", "--augment", "crop"], "crop padding 1000 is more than the 28-pixel image it pads; "
                                                      "use at most 28"),
    # --name is a folder inside runs/; --run-dir chooses any other place.
    (["--name", "../../escape"], "--name '../../escape' must be a plain folder name inside runs/ (no '/' and not "
                                 "'..'); use --run-dir to put the run anywhere else"),
    (["--name", ".."], "--name '..' must be a plain folder name"),
    (["--name", "a/b"], "--name 'a/b' must be a plain folder name"),
    # Model options: a boolean is true/false (or 1/0), nothing truthy; shapes must fit the images.
    (["--option", "batch_norm=no"], "model option batch_norm of 'lenet' must be true or false (or 1 or 0), got 'no'"),
    (["--option", "batch_norm=maybe"], "model option batch_norm of 'lenet' must be true or false"),
    (["--option", "batch_norm=2"], "model option batch_norm of 'lenet' must be true or false (or 1 or 0), got 2"),
    (["--option", "batch_norm=False"], "model option batch_norm of 'lenet' must be true or false"),
    (["--option", "dropout=2"], "dropout must be in [0, 1), got 2"),
    (["--option", "dropout=NaN"], "model option dropout of 'lenet' must be a finite number, got nan"),
    (["--option", "kernel_sizes=[100,100]"], "kernel sizes [100, 100] do not fit 28x28 inputs: conv layer 2 gets "
                                             "14x14 pixels, too few for a 100x100 kernel and its 2x2 pool"),
    (["--model", "vgg_mini", "--option", "arch=[[1,-4]]"], "arch must be a list of [convs, channels] pairs of "
                                                           "positive integers (e.g. [[1,16],[1,32],[2,64]]), got [[1, -4]]"),
    (["--model", "vgg_mini", "--option", "arch=bogus"], "arch must be a list of [convs, channels] pairs"),
    (["--model", "vgg_mini", "--option", "arch=[[1,8],[1,8],[1,8],[1,8],[1,8]]"],
     "arch has 5 blocks, each halving the image: 28x28 inputs allow at most 4"),
    (["--model", "vgg_mini", "--option", "hidden=0"], "model option hidden of 'vgg_mini' must be a positive integer"),
    (["--model", "resnet_mini", "--option", "widths=[0]"], "widths must be a list of positive integers, got [0]"),
    (["--model", "densenet_mini", "--option", "growth_rate=-1"], "must be a positive integer, got -1"),
])
def test_bad_flags_fail_fast_with_one_line(flags, message, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--run-dir", str(run), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1
    assert not (run / "checkpoint.pt").exists()


def test_unwritable_run_dir(tmp_path, capsys, fashion_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(blocker / "run"), *SMALL]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(trained_run, capsys):
    run, fashion = trained_run
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--data-dir", str(fashion), "--run-dir", str(run), *SMALL]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_help_documents_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--lr", "0.9"), ("--batch-size", "256"), ("--epochs", "10"), ("--model", "lenet"),
                          ("--dataset", "fashion-mnist"), ("--seed", "0"), ("--device", "auto")]:
        assert flag in text and f"(default: {default})" in text


def test_evaluate_matches_an_independent_count(trained_run, capsys):
    run, fashion = trained_run
    assert main(["evaluate", str(run), "--data-dir", str(fashion), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    model = TrainedRun.open(run).build_model()
    images, labels = load_split("fashion-mnist", "test", str(fashion))
    with torch.no_grad():
        correct = sum(int((model(images[i:i + 500].float() / 255).argmax(1) == labels[i:i + 500]).sum())
                      for i in range(0, len(labels), 500))
    assert "all  " in out and f"{correct:>7} / {SUBSET_TEST}" in out
    assert (run / "confusion.png").exists()
    with Image.open(run / "confusion.png") as im:
        assert im.format == "PNG"


def test_predict_on_a_png_of_a_test_image(trained_run, tmp_path, capsys):
    run, fashion = trained_run
    images, labels = load_split("fashion-mnist", "test", str(fashion))
    model = TrainedRun.open(run).build_model()
    i = 2  # a trouser
    # As a user's photo: larger, RGB, dark object on a light background.
    photo = Image.fromarray(255 - images[i, 0].numpy()).resize((112, 112), Image.Resampling.NEAREST).convert("RGB")
    photo.save(tmp_path / "photo.png")
    loaded, inverted = load_image(tmp_path / "photo.png")
    assert inverted and loaded.shape == (1, 28, 28) and loaded.dtype == torch.uint8
    assert np.abs(loaded[0].numpy().astype(int) - images[i, 0].numpy().astype(int)).mean() < 8
    expected = predict_logits(model, images[i:i + 1]).argmax(1).item()
    classes = load_checkpoint(run)["classes"]
    assert main(["predict", str(run / "checkpoint.pt"), str(tmp_path / "photo.png"), "--index", str(i),
                 "--top-k", "2", "--data-dir", str(fashion), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'photo.png'} (inverted): {classes[expected]} ")
    assert lines[1].startswith(f"test[{i}] (true: {classes[int(labels[i])]}): {classes[expected]} ")
    assert all(len(l.split(", ")) == 2 for l in lines)
    # --invert no keeps the light background: the input really differs.
    not_inverted, flag = load_image(tmp_path / "photo.png", invert="no")
    assert not flag and not_inverted.float().mean() > 128


def test_predict_gives_a_16_bit_image_the_answer_of_its_8_bit_copy(trained_run, tmp_path, capsys):
    """A test image saved as 16-bit grayscale is scaled to 8 bits (v / 257), not clipped to white."""
    run, fashion = trained_run
    images, _ = load_split("fashion-mnist", "test", str(fashion))
    paths = []
    for i in range(8):
        eight = images[i, 0].numpy()
        Image.fromarray(eight).save(tmp_path / f"{i}-8.png")
        Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / f"{i}-16.png")
        paths += [str(tmp_path / f"{i}-8.png"), str(tmp_path / f"{i}-16.png")]
    assert main(["predict", str(run), *paths, "--top-k", "1", "--invert", "no", "--device", "cpu"]) == 0
    answers = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert len(answers) == 16
    assert answers[0::2] == answers[1::2]


def test_predict_refuses_bad_inputs(trained_run, tmp_path, capsys):
    run, _ = trained_run
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(run), str(tmp_path / "notes.png")]) == 2
    assert "is not an image" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    assert main(["predict", str(corrupt), "--index", "0"]) == 2
    assert "is corrupt or not a cnnlab checkpoint" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(trained_run, tmp_path):
    from cnnlab.errors import CheckpointError
    from cnnlab.fileio import save_torch

    run, _ = trained_run
    ckpt = load_checkpoint(run)
    ckpt["model_state"] = {k: v[..., :1] if v.ndim else v for k, v in ckpt["model_state"].items()}
    ckpt.pop("path")
    save_torch(tmp_path / "other.pt", ckpt)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        TrainedRun.open(tmp_path / "other.pt").build_model()


def test_pickled_objects_are_never_loaded(tmp_path):
    """A checkpoint carrying an arbitrary Python object is refused (weights_only=True)."""
    from cnnlab.errors import CheckpointError

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "cnnlab-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="corrupt or not a cnnlab checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_ctrl_c_in_a_real_process_then_resume(fashion_subset, tmp_path):
    """`cnnlab train` gets SIGINT mid-run, saves, exits 130; `--resume` finishes it.  The processes do not
    share this one's registry, so they trust the committed subset (--no-verify, kept by the resume)."""
    import signal
    import time

    run = tmp_path / "r"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "cnnlab", "train", "--data-dir", str(fashion_subset), "--no-verify",
           "--run-dir", str(run), "--epochs", "30", "--test-limit", "200", "--batch-size", "64",
           "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # wait for the first finished epoch
        if line.split()[:2] == ["epoch", "1/30:"]:
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "continue with `cnnlab train --resume" in err
    ckpt = load_checkpoint(run)
    assert 1 <= ckpt["state"]["epoch"] < 30 and not ckpt["complete"]
    done = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--resume", str(run), "--epochs",
                           str(ckpt["state"]["epoch"] + 1), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming on cpu" in done.stdout and "examples/sec on cpu" in done.stdout
    assert load_checkpoint(run)["complete"]


def test_resume_with_more_epochs_extends_a_finished_run(fashion_dir, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(run), "--epochs", "1", *SMALL]) == 0
    assert load_checkpoint(run)["complete"]
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming on cpu at epoch 2" in out and "epoch 2/2:" in out
    ckpt = load_checkpoint(run)
    assert ckpt["state"]["epoch"] == 2 and ckpt["complete"]


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(fashion_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    """ENOSPC inside torch.save used to surface as torch's RuntimeError ('unexpected pos ...')."""
    import errno

    run = tmp_path / "r"
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(run), "--epochs", "1", *SMALL]) == 0
    capsys.readouterr()

    class FullDisk:
        """A file on a disk with room for 1000 more bytes."""

        def __init__(self, f):
            self._f, self._room = f, 1000

        def write(self, data):
            if len(data) > self._room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self._room -= len(data)
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FullDisk(f) if os.readlink(f"/proc/self/fd/{fd}").startswith(str(run / ".checkpoint.pt.")) else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    err = without_speed_line(capsys.readouterr().err)
    assert err == (f"error: could not write {run / 'checkpoint.pt'}: No space left on device; "
                   f"check free space and permissions\n")
    monkeypatch.undo()
    assert load_checkpoint(run)["state"]["epoch"] == 1
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


@pytest.mark.parametrize("flags, named", [
    (["--lr", "0.001", "--batch-size", "7", "--model", "vgg_mini"], "--lr, --batch-size, --model cannot change"),
    (["--option", "pooling=max"], "--option cannot change (start a new run, or leave it out)"),
    (["--dataset", "mnist"], "--dataset cannot change"),
    (["--preset", "small"], "--preset cannot change"),
    (["--name", "other"], "--name cannot change"),
    (["--tta", "flip"], "--tta cannot change"),
])
def test_resume_refuses_flags_that_would_change_the_run(trained_run, capsys, flags, named):
    run, _ = trained_run
    before = (run / "config.json").read_bytes(), (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "5", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume continues {run} with its saved settings; {named}")
    assert err.count("\n") == 1
    assert ((run / "config.json").read_bytes(), (run / "checkpoint.pt").read_bytes()) == before


def test_resume_refuses_fewer_epochs_than_done(trained_run, capsys):
    run, _ = trained_run
    before = (run / "config.json").read_bytes(), (run / "summary.json").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: --epochs 1 is fewer than the 4 epochs {run} has already trained; "
                                       f"pass --epochs 4 or more to resume it (or leave --epochs out)\n")
    assert ((run / "config.json").read_bytes(), (run / "summary.json").read_bytes()) == before


def test_data_dir_is_stored_absolute_and_resume_takes_a_new_one(fashion_dir, tmp_path, capsys, monkeypatch):
    import json

    (tmp_path / "fm").symlink_to(fashion_dir)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data-dir", "fm", "--run-dir", "base", "--epochs", "1", *SMALL]) == 0
    config = json.loads((tmp_path / "base" / "config.json").read_text())["config"]
    assert config["data_dir"] == str(tmp_path / "fm")
    (tmp_path / "fm").rename(tmp_path / "moved")   # the data moved: --data-dir says where it is now
    monkeypatch.chdir(tmp_path / "other")
    capsys.readouterr()
    assert main(["train", "--resume", "../base", "--epochs", "2", "--data-dir", "../moved", "--no-progress"]) == 0
    assert "resuming on cpu at epoch 2" in capsys.readouterr().out
    config = json.loads((tmp_path / "base" / "config.json").read_text())["config"]
    assert config["data_dir"] == str(tmp_path / "moved") and config["epochs"] == 2


@pytest.mark.parametrize("field, value, message", [
    ("version", "x", "field 'version' must be an integer, got 'x'"),
    ("num_classes", "x", "field 'num_classes' must be a positive integer, got 'x'"),
    ("in_channels", 0, "field 'in_channels' must be a positive integer, got 0"),
    ("model_state", [1, 2], "field 'model_state' must be a mapping of parameter names to tensors, got [1, 2]"),
    ("model_state", torch.zeros(3), "field 'model_state' must be a mapping of parameter names to tensors, "
                                    "got a tensor of shape (3,)"),
    ("model_options", [1, 2], "field 'model_options' must be a mapping of option names to values, got [1, 2]"),
    ("model_options", {"batch_norm": "maybe"}, "describes a model this cnnlab cannot build (model option "
                                               "batch_norm of 'lenet' must be true or false"),
    ("classes", ["a"], "field 'classes' must be 10 names (num_classes), got ['a']"),
    ("state", {"epoch": "x"}, "field 'state' must be a mapping with the epoch and step reached"),
    ("model", None, "lacks model; it is incomplete"),
])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_crafted_checkpoints_are_one_line_errors(trained_run, tmp_path, capsys, command, field, value, message):
    from cnnlab.fileio import save_torch

    run, fashion = trained_run
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    if value is None:
        del ckpt[field]
    else:
        ckpt[field] = value
    save_torch(tmp_path / "X.pt", ckpt)
    extra = ["--index", "0"] if command == "predict" else []
    assert main([command, str(tmp_path / "X.pt"), "--data-dir", str(fashion), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {tmp_path / 'X.pt'}") and message in err, err
    assert err.count("\n") == 1


def test_divergence_before_any_checkpoint_says_none_was_written(fashion_dir, tmp_path, capsys):
    run = tmp_path / "div"
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(run), "--lr", "1e6", "--epochs", "1",
                 *SMALL]) == 2
    err = without_speed_line(capsys.readouterr().err)
    assert err.startswith("error: the loss diverged") and err.endswith("; no checkpoint was written yet\n")
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("flags, where", [(["--name", "nm"], os.path.join("runs", "nm")),
                                          (["--run-dir", "elsewhere"], "elsewhere")])
def test_ctrl_c_names_the_run_directory_to_resume(fashion_dir, tmp_path, capsys, monkeypatch, flags, where):
    import cnnlab.train
    from cnnlab.train import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted("stopped at epoch 1, batch 3", stopped_at=(0, 3), saved_at=(0, 3))

    monkeypatch.setattr(cnnlab.train, "train", interrupted)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data-dir", str(fashion_dir), *flags, *SMALL]) == 130
    assert capsys.readouterr().err == ("interrupted (stopped at epoch 1, batch 3); checkpoint saved: "
                                       f"continue with `cnnlab train --resume {where}`\n")


def test_ctrl_c_with_the_default_run_directory_names_it(fashion_dir, tmp_path, capsys, monkeypatch):
    import cnnlab.train
    from cnnlab.train import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted("stopped after epoch 1", stopped_at=(1, 0), saved_at=(1, 0))

    monkeypatch.setattr(cnnlab.train, "train", interrupted)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data-dir", str(fashion_dir), *SMALL]) == 130
    err = capsys.readouterr().err
    import re
    assert re.fullmatch(r"interrupted \(stopped after epoch 1\); checkpoint saved: continue with "
                        r"`cnnlab train --resume runs/\d{8}-\d{6}`\n", err), err


@pytest.mark.parametrize("saved_at, said", [
    ((1, 0), "interrupted (stopped at epoch 2, batch 3); the checkpoint kept is the one after epoch 1: continue with "
             "`cnnlab train --resume R`"),
    (None, "interrupted (stopped at epoch 2, batch 3) before the first checkpoint was written; start the run again")])
def test_ctrl_c_says_which_checkpoint_is_on_disk(fashion_dir, tmp_path, capsys, monkeypatch, saved_at, said):
    """A distributed run keeps its last epoch's checkpoint on Ctrl-C (a mid-epoch one would hold rank 0's
    share of the metrics only): the line said "checkpoint saved" at the stopping point all the same."""
    import cnnlab.train
    from cnnlab.train import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted("stopped at epoch 2, batch 3", stopped_at=(1, 3), saved_at=saved_at)

    monkeypatch.setattr(cnnlab.train, "train", interrupted)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--run-dir", "R", "--data-dir", str(fashion_dir), *SMALL]) == 130
    assert capsys.readouterr().err == said + "\n"


@pytest.mark.parametrize("flags, message", [
    (["--nproc", "2", "--dist-timeout", "0"], "distributed timeout (--dist-timeout) must be a positive number of "
                                              "seconds, got 0.0"),
    (["--nproc", "2", "--dist-timeout", "nan"], "got nan"),
    (["--nproc", "2", "--dist-timeout=-1"], "got -1.0"),
    (["--nproc", "2", "--dist-timeout", "inf"], "got inf"),
    (["--nproc", "3"], "batch size 256 does not split equally over 3 processes; use a multiple of 3 such as "
                       "255 or 258"),
    (["--nproc", "2", "--lr", "nan"], "learning rate must be a finite number, got nan"),
    (["--nproc", "2", "--option", "batch_norm=no"], "model option batch_norm"),
    (["--nproc", "0"], "--nproc must be a positive integer, got 0"),
])
def test_nproc_checks_the_flags_before_starting_any_process(tmp_path, capsys, monkeypatch, flags, message):
    import cnnlab.distributed

    def launched(*args, **kwargs):
        raise AssertionError("worker processes were started")

    monkeypatch.setattr(cnnlab.distributed, "launch", launched)
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_name_cannot_escape_runs(fashion_dir, tmp_path, capsys, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["train", "--data-dir", str(fashion_dir), "--name", "../../escape", "--epochs", "1", *SMALL]) == 2
    assert capsys.readouterr().err.startswith("error: --name '../../escape' must be a plain folder name")
    assert not (tmp_path / "a" / "escape").exists() and not (work / "runs").exists()


def test_a_run_saved_for_a_gpu_resumes_on_the_cpu_with_device(fashion_dir, tmp_path, capsys):
    """A run started with --device cuda (on a GPU machine) can go on elsewhere: --resume takes --device."""
    import json

    run = tmp_path / "r"
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(run), "--epochs", "1", *SMALL]) == 0
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["device"] = "cuda"           # as written on a GPU machine
    (run / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--device", "cpu", "--no-progress"]) == 0
    assert "resuming on cpu at epoch 2" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["config"]["device"] == "cpu"


def test_a_fast_path_asked_for_but_unavailable_is_noted_once(fashion_dir, tmp_path, capsys):
    assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(tmp_path / "a"), "--epochs", "1",
                 "--kernel", "on", "--option", "batch_norm=true", *SMALL]) == 0
    err = capsys.readouterr().err
    assert err.startswith("speed: ") and err.count("\n") == 1
    assert "kernel=off (kernel unavailable: batch norm" in err
    from cnnlab.kernels.lenet import native

    if native.load("f32")[1] is None:    # else the default run says that the C passes are missing
        assert main(["train", "--data-dir", str(fashion_dir), "--run-dir", str(tmp_path / "b"), "--epochs", "1",
                     *SMALL]) == 0
        assert "unavailable" not in capsys.readouterr().err


def test_nproc_resume_with_fewer_epochs_is_refused_before_starting_any_process(trained_run, capsys, monkeypatch):
    import cnnlab.distributed

    monkeypatch.setattr(cnnlab.distributed, "launch", lambda *a, **k: pytest.fail("worker processes were started"))
    run, _ = trained_run
    assert main(["train", "--resume", str(run), "--nproc", "2", "--epochs", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: --epochs 1 is fewer than the 4 epochs {run} has already trained; "
                                       f"pass --epochs 4 or more to resume it (or leave --epochs out)\n")


def test_no_verify_trains_on_the_committed_subset_and_evaluate_checks_as_the_run_did(fashion_subset, tmp_path,
                                                                                    capsys):
    """A run on trusted files records verify=false; evaluate and inspect then read the same files without
    --no-verify, while a new train on them without it is refused by checksum."""
    import json

    run = tmp_path / "r"
    assert main(["train", "--data-dir", str(fashion_subset), "--no-verify", "--run-dir", str(run), "--epochs", "1",
                 "--batch-size", "128", "--device", "cpu", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["verify"] is False
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    assert "(1000 images)" in capsys.readouterr().out
    assert main(["train", "--data-dir", str(fashion_subset), "--run-dir", str(tmp_path / "r2"), "--epochs", "1",
                 "--no-progress"]) == 2
    assert "--no-verify trusts the files" in capsys.readouterr().err

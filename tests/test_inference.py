"""Scoring a trained model outside training: predict_logits, as `cnnlab evaluate` and `predict` use it."""

from __future__ import annotations

import pytest
import torch

from cnnlab.inference import predict_logits
from cnnlab.models import create


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_predict_logits_keeps_no_autograd_graph_and_restores_the_mode(tta):
    """Without inference mode every batch's logits held its whole graph (all activations), and
    `cnnlab evaluate` of a GoogLeNet run was killed for memory."""
    torch.manual_seed(0)
    model = create("lenet", batch_norm=True).train()
    images = torch.randint(0, 256, (70, 1, 28, 28), dtype=torch.uint8)
    logits = predict_logits(model, images, batch_size=32, tta=tta)
    assert logits.shape == (70, 10)
    assert not logits.requires_grad and logits.grad_fn is None
    assert model.training          # the caller's mode is back
    with torch.no_grad():          # eval mode was used: batch norm's running statistics, not the batch's
        model.eval()
        x = images.float() / 255
        expected = model(x) + (model(x.flip(-1)) if tta == "flip" else 0)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_evaluate_predict_and_inspect_find_the_data_the_run_trained_on(fashion_subset, tmp_path, capsys, monkeypatch):
    import shutil

    from cnnlab.cli.main import main
    from cnnlab.data import sources

    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())              # no system copy,
    monkeypatch.setenv(sources.MIRRORS_ENV, "http://127.0.0.1:9/")     # and no download

    data = tmp_path / "my-data"
    shutil.copytree(fashion_subset, data)
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(data), "--no-verify", "--run-dir", str(run), "--epochs", "1", "--train-limit", "512",
                 "--test-limit", "100", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    # no --data-dir, no CNNLAB_DATA, an empty user cache: the run's own folder is used
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    assert "(1000 images)" in capsys.readouterr().out
    assert main(["predict", str(run), "--index", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("test[0] (true: ankle boot): ")
    # once that folder is gone, the usual search runs (and here finds nothing)
    shutil.rmtree(data)
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    assert "fashion-mnist not found" in capsys.readouterr().err
    assert main(["inspect", str(run)]) == 2          # inspect looks the same way (it named a --data-dir
    assert "fashion-mnist not found" in capsys.readouterr().err   # the user never gave)

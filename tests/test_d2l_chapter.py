"""The chapter's chapter-6 code, unchanged but for its import, runs on cnnlab against real Fashion-MNIST
images: the committed subset, found through CNNLAB_DATA and verified as the full dataset would be."""

from __future__ import annotations

import math
import re

import pytest
import torch

from book_code import CNNLAB_IMPORTS, SHAPE_TABLE_CODE, python_blocks, chapter_text, shape_table_lines
from conftest import SUBSET_TEST, SUBSET_TRAIN

CI_EPOCHS = 1
"""The chapter trains for 10 epochs; here one is enough to show the loop runs (benchmarks/d2l_chapter.py runs 10)."""


@pytest.mark.slow
def test_chapter_blocks_run_unchanged_with_cnnlab_d2l(fashion_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CNNLAB_DATA", str(fashion_dir))
    monkeypatch.setenv("CNNLAB_ANIMATOR", str(tmp_path / "animator.png"))
    text = chapter_text()
    blocks = python_blocks(text)
    assert len(blocks) == 5 and blocks[0].startswith("net = nn.Sequential(")

    namespace: dict = {"__name__": "__chapter__"}
    exec(CNNLAB_IMPORTS, namespace)
    assert namespace["d2l"].__name__ == "cnnlab.d2l"

    exec(blocks[0], namespace)
    exec(SHAPE_TABLE_CODE, namespace)
    printed = capsys.readouterr().out.splitlines()
    assert [" ".join(line.split()) for line in printed] == shape_table_lines(text)

    net = namespace["net"]
    before = [p.detach().clone() for p in net.parameters()]
    asked_epochs = []
    for block in blocks[1:]:
        if block.startswith("lr, num_epochs"):
            chapter_train_ch6 = namespace["train_ch6"]

            def shortened(net, train_iter, test_iter, num_epochs, lr, device):
                asked_epochs.append(num_epochs)
                return chapter_train_ch6(net, train_iter, test_iter, CI_EPOCHS, lr, device)

            namespace["train_ch6"] = shortened
        exec(block, namespace)
    assert asked_epochs == [10]
    # The chapter's batch_size = 256 over the subset's images (the full data gives 235 and 40 batches).
    assert len(namespace["train_iter"]) == math.ceil(SUBSET_TRAIN / 256) == 8
    assert len(namespace["test_iter"]) == math.ceil(SUBSET_TEST / 256) == 4

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "training on cpu" or lines[0].startswith("training on cuda")
    assert re.fullmatch(r"loss \d+\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", lines[-2])
    assert re.fullmatch(r"\d+\.\d examples/sec on (cpu|cuda:\d+)", lines[-1])
    test_acc = float(lines[-2].rsplit(" ", 1)[1])
    # The chapter trained the net it built: every parameter moved, and the chapter's evaluate_accuracy_gpu
    # on the trained net agrees with the printed test accuracy.
    assert namespace["net"] is net
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    test_iter = namespace["test_iter"]
    assert namespace["evaluate_accuracy_gpu"](net, test_iter) == pytest.approx(test_acc, abs=5e-4)
    assert (tmp_path / "animator.png").stat().st_size > 0

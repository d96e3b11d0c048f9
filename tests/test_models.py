"""LeNet is exactly the book's network; the registry; the shape table and counts."""

from __future__ import annotations

import pytest
import torch

from cnnlab.errors import ConfigError
from cnnlab.models import create, format_shape_table, format_summary, layer_stats, list_models
from cnnlab.cli.main import main
from book_code import book_net, chapter_text, shape_table_lines


def chapter_table_lines() -> list[str]:
    return shape_table_lines(chapter_text())


def test_lenet_is_the_book_network():
    ours, ref = create("lenet"), book_net()
    assert [type(m) for m in ours] == [type(m) for m in ref]
    assert repr(ours) == repr(ref)  # same layers with the same hyper-parameters
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]


def test_shape_table_matches_the_chapter_text():
    table = format_shape_table(layer_stats(create("lenet"))).splitlines()
    expected = chapter_table_lines()
    assert len(table) == len(expected) == 12
    # The chapter's rendering shows the tab as spaces; the words and shapes must be identical.
    assert [" ".join(l.split()) for l in table] == expected
    assert table[0] == "Conv2d output shape:\t torch.Size([1, 6, 28, 28])"


def test_shape_table_equals_the_books_own_loop():
    X = torch.rand(size=(1, 1, 28, 28), dtype=torch.float32)
    book = []
    for layer in book_net():
        X = layer(X)
        book.append(f"{layer.__class__.__name__} output shape:\t {X.shape}")
    assert format_shape_table(layer_stats(create("lenet"))) == "\n".join(book)


def test_parameter_and_mac_counts_by_hand():
    stats = layer_stats(create("lenet"))
    params = [s.params for s in stats if s.params]
    # conv1 6*(1*25)+6, conv2 16*(6*25)+16, fc 400*120+120, 120*84+84, 84*10+10
    assert params == [156, 2416, 48120, 10164, 850]
    macs = [s.macs for s in stats if s.macs]
    # conv1: 6*28*28 outputs x 25; conv2: 16*10*10 x 150; dense: in*out
    assert macs == [6 * 28 * 28 * 25, 16 * 10 * 10 * 150, 400 * 120, 120 * 84, 84 * 10]
    summary = format_summary(stats)
    assert "61,706" in summary and "416,520" in summary


def test_registry():
    assert "lenet" in list_models()
    with pytest.raises(ConfigError, match="unknown model 'nope'.*lenet"):
        create("nope")
    with pytest.raises(ConfigError, match="no option"):
        create("lenet", wings=3)
    assert create("lenet", num_classes=7)(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_cli_summary_prints_the_table(capsys):
    assert main(["summary", "--model", "lenet"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:12] == format_shape_table(layer_stats(create("lenet"))).splitlines()
    assert "total" in out and "61,706" in out

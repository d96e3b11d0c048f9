"""Tables line up on screen with Chinese, Japanese and Korean names: a wide character takes two columns."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.cli.main import main
from cnnlab.compare import markdown_table
from cnnlab.inference import Evaluation
from cnnlab.models import format_summary, layer_stats
from cnnlab.text import display_width, pad


@pytest.mark.parametrize("text, columns", [
    ("", 0), ("cat", 3), ("卷积", 4), ("ねこ", 4), ("고양이", 6), ("卷积 网络", 9),
    ("ｆｕｌｌ", 8),               # full-width Latin letters
    ("d2l笔记：", 9),              # a full-width colon
    ("e\u0301", 1),                # e and a combining acute accent: one é on screen
    ("a\u200bb", 2),               # a zero-width space between
    ("ä", 1), ("α", 1), ("ø", 1),  # narrow and ambiguous letters take one column
])
def test_display_width_counts_terminal_columns(text, columns):
    assert display_width(text) == columns


def test_pad_fills_to_display_columns():
    assert pad("猫", 5) == "猫   "
    assert pad("猫", 5, ">") == "   猫"
    assert pad("卷积 网络", 4) == "卷积 网络"          # wider already: unchanged
    with pytest.raises(ValueError):
        pad("x", 3, "^")


def test_per_class_table_aligns_chinese_class_names():
    confusion = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 3, 1], [0, 0, 0, 4]])
    evaluation = Evaluation(accuracy=10 / 12, per_class=[0.5, 1.0, 0.75, 1.0], confusion=confusion,
                            classes=["猫", "狗狗", "cat", "卷积 网络"], predicted=torch.zeros(12))
    assert evaluation.table().split("\n") == [
        "class      accuracy  correct / total",
        "猫            0.500        1 / 2",
        "狗狗          1.000        2 / 2",
        "cat           0.750        3 / 4",
        "卷积 网络     1.000        4 / 4",
        "all           0.833       10 / 12",
    ]


def test_per_class_table_with_one_letter_classes_keeps_its_header_aligned():
    evaluation = Evaluation(accuracy=1.0, per_class=[1.0, 1.0], confusion=torch.eye(2, dtype=torch.long),
                            classes=["0", "1"], predicted=torch.zeros(2))
    assert evaluation.table().split("\n") == [
        "class  accuracy  correct / total",
        "0         1.000        1 / 1",
        "1         1.000        1 / 1",
        "all       1.000        2 / 2",
    ]


def test_compare_table_aligns_chinese_run_names():
    assert markdown_table(["run", "acc"], [["卷积", "0.9"], ["cat", "0.8"]]).split("\n") == [
        "| run  | acc |",
        "|------|-----|",
        "| 卷积 | 0.9 |",
        "| cat  | 0.8 |",
        "",
    ]


def test_layer_table_aligns_chinese_layer_names():
    model = nn.Sequential(OrderedDict([("卷积层", nn.Conv2d(1, 2, 3)), ("f", nn.Flatten())]))
    assert format_summary(layer_stats(model, (1, 1, 4, 4))).split("\n") == [
        "#       layer    output shape  params  MACs",
        "-------------------------------------------",
        "卷积层  Conv2d   (1, 2, 2, 2)      20    72",
        "f       Flatten  (1, 8)             0     0",
        "-------------------------------------------",
        "        total                      20    72",
    ]


def test_data_info_aligns_chinese_class_names(tmp_path, capsys):
    for split in ("train", "test"):
        for name, n in (("cat", 1), ("ねこ", 2), ("卷积 网络", 3)):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(tmp_path / split / name / f"{i}.png")
    assert main(["data", "info", "--data", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.split("\n")
    start = lines.index("train: 6 examples") + 1
    assert lines[start:start + 3] == [
        "  cat             1",
        "  ねこ            2",
        "  卷积 网络       3",
    ]

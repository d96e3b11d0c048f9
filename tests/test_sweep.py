"""A sweep of two tiny cells trains two run directories, writes its table, and skips finished cells."""

import csv

from cnnlab.sweep import cell_config, parse_axis, results_markdown, run_sweep
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.config import TrainConfig


def test_axes_go_to_config_fields_or_model_options():
    assert parse_axis("pooling=avg,max") == ("pooling", ["avg", "max"])
    assert parse_axis("lr=0.1,0.9") == ("lr", [0.1, 0.9])
    config = cell_config(TrainConfig(), {"pooling": "max", "lr": 0.1})
    assert config.lr == 0.1 and config.model_options == {"pooling": "max"}


def test_two_cell_sweep_writes_table_and_skips_finished_cells(fashion_dir, tmp_path):
    base = TrainConfig(data_dir=str(fashion_dir), train_limit=64, test_limit=32, batch_size=32, epochs=1)
    axes = [parse_axis("pooling=avg,max")]
    rows = run_sweep(base, axes, tmp_path)
    assert [r["pooling"] for r in rows] == ["avg", "max"]
    for cell, row in zip(("pooling-avg", "pooling-max"), rows):
        assert (tmp_path / cell / "summary.json").exists() and (tmp_path / cell / "checkpoint.pt").exists()
        assert row["params"] == sum(t.numel() for t in load_checkpoint(tmp_path / cell)["model_state"].values())
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["pooling"] for r in table] == ["avg", "max"]
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in table)
    assert (tmp_path / "results.md").read_text() == results_markdown(rows, ["pooling"])
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (tmp_path / "pooling-avg" / "checkpoint.pt").stat().st_mtime_ns
    again = run_sweep(base, axes, tmp_path)
    assert (tmp_path / "pooling-avg" / "checkpoint.pt").stat().st_mtime_ns == before
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in rows]


def test_two_axes_add_a_cross_table():
    rows = [{"pooling": p, "activation": a, "test_acc": acc, "train_acc": 0.5, "train_loss": 1.0,
             "train_seconds": 1.0, "params": 10}
            for (p, a), acc in zip([("avg", "sigmoid"), ("avg", "relu"), ("max", "sigmoid"), ("max", "relu")],
                                   [0.81, 0.88, 0.83, 0.89])]
    text = results_markdown(rows, ["pooling", "activation"])
    assert "| pooling \\ activation | sigmoid | relu |" in text
    assert "| max | 0.8300 | 0.8900 |" in text


def test_grid_values_keep_lists_whole_and_join_augmentations_with_plus():
    from cnnlab.sweep import cell_name

    assert parse_axis("channels=[1,2],[3,4]") == ("channels", [[1, 2], [3, 4]])
    assert parse_axis('arch=[[1,8],[1,16]],[[2,8]]') == ("arch", [[[1, 8], [1, 16]], [[2, 8]]])
    assert parse_axis("augment=flip,none") == ("augment", [["flip"], []])
    assert parse_axis("augment=crop+flip,flip") == ("augment", [["crop", "flip"], ["flip"]])
    config = cell_config(TrainConfig(), {"augment": ["crop", "flip"]}).validate()
    assert config.augment == ["crop", "flip"] and config.model_options == {}
    assert cell_name({"augment": ["crop", "flip"]}) == "augment-crop+flip"
    assert cell_name({"augment": []}) == "augment-none"
    assert cell_name({"channels": [1, 2]}) == "channels-[1,2]"


def test_a_bad_value_in_a_later_cell_is_refused_before_any_training(tmp_path, capsys):
    from cnnlab.cli.main import main

    assert main(["sweep", "--grid", "pooling=avg,bogus", "--root", str(tmp_path / "s"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'lenet' cannot be built with") and "unknown pooling 'bogus'" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "s" / "pooling-avg").exists()


def test_an_unwritable_root_names_the_root_flag(tmp_path, capsys):
    from cnnlab.cli.main import main

    (tmp_path / "file").write_text("x")
    assert main(["sweep", "--grid", "pooling=avg,max", "--root", str(tmp_path / "file" / "s"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: run directory {tmp_path / 'file' / 's'} is not writable")
    assert err.endswith("; choose another --root\n")


def test_cells_that_hold_out_a_validation_split_are_compared_by_it(fashion_dir, tmp_path):
    """With --val-fraction each cell reports its validation accuracy, and the cross table and chart
    compare by it (settings chosen by the test split are tuned to it); a grid over val_fraction itself
    leaves the cell without one blank.  A sweep on data without a test split once crashed drawing
    its chart (no test accuracy to draw)."""
    import json

    base = TrainConfig(data_dir=str(fashion_dir), train_limit=128, test_limit=32, batch_size=32, epochs=1)
    axes = [parse_axis("val_fraction=0,0.25"), parse_axis("lr=0.9")]
    rows = run_sweep(base, axes, tmp_path)
    summaries = [json.loads((tmp_path / cell / "summary.json").read_text())
                 for cell in ("val_fraction-0_lr-0.9", "val_fraction-0.25_lr-0.9")]
    assert [r["val_acc"] for r in rows] == [None, summaries[1]["val_acc"]]
    assert [r["test_acc"] for r in rows] == [s["test_acc"] for s in summaries]
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:3] == ["val_fraction", "lr", "val_acc"]
    assert table[0]["val_acc"] == "" and float(table[1]["val_acc"]) == summaries[1]["val_acc"]
    text = (tmp_path / "results.md").read_text()
    assert "validation accuracy (val_fraction down, lr across)" in text
    assert f"| 0.25 | {summaries[1]['val_acc']:.4f} |" in text and "| 0 |  |" in text
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_trained_with_other_settings_is_refused_not_reported_as_this_sweeps(fashion_dir, tmp_path, capsys):
    """Re-running a sweep into the same --root with another learning rate (or more epochs) once printed
    "finished earlier, skipped" and tabulated the old cell's numbers under the new settings; an
    interrupted cell was resumed with its old settings."""
    from cnnlab.cli.main import main

    flags = ["--data-dir", str(fashion_dir), "--train-limit", "64", "--test-limit", "32", "--batch-size", "32",
             "--device", "cpu"]
    root = tmp_path / "sweep 扫描"
    assert main(["sweep", "--grid", "pooling=avg", "--root", str(root), "--epochs", "1", *flags]) == 0
    table = (root / "results.md").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["sweep", "--grid", "pooling=avg", "--root", str(root), "--epochs", "1", *flags]) == 0
    assert "pooling-avg: finished earlier, skipped" in capsys.readouterr().out
    cell = root / "pooling-avg"
    for changed, shown in ((["--epochs", "1", "--lr", "0.5"], "learning rate 0.9 (asked: 0.5); "),
                           (["--epochs", "2"], "epochs 1 (asked: 2); ")):
        assert main(["sweep", "--grid", "pooling=avg", "--root", str(root), *changed, *flags]) == 2
        err = capsys.readouterr().err
        assert err == (f"error: sweep cell {cell} trained other settings than this sweep asks: {shown}"
                       f"sweep into another --root, or delete {cell} to train the cell again\n")
    (cell / "summary.json").unlink()   # as if interrupted: the checkpoint is there, the summary not yet
    assert main(["sweep", "--grid", "pooling=avg", "--root", str(root), "--epochs", "1", "--lr", "0.5", *flags]) == 2
    assert "learning rate 0.9 (asked: 0.5)" in capsys.readouterr().err
    for damaged, why in ((b"[1, 2]", "it holds no 'config' mapping"), (b"\xff", "'utf-8' codec can't decode"),
                         (b'{"config": {"lr": "x"}}', "learning rate must be a finite number, got 'x'")):
        (cell / "config.json").write_bytes(damaged)
        assert main(["sweep", "--grid", "pooling=avg", "--root", str(root), "--epochs", "1", *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: sweep cell {cell} has trained, but its config.json is damaged (")
        assert why in err and err.count("\n") == 1 and err.endswith("to train the cell again\n")
    assert (root / "results.md").read_text(encoding="utf-8") == table


def test_a_damaged_cell_summary_is_taken_again_from_the_cells_checkpoint(fashion_dir, tmp_path, capsys):
    """A cell's summary.json that is not a mapping of numbers once crashed the sweep (a list, bytes that
    are not UTF-8, a test accuracy of "x" reached the chart); the checkpoint holds every epoch, so the
    cell is resumed, which computes its numbers again without training again."""
    import json

    base = TrainConfig(data_dir=str(fashion_dir), train_limit=64, test_limit=32, batch_size=32, epochs=1,
                       device="cpu")
    axes = [parse_axis("pooling=avg")]
    first = run_sweep(base, axes, tmp_path)
    summary = tmp_path / "pooling-avg" / "summary.json"
    for damaged in (b"[1, 2]", b"\xff\xfe{", b'{"test_acc": "x"}', b'{"train_loss": true}'):
        summary.write_bytes(damaged)
        capsys.readouterr()
        again = run_sweep(base, axes, tmp_path)
        err = capsys.readouterr().err
        assert f"note: {summary} is damaged (" in err and "Traceback" not in err
        assert [r["test_acc"] for r in again] == [r["test_acc"] for r in first]
        assert json.loads(summary.read_text(encoding="utf-8"))["test_acc"] == first[0]["test_acc"]

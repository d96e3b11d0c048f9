"""``cnnlab evaluate`` and ``cnnlab predict``: use a trained model."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab import runlock
from cnnlab.cli.common import add_command
from cnnlab.errors import ConfigError
from cnnlab.export import open_onnx
from cnnlab.fileio import check_figure_path, check_output_file, save_figure
from cnnlab.inference import evaluate, predict_logits, top_k
from cnnlab.trained import TrainedRun


def register(subparsers) -> None:
    p = add_command(subparsers, "evaluate", "test accuracy, per-class accuracy and a confusion matrix of a run")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory or a checkpoint.pt file")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the dataset's IDX files (default: the folder the run trained on, "
                        "else as for train)")
    p.add_argument("--no-verify", action="store_const", dest="verify", const=False, default=None,
                   help="trust the data files (default: checked as the run's were)")
    p.add_argument("--split", default=None, choices=["test", "val", "train"],
                   help="which split to evaluate (default: test, or val for data without a test split; val: the "
                        "run's validation split, from --val-fraction)")
    p.add_argument("--out", default=None,
                   help="confusion-matrix image (default: confusion.png beside the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run_evaluate)

    p = add_command(subparsers, "predict", "top-k classes for image files (PNG, JPEG, BMP, GIF, TIFF, WebP) or test-set images")
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                   help="a checkpoint.pt file or a run directory (left out with --model-file)")
    p.add_argument("images", metavar="IMAGE", nargs="*", help="image files of any size and colour")
    p.add_argument("--model-file", default=None, metavar="MODEL.onnx",
                   help="predict with a file from `cnnlab export --format onnx`, run by ONNX Runtime, instead "
                        "of a checkpoint (needs the export extra: pip install -e '.[export]')")
    p.add_argument("--index", type=int, action="append", default=[], metavar="N",
                   help="also predict test image N (repeatable; the validation split's for data without a test split)")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to show per image")
    p.add_argument("--invert", default="auto", choices=["auto", "yes", "no"],
                   help="invert to light-on-dark: auto inverts pictures with a light background")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the dataset, for --index (default: the folder the run trained on, "
                        "else as for train)")
    p.add_argument("--no-verify", action="store_const", dest="verify", const=False, default=None,
                   help="trust the data files (default: checked as the run's were)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run_predict)


def run_evaluate(args) -> int:
    from cnnlab.device import resolve_device  # noqa: PLC0415  keeps `cnnlab --help` fast

    if args.out:
        check_figure_path(args.out, "--out")
    run = TrainedRun.open(args.target, "the run to evaluate")
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else run.checkpoint.with_name("confusion.png")
    with runlock.hold_if_inside(out, run.folder, fix="wait for it to finish, or write elsewhere with --out"):
        check_output_file(out)     # before the evaluation, not after it
        return _evaluate(args, run, device, out)


def _evaluate(args, run, device, out: Path) -> int:
    from cnnlab.viz import drawn_classes, drawn_note, plot_confusion  # noqa: PLC0415  keeps `cnnlab --help` fast

    split = args.split or run.scoring_split
    images, labels = run.load_split(split, args.data_dir, args.verify)
    result = evaluate(run.build_model(device), images, labels, run.classes, input_size=run.input_size,
                      device=device, tta=run.tta, normalize=run.normalize)   # scored as the run scored itself
    print(f"{run.model_name} on {run.dataset} {split} ({len(labels)} images), "
          f"checkpoint {run.checkpoint} (epoch {run.epoch})")
    print(result.table())
    fig = plot_confusion(result.confusion.numpy(), result.classes,
                         title=f"{run.model_name}, {run.dataset} {split}: acc {result.accuracy:.3f}")
    save_figure(out, fig, dpi=120)
    note = drawn_note(len(drawn_classes(result.confusion.numpy())), len(result.classes))
    print(f"confusion matrix: {out}" + (f" ({note}; the table above lists every class)" if note else ""))
    return 0


def run_predict(args) -> int:
    from cnnlab.device import resolve_device  # noqa: PLC0415  keeps `cnnlab --help` fast

    if args.model_file is not None and args.checkpoint is not None:   # every positional is an image
        args.images, args.checkpoint = [args.checkpoint, *args.images], None
    if not args.images and not args.index:
        raise ConfigError("nothing to predict: give image files and/or --index N")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.model_file is None and args.checkpoint is None:
        raise ConfigError("give a checkpoint or run directory to predict with (or --model-file MODEL.onnx)")
    if args.model_file is not None:
        exported = open_onnx(args.model_file)
        run = exported.description
    else:
        run = TrainedRun.open(args.checkpoint, "the checkpoint to predict with")
        device = resolve_device(args.device)
    names, notes, batches = [], [], []
    if args.images:
        images, inverted = run.read_images(args.images, args.invert)
        batches.append(images)
        names += list(args.images)
        notes += [" (inverted)" if flipped else "" for flipped in inverted]
    if args.index:
        split = run.scoring_split   # test, or val for data without a test split
        images, labels = run.load_split(split, args.data_dir, args.verify)
        for i in args.index:
            if not 0 <= i < len(labels):
                raise ConfigError(f"--index {i} is out of range: the {split} split has {len(labels)} images "
                                  f"(0 to {len(labels) - 1})")
        batches.append(images[list(args.index)])
        names += [f"{split}[{i}]" for i in args.index]
        notes += [f" (true: {run.classes[int(labels[i])]})" for i in args.index]
    images = torch.cat(batches)
    if args.model_file is not None:   # the file holds its own preprocessing and test-time augmentation
        logits = exported.logits(images)
    else:
        logits = predict_logits(run.build_model(device), images, input_size=run.input_size, device=device,
                                tta=run.tta, normalize=run.normalize)
    for name, note, ranked in zip(names, notes, top_k(logits, list(run.classes), args.top_k)):
        shown = ", ".join(f"{c} {p:.3f}" for c, p in ranked)
        print(f"{name}{note}: {shown}")
    return 0

"""``cnnlab evaluate`` and ``cnnlab predict``: use a trained model."""

from __future__ import annotations

from pathlib import Path

from cnnlab.cli.common import add_command
from cnnlab.errors import ConfigError


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

    p = add_command(subparsers, "predict", "top-k classes for image files (PNG/JPEG) or test-set images")
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                   help="a checkpoint.pt file or a run directory (left out with --model-file)")
    p.add_argument("images", metavar="IMAGE", nargs="*", help="image files of any size and colour")
    p.add_argument("--model-file", default=None, metavar="MODEL.onnx",
                   help="predict with a file from `cnnlab export --format onnx`, run by ONNX Runtime, instead "
                        "of a checkpoint (needs pip install 'cnnlab[export]')")
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


def _load(target: str, device_name: str, what: str):
    from cnnlab.device import resolve_device
    from cnnlab.train.checkpoint import build_model, load_checkpoint, run_reference

    ref = run_reference(target, what)
    device = resolve_device(device_name)
    ckpt = load_checkpoint(ref.checkpoint)
    model = build_model(ckpt).to(device)
    return ckpt, model, device


def run_evaluate(args) -> int:
    from cnnlab import runlock
    from cnnlab.fileio import check_figure_path, check_writable_dir

    if args.out:
        check_figure_path(args.out, "--out")
    ckpt, model, device = _load(args.target, args.device, "the run to evaluate")
    out = Path(args.out) if args.out else Path(ckpt["path"]).with_name("confusion.png")
    with runlock.hold_if_inside(out, Path(ckpt["path"]).parent,
                                fix="wait for it to finish, or write elsewhere with --out"):
        check_writable_dir(out.parent)     # before the evaluation, not after it
        return _evaluate(args, ckpt, model, device, out)


def _evaluate(args, ckpt, model, device, out: Path) -> int:
    from cnnlab.fileio import save_figure
    from cnnlab.inference import evaluate, run_tta
    from cnnlab.train.checkpoint import load_trained_split, scoring_split
    from cnnlab.viz import plot_confusion

    split = args.split or scoring_split(ckpt)
    images, labels = load_trained_split(ckpt, split, args.data_dir, args.verify)
    tta = run_tta(ckpt.get("config", {}))   # scored as the run scored itself
    result = evaluate(model, images, labels, ckpt["classes"], input_size=ckpt.get("input_size"), device=device,
                      tta=tta, normalize=ckpt.get("normalize"))
    print(f"{ckpt['model']} on {ckpt['dataset']} {split} ({len(labels)} images), "
          f"checkpoint {ckpt['path']} (epoch {ckpt['state']['epoch']})")
    print(result.table())
    fig = plot_confusion(result.confusion.numpy(), result.classes,
                         title=f"{ckpt['model']}, {ckpt['dataset']} {split}: acc {result.accuracy:.3f}")
    save_figure(out, fig, dpi=120)
    print(f"confusion matrix: {out}")
    return 0


def _colour_registry_run(ckpt) -> bool:
    """Whether the run trained on a registry dataset of colour photographs (CIFAR-10): its image files are
    read as photographs, not as the grayscale datasets' light-on-dark drawings."""
    from cnnlab.data import get_spec

    try:
        return get_spec(ckpt.get("dataset") or "fashion-mnist").image_shape[0] == 3
    except ConfigError:   # a dataset this cnnlab does not know
        return False


def run_predict(args) -> int:
    import torch

    from cnnlab.inference import load_image, predict_logits, run_tta, top_k
    from cnnlab.train.checkpoint import load_trained_split, scoring_split, trained_image_shape

    if args.model_file is not None and args.checkpoint is not None:   # every positional is an image
        args.images, args.checkpoint = [args.checkpoint, *args.images], None
    if not args.images and not args.index:
        raise ConfigError("nothing to predict: give image files and/or --index N")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.model_file is None and args.checkpoint is None:
        raise ConfigError("give a checkpoint or run directory to predict with (or --model-file MODEL.onnx)")
    if args.model_file is not None:
        from cnnlab.export import open_onnx

        exported = open_onnx(args.model_file)
        ckpt, (channels, size, _) = exported.meta, exported.image_shape
    else:
        ckpt, model, device = _load(args.checkpoint, args.device, "the checkpoint to predict with")
        channels, size, _ = trained_image_shape(ckpt)
    classes = ckpt["classes"]
    names, tensors, notes = [], [], []
    own_data = bool((ckpt.get("config") or {}).get("data"))
    photos = own_data or _colour_registry_run(ckpt)
    for path in args.images:
        if photos:   # read as the run's images were: same conversion, colour kept where the run had it
            from cnnlab.data.decode import convert
            from cnnlab.images import open_image

            image = torch.from_numpy(convert(open_image(path), channels, size))
            inverted = False
        else:
            image, inverted = load_image(path, args.invert, size=size)
            if channels != 1:   # a registry run converted to colour (--channels 3) took the gray as RGB
                from cnnlab.data.dataset import reconverted_images

                image = reconverted_images(image[None], channels, size)[0]
        names.append(path)
        tensors.append(image)
        notes.append(" (inverted)" if inverted else "")
    if args.index:
        split = scoring_split(ckpt)   # test, or val for data without a test split
        images, labels = load_trained_split(ckpt, split, args.data_dir, args.verify)
        for i in args.index:
            if not 0 <= i < len(labels):
                raise ConfigError(f"--index {i} is out of range: the {split} split has {len(labels)} images "
                                  f"(0 to {len(labels) - 1})")
            names.append(f"{split}[{i}]")
            tensors.append(images[i])
            notes.append(f" (true: {classes[int(labels[i])]})")
    if args.model_file is not None:   # the file holds its own preprocessing and test-time augmentation
        logits = exported.logits(torch.stack(tensors))
    else:
        logits = predict_logits(model, torch.stack(tensors), input_size=ckpt.get("input_size"), device=device,
                                tta=run_tta(ckpt.get("config", {})), normalize=ckpt.get("normalize"))
    for name, note, ranked in zip(names, notes, top_k(logits, classes, args.top_k)):
        shown = ", ".join(f"{c} {p:.3f}" for c, p in ranked)
        print(f"{name}{note}: {shown}")
    return 0

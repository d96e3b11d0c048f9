"""``cnnlab data info|download|show``: where the data is, getting it, and looking at it."""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from cnnlab import fileio
from cnnlab.cli.common import add_command, add_data_flags
from cnnlab.data import class_counts, download_dataset, get_spec, list_datasets, load_split, locate
from cnnlab.data.dataset import channel_stats, read_source
from cnnlab.errors import ConfigError
from cnnlab.text import display_width, pad

MAX_SHOW_IMAGES = 200
"""Most images `data show` draws in one grid (200 take matplotlib ~5 s; the whole test split, minutes)."""
MAX_SCALE = 10.0
"""Most inches per image in `data show`."""
SHOW_DPI = 100
MAX_SHOW_PIXELS = 50_000_000
"""Most pixels in a `data show` image (200 MB of RGBA while drawing)."""

CHECK_WORDS = {
    "cache": "verified earlier (verification cache)",
    "md5": "verified now (md5 of the published file)",
    "sha256": "verified now (sha256 of the decompressed content)",
    "download": "downloaded and verified now",
    "skipped": "NOT verified (--no-verify)",
}


def register(subparsers) -> None:
    names = ", ".join(list_datasets())
    data = add_command(subparsers, "data", help="find, download and look at datasets",
                       description=f"Find, download and look at datasets ({names}).\n\n"
                                   "Data is looked for in --data-dir, then $CNNLAB_DATA, then the user cache "
                                   "($XDG_CACHE_HOME/cnnlab, or the system's cache folder), then system copies (/usr/share/datasets), "
                                   "then downloaded into the cache.")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    info = add_command(commands, "info", help="where the data was found, counts per split and class, verification")
    add_data_flags(info)
    add_own_data_flags(info)
    info.add_argument("--download", action="store_true",
                      help="download the dataset if it is not found (info alone never downloads)")
    info.set_defaults(func=run_info)

    download = add_command(commands, "download", help="download a dataset into the user cache (or --dest)")
    download.add_argument("--dataset", default="fashion-mnist", help=f"dataset name ({names})")
    download.add_argument("--dest", default=None,
                          help="folder to download into (default: <dataset>/ in the user cache, $XDG_CACHE_HOME/cnnlab or the system's)")
    download.add_argument("--mirror", action="append", default=None, metavar="URL",
                          help="base URL to download from, tried in the order given (repeatable); "
                               "default: $CNNLAB_MIRRORS, else the registry's official mirrors")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.set_defaults(func=run_download)

    show = add_command(commands, "show", help="save a grid of images titled with their class names")
    add_data_flags(show)
    add_own_data_flags(show)
    show.add_argument("--split", default="test", choices=("train", "test"), help="which split to show")
    show.add_argument("--n", type=int, default=18, help="number of images")
    show.add_argument("--start", type=int, default=0, help="index of the first image shown")
    show.add_argument("--ncols", type=int, default=9, help="images per row")
    show.add_argument("--scale", type=float, default=1.5, help="inches per image")
    show.add_argument("--out", required=True, help="image file to write (PNG, PDF or SVG by its suffix)")
    show.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing dataset")
    show.set_defaults(func=run_show)


def add_own_data_flags(parser) -> None:
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="your own data instead of --dataset: an image folder, a .npz file or a folder of "
                             "IDX files (see docs/data.md)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                        help="--data: side the images are converted to (default: the size most share, else 28)")
    parser.add_argument("--channels", type=int, default=None, choices=(1, 3),
                        help="--data: 1 (gray) or 3 (colour) (default: 1 if every image is gray, else 3)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="--data: leave out (and count) unreadable images instead of stopping")


def read_own_data(args) -> dict:
    return read_source(args.data, image_size=args.image_size, channels=args.channels,
                       skip_bad_images=args.skip_bad_images, progress=True, verify=args.verify is not False)


KIND_WORDS = {"folder": "image folder", "npz": ".npz arrays", "idx": "IDX files", "cifar": "CIFAR-10 python batches"}


def run_own_info(args: argparse.Namespace) -> int:
    result = read_own_data(args)
    arrays, classes = result["arrays"], result["classes"]
    layout = ", ".join(f"{split}/ from {name}/" for split, name in result.get("split_folders", {}).items())
    print(f"data:     {args.data} ({KIND_WORDS[result['kind']]}{'; ' + layout if layout else ''})")
    print(f"classes:  {len(classes)}: {', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''}")
    cache = {"hit": "read from the cache", "written": "decoded now and cached", None: "not cached (no conversion)"}
    print(f"images:   converted to {result['channels']}x{result['size']}x{result['size']} uint8 "
          f"({cache[result['cache']]})")
    found = result.get("found", {})
    if found:
        print("found:    sizes " + ", ".join(f"{k} ({v:,d})" for k, v in list(found["sizes"].items())[:8])
              + "; modes " + ", ".join(f"{k} ({v:,d})" for k, v in found["modes"].items()))
    skipped = result.get("skipped", {})
    print(f"skipped:  {sum(skipped.values()):,d} file(s)" + (": " + ", ".join(f"{v:,d} {k}" for k, v in skipped.items())
                                                             if skipped else ""))
    for message in result.get("bad_files", [])[:5]:
        print(f"  {message}")
    width = max(display_width(c) for c in classes)
    for split in ("train", "test"):
        if f"{split}_y" not in arrays:
            print(f"{split}: none (training holds out --val-fraction for validation; none given: 0.1)")
            continue
        counts = np.bincount(arrays[f"{split}_y"], minlength=len(classes))
        print(f"{split}: {int(counts.sum()):,d} examples")
        for name, count in zip(classes, counts):
            print(f"  {pad(name, width)} {int(count):>7,d}")
        if counts.min() > 0:
            print(f"  imbalance: largest class {counts.max() / counts.min():.2f}x the smallest")
        else:
            print(f"  imbalance: {int((counts == 0).sum())} class(es) have no {split} examples")
    mean, std = channel_stats(arrays["train_x"])
    print(f"normalisation (train): mean {', '.join(f'{m:.4f}' for m in mean)}; std {', '.join(f'{v:.4f}' for v in std)}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    if args.data is not None:
        return run_own_info(args)
    spec = get_spec(args.dataset)
    location = locate(args.dataset, args.data_dir, download=args.download, verify=args.verify is not False)
    counts = {split: class_counts(location, split) for split in ("train", "test")}  # a damaged file: no half report
    print(f"dataset:  {spec.title} ({spec.name}), {spec.num_classes} classes, images {spec.image_shape}")
    print(f"found in: {location.folder} (via {location.how})")
    print(f"verified: {'yes' if location.verified else 'no'}")
    for (split, part), path in location.files.items():
        print(f"  {split:5s} {part:12s} {path.name:28s} {path.stat().st_size:>12,d} bytes  "
              f"{CHECK_WORDS[location.checks[(split, part)]]}")
    width = max(display_width(c) for c in spec.classes)
    for split in ("train", "test"):
        print(f"{split}: {int(counts[split].sum()):,d} examples (registry: {spec.num_examples(split):,d})")
        for name, count in zip(spec.classes, counts[split]):
            print(f"  {pad(name, width)} {int(count):>6,d}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    location = download_dataset(args.dataset, args.dest, mirrors=args.mirror, progress=not args.quiet)
    fetched = sum(1 for c in location.checks.values() if c == "download")
    print(f"{args.dataset}: {fetched} file(s) downloaded, {len(location.files) - fetched} already there "
          f"and verified, in {location.folder}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cnnlab.viz import show_images  # noqa: PLC0415  keeps `cnnlab --help` fast

    if args.n < 1 or args.ncols < 1:
        raise ConfigError(f"--n and --ncols must be positive, got --n {args.n} --ncols {args.ncols}")
    if args.n > MAX_SHOW_IMAGES:
        raise ConfigError(f"--n {args.n} is more images than one grid shows (at most {MAX_SHOW_IMAGES}); "
                          f"use a smaller --n and page through the split with --start")
    if not (math.isfinite(args.scale) and 0 < args.scale <= MAX_SCALE):
        raise ConfigError(f"--scale {args.scale:g} is not a size in inches per image; use a number above 0 "
                          f"and at most {MAX_SCALE:g}")
    ncols = min(args.ncols, args.n)
    nrows = math.ceil(args.n / ncols)
    width, height = (round(k * args.scale * SHOW_DPI) for k in (ncols, nrows))
    if width * height > MAX_SHOW_PIXELS or max(width, height) >= 2**16:
        raise ConfigError(f"a grid of {nrows} x {ncols} images at --scale {args.scale:g} would be {width} x {height} "
                          f"pixels (at most {MAX_SHOW_PIXELS:,d} pixels, under 65,536 a side); "
                          f"lower --scale, --n or --ncols")
    fileio.check_figure_path(args.out, "--out")
    fileio.check_output_file(args.out)
    if args.data is not None:
        result = read_own_data(args)
        if f"{args.split}_x" not in result["arrays"]:
            raise ConfigError(f"{args.data} has no {args.split} split; use --split train")
        images = torch.from_numpy(result["arrays"][f"{args.split}_x"])
        labels = torch.from_numpy(result["arrays"][f"{args.split}_y"])
        classes, name = result["classes"], args.data
    else:
        spec = get_spec(args.dataset)
        images, labels = load_split(args.dataset, args.split, args.data_dir, download=not args.no_download,
                                    verify=args.verify is not False)
        classes, name = spec.classes, args.dataset
    if not 0 <= args.start < images.shape[0]:
        raise ConfigError(f"--start {args.start} is outside the {args.split} split (0..{images.shape[0] - 1})")
    chosen = slice(args.start, min(args.start + args.n, images.shape[0]))
    shown, shown_labels = images[chosen], labels[chosen]
    ncols = min(args.ncols, shown.shape[0])
    nrows = math.ceil(shown.shape[0] / ncols)
    titles = [classes[int(k)] for k in shown_labels]
    fig = show_images(shown, titles, nrows, ncols, scale=args.scale)
    fileio.save_figure(args.out, fig, dpi=SHOW_DPI)
    print(f"wrote {args.out}: {shown.shape[0]} {args.split} images of {name} "
          f"(#{chosen.start}..#{chosen.stop - 1})")
    return 0

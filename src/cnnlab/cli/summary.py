"""``cnnlab summary``: the book's per-layer output-shape table, then parameters and MACs.

The network is sized as training sizes it: the images' side (``--image-size``, the data's, else 28) and
the rule that picks the side the model sees from it (:func:`cnnlab.train.run.model_input_size`).
"""

from __future__ import annotations

import argparse
import sys

import torch

from cnnlab.cli.common import add_command, add_setting_flags
from cnnlab.cli.train import parse_options
from cnnlab.data import get_spec
from cnnlab.data.dataset import check_data_settings, read_source
from cnnlab.errors import ConfigError
from cnnlab.models import create, format_shape_table, format_summary, get_model_info, layer_stats, sized_options
from cnnlab.train.config import TrainConfig

DEPRECATED_INPUT_SIZE = ("note: --input-size is deprecated, use --image-size (the images' side: a model made for "
                         "larger images resizes them to its own size, as training does)")


def register(subparsers) -> None:
    p = add_command(subparsers, "summary", "print a model's per-layer output shapes, parameters and MACs")
    p.add_argument("--model", default="lenet", help="model name (see `cnnlab models`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="model option, repeatable")
    p.add_argument("--in-channels", type=int, default=1, help="input channels")
    p.add_argument("--num-classes", type=int, default=10, help="output classes")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="size the network for this data (an image folder, .npz or IDX folder, as `train --data`): "
                        "its channels, classes and image size, as training would build it")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="size the network for this registry dataset (e.g. cifar10): its channels, classes and "
                        "image size, as `train --dataset` would build it")
    add_setting_flags(p, ("image_size", "channels"))    # the flags of `cnnlab train`, as it reads them
    p.add_argument("--input-size", type=int, default=None, help=argparse.SUPPRESS)   # --image-size's old name
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.train.run import model_input_size  # noqa: PLC0415  keeps `cnnlab --help` fast

    if args.input_size is not None:
        print(DEPRECATED_INPUT_SIZE, file=sys.stderr, flush=True)
        if args.image_size not in (None, args.input_size):
            raise ConfigError("give --image-size only (--input-size is its deprecated name)")
        args.image_size = args.input_size
    info = get_model_info(args.model)
    if args.data is not None and args.dataset is not None:
        raise ConfigError("give --data (your own data) or --dataset (a registry dataset), not both")
    check_data_settings(args.image_size, args.channels, 0.0)
    image_size = args.image_size
    if args.dataset is not None:
        spec = get_spec(args.dataset)
        args.in_channels, args.num_classes = args.channels or spec.image_shape[0], spec.num_classes
        image_size = image_size or spec.image_shape[-1]
        print(f"{args.model} for {spec.name}: {args.in_channels} channel(s), {args.num_classes} classes, "
              f"{image_size}x{image_size} images")
    if args.data is not None:
        found = read_source(args.data, image_size=args.image_size, channels=args.channels)
        args.in_channels, args.num_classes = int(found["channels"]), len(found["classes"])
        image_size = int(found["size"])
        print(f"{args.model} for {args.data}: {args.in_channels} channel(s), {args.num_classes} classes, "
              f"{image_size}x{image_size} images")
    for flag, value in (("--in-channels", args.in_channels), ("--num-classes", args.num_classes)):
        if value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    size = model_input_size(TrainConfig(model=args.model), image_size or info.input_size)
    options = parse_options(args.option)

    def build(side: int):
        return create(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                      **sized_options(args.model, options, side))

    def fits(side: int) -> bool:
        """Whether ``side``-pixel images pass through the model (on the meta device: shapes only)."""
        try:
            with torch.device("meta"), torch.no_grad():
                build(side).eval()(torch.zeros(1, args.in_channels, side, side))
            return True
        except (ConfigError, RuntimeError):
            return False

    if size != info.input_size and not fits(size):
        given = f"--image-size {size}" if args.image_size is not None else f"the data's {size}x{size} images"
        if size < info.input_size and fits(info.input_size):
            low, high = size, info.input_size   # fits(high), not fits(low): the smallest fit is in (low, high]
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (low, mid) if fits(mid) else (mid, high)
            raise ConfigError(f"{given} is too small for model {args.model!r}: its smallest input is "
                              f"{high}x{high} (its own size is {info.input_size})")
        leave_out = "; leave --image-size out" if args.image_size is not None else ""
        raise ConfigError(f"{given} does not fit model {args.model!r}, whose layers are sized for "
                          f"{info.input_size}x{info.input_size} inputs{leave_out}")
    if image_size is not None and size != image_size:
        print(f"{args.model} takes {size}x{size} inputs: {image_size}x{image_size} images are resized to it, "
              f"as in training")
    model = build(size)
    stats = layer_stats(model, (1, args.in_channels, size, size))
    print(format_shape_table(stats))
    print()
    print(format_summary(stats))
    return 0

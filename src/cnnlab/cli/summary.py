"""``cnnlab summary``: the book's per-layer output-shape table, then parameters and MACs."""

from __future__ import annotations

from cnnlab.cli.common import add_command
from cnnlab.cli.train import parse_options


def register(subparsers) -> None:
    p = add_command(subparsers, "summary", "print a model's per-layer output shapes, parameters and MACs")
    p.add_argument("--model", default="lenet", help="model name (see `cnnlab models`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="model option, repeatable")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the model's own)")
    p.add_argument("--in-channels", type=int, default=1, help="input channels")
    p.add_argument("--num-classes", type=int, default=10, help="output classes")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="size the network for this data (an image folder, .npz or IDX folder, as `train --data`): "
                        "its channels, classes and image size, as training would build it")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="size the network for this registry dataset (e.g. cifar10): its channels, classes and "
                        "image size, as `train --dataset` would build it")
    p.add_argument("--image-size", type=int, default=None, metavar="PIXELS", help="--data: as `train --image-size`")
    p.add_argument("--channels", type=int, default=None, choices=(1, 3), help="--data: as `train --channels`")
    p.set_defaults(func=run)


MAX_INPUT_SIZE = 1024
"""Largest --input-size: enough for any model here, and a typo (100000) cannot ask for 40 GB."""


def run(args) -> int:
    import inspect

    from cnnlab.errors import ConfigError
    from cnnlab.models import create, format_shape_table, format_summary, get_model_info, layer_stats

    info = get_model_info(args.model)
    if args.data is not None and args.dataset is not None:
        raise ConfigError("give --data (your own data) or --dataset (a registry dataset), not both")
    if args.dataset is not None:
        from cnnlab.data import get_spec

        spec = get_spec(args.dataset)
        args.in_channels, args.num_classes = spec.image_shape[0], spec.num_classes
        if args.input_size is None and info.input_size <= 32:   # as training sizes the small models
            args.input_size = spec.image_shape[-1]
        print(f"{args.model} for {spec.name}: {args.in_channels} channel(s), {args.num_classes} classes, "
              f"{spec.image_shape[1]}x{spec.image_shape[2]} images")
    if args.data is not None:
        from cnnlab.data.dataset import read_source

        found = read_source(args.data, image_size=args.image_size, channels=args.channels)
        args.in_channels, args.num_classes = int(found["channels"]), len(found["classes"])
        if args.input_size is None and info.input_size <= 32:   # as training sizes the small models
            args.input_size = int(found["size"])
        print(f"{args.model} for {args.data}: {args.in_channels} channel(s), {args.num_classes} classes, "
              f"{found['size']}x{found['size']} images")
    for flag, value in (("--in-channels", args.in_channels), ("--num-classes", args.num_classes)):
        if value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    size = info.input_size if args.input_size is None else args.input_size
    if not 1 <= size <= MAX_INPUT_SIZE:
        raise ConfigError(f"--input-size must be from 1 to {MAX_INPUT_SIZE} pixels, got {size}")
    options = parse_options(args.option)
    sized = "image_size" in inspect.signature(info.factory).parameters and "image_size" not in options

    def build(side: int):
        return create(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                      **({**options, "image_size": side} if sized else options))

    def fits(side: int) -> bool:
        """Whether ``side``-pixel images pass through the model (on the meta device: shapes only)."""
        import torch

        try:
            with torch.device("meta"), torch.no_grad():
                build(side).eval()(torch.zeros(1, args.in_channels, side, side))
            return True
        except (ConfigError, RuntimeError):
            return False

    if size != info.input_size and not fits(size):
        if size < info.input_size and fits(info.input_size):
            low, high = size, info.input_size   # fits(high), not fits(low): the smallest fit is in (low, high]
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (low, mid) if fits(mid) else (mid, high)
            raise ConfigError(f"--input-size {size} is too small for model {args.model!r}: its smallest input is "
                              f"{high}x{high} (its own size is {info.input_size})")
        raise ConfigError(f"--input-size {size} does not fit model {args.model!r}, whose layers are sized for "
                          f"{info.input_size}x{info.input_size} inputs; leave --input-size out")
    model = build(size)
    stats = layer_stats(model, (1, args.in_channels, size, size))
    print(format_shape_table(stats))
    print()
    print(format_summary(stats))
    return 0

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
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.models import create, format_shape_table, format_summary, get_model_info, layer_stats

    info = get_model_info(args.model)
    size = args.input_size or info.input_size
    model = create(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                   **parse_options(args.option))
    stats = layer_stats(model, (1, args.in_channels, size, size))
    print(format_shape_table(stats))
    print()
    print(format_summary(stats))
    return 0

"""``cnnlab models``: every registered model with its input size, parameters and multiply-accumulates."""

from __future__ import annotations

from cnnlab.cli.common import add_command
from cnnlab.errors import ConfigError
from cnnlab.models import create, get_model_info, layer_stats, list_models
from cnnlab.text import display_width, pad


def register(subparsers) -> None:
    p = add_command(subparsers, "models", "list the model zoo: input size, parameters, MACs per image",
                    description="List registered models. A bare family name (alexnet, vgg11, nin, googlenet, "
                                "resnet18, densenet) is the book's network at the book's input size (the loader "
                                "resizes Fashion-MNIST to it); <family>_mini is a compact 28x28 form that trains "
                                "in minutes on a CPU; lenet, lenet_bn and lenet_wide are chapter 6's LeNet and "
                                "its variants.")
    p.add_argument("--family", default=None, help="only this family (lenet, alexnet, vgg, nin, googlenet, ...)")
    p.add_argument("--compact", action="store_true", help="only the 28x28 models (fast to list)")
    p.set_defaults(func=run)


def run(args) -> int:
    families = sorted({get_model_info(name).family for name in list_models()})
    if args.family is not None and args.family not in families:
        raise ConfigError(f"unknown model family {args.family!r}; families: {', '.join(families)}")
    rows = []
    for name in list_models():
        info = get_model_info(name)
        if (args.family and info.family != args.family) or (args.compact and info.input_size != 28):
            continue
        model = create(name)
        stats = layer_stats(model, (1, 1, info.input_size, info.input_size))
        params = sum(p.numel() for p in model.parameters())
        macs = sum(s.macs for s in stats)
        rows.append((name, info.family, f"{info.input_size}x{info.input_size}", f"{params:,}", f"{macs:,}",
                     info.description))
    header = ("model", "family", "input", "params", "MACs", "description")
    widths = [max(display_width(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, *rows]:
        print("  ".join(pad(c, w, ">" if i in (3, 4) else "<") for i, (c, w) in enumerate(zip(r, widths)))
              + "  " + r[5])
    return 0

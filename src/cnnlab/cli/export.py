"""``cnnlab export``: a trained run as an ONNX or TorchScript file, checked before it is written."""

from __future__ import annotations

from cnnlab.cli.common import add_command
from cnnlab.export import DEFAULT_FILE_NAMES, FORMATS, INPUT_DTYPES, export_run
from cnnlab.inference import TTA_CHOICES


def register(subparsers) -> None:
    p = add_command(subparsers, "export",
                    "write a trained run as an ONNX or TorchScript file with its preprocessing, checked "
                    "against PyTorch on the test set (see docs/watch-export.md)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or its checkpoint.pt)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx (run it with ONNX Runtime; needs the export extra: pip install -e '.[export]') or torchscript")
    p.add_argument("--out", default=None,
                   help=f"output file (default: {DEFAULT_FILE_NAMES['onnx']} or {DEFAULT_FILE_NAMES['torchscript']} "
                        f"in the run directory)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--input-dtype", default="uint8", choices=INPUT_DTYPES,
                   help="the file's input: uint8 pixels, or float32 pixels on the same 0-255 scale")
    p.add_argument("--tta", default="none", choices=TTA_CHOICES,
                   help="build test-time augmentation into the file (none: the plain network)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the dataset, for the check (default: the folder the run trained on)")
    p.add_argument("--no-verify", action="store_const", dest="verify", const=False, default=None,
                   help="trust the data files (default: checked as the run's were)")
    p.set_defaults(func=run)


def run(args) -> int:
    path, check = export_run(args.run_dir, args.format, args.out, force=args.force, input_dtype=args.input_dtype,
                             tta=args.tta, data_dir=args.data_dir, verify=args.verify)
    print(check.line())
    print(f"exported: {path}")
    return 0

"""TrainConfig is the top of the chain: a leaf module, the one source of the training flags."""

from __future__ import annotations

import ast
import re
import dataclasses
from pathlib import Path

import pytest

import cnnlab
from cnnlab.cli.main import build_parser, main
from cnnlab.errors import ConfigError
from cnnlab.train.config import TrainConfig, flag_fields, flag_name

SRC = Path(cnnlab.__file__).parent


def _cnnlab_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("cnnlab"))
    return names


def test_the_config_imports_only_the_errors_and_optim_no_config():
    assert _cnnlab_imports(SRC / "train" / "config.py") == {"cnnlab.errors"}
    assert "cnnlab.train.config" not in _cnnlab_imports(SRC / "optim.py")


def _subcommand(name):
    return next(a for a in build_parser()._subparsers._group_actions if a.choices)._name_parser_map[name]


@pytest.mark.parametrize("command", ["train", "sweep", "lr-find"])
def test_every_setting_is_a_flag_with_its_help_and_the_configs_default(command):
    """Flags come from the fields: each documented setting has its flag, its help and the config's default."""
    text = " ".join(_subcommand(command).format_help().split())
    defaults = TrainConfig()
    for f in flag_fields():
        help_text = " ".join(f.metadata["help"].split())
        assert f"{flag_name(f)}" in text and help_text in text, f.name
        value = getattr(defaults, f.name)
        if value is not None and not isinstance(value, (bool, list)):
            assert f"{help_text} (default: {value})" in text, f.name
    assert "--tta-flip" not in text


def test_a_flag_left_out_is_none_and_typed_ones_win_over_a_preset():
    from cnnlab.cli.train import config_from_args

    parser = build_parser()
    args = parser.parse_args(["train"])
    assert all(getattr(args, f.name) is None for f in flag_fields())
    args = parser.parse_args(["train", "--preset", "small", "--lr", "0.9", "--no-verify", "--augment", "none"])
    args.argv = []
    config = config_from_args(args)
    assert (config.lr, config.verify, config.augment, config.optimizer) == (0.9, False, [], "adamw")
    assert config_from_args(parser.parse_args(["train"])) == TrainConfig()


@pytest.mark.parametrize("argv, message", [
    (["--tta-flip"], "unrecognized arguments: --tta-flip"),
    (["--tta", "mirror"], "invalid choice: 'mirror'"),
])
def test_removed_and_bad_choices_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["train", *argv])
    assert message in capsys.readouterr().err


def test_config_checks_need_no_model_and_run_checks_do():
    """validate() is the config's own: an unknown model is check_run's question (it needs the registry)."""
    from cnnlab.train.run import check_run

    TrainConfig(model="no-such-model", crop_padding=100).validate()
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'"):
        check_run(TrainConfig(model="no-such-model"))
    with pytest.raises(ConfigError, match="crop padding 100 is more than the 28-pixel image"):
        check_run(TrainConfig(crop_padding=100))
    with pytest.raises(ConfigError, match="unknown kernel setting 'x'; choose one of auto, on, off"):
        TrainConfig(kernel="x").validate()


def test_saved_settings_are_checked_as_flags_are():
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    assert TrainConfig.from_dict({"tta_flip": True}).tta == "flip"
    assert TrainConfig.from_dict({"tta_flip": False}).tta == "none"
    # Runs saved when the curve's points per epoch was a setting still load (it is the book's five now).
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "points_per_epoch": 5}) == TrainConfig()
    for data, message in [([1], "must be a mapping of setting names to values, got [1]"),
                          ({"seed": -1}, "seed must be an integer from 0"),
                          ({"verify": "yes"}, "verify must be true or false, got 'yes'"),
                          ({"augment": "crop"}, "augmentation must be a list of names, got 'crop'"),
                          ({"model_options": [1]}, "model options must be a mapping of names to values")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainConfig.from_dict(data)
    assert {f.name for f in dataclasses.fields(TrainConfig)} >= {f.name for f in flag_fields()}

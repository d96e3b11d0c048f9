"""Presets set a run's defaults; flags the user types win."""

import argparse

import pytest

from cnnlab.cli.train import add_train_flags, config_from_args
from cnnlab.errors import ConfigError
from cnnlab.presets import PRESETS, preset_config
from cnnlab.train.config import TrainConfig


def parse(argv):
    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    return config_from_args(parser.parse_args(argv))


def test_every_preset_is_a_valid_config():
    for name, preset in PRESETS.items():
        config = preset_config(name).validate()
        assert config.preset == name
        for key, value in preset.settings.items():
            assert getattr(config, key) == value


def test_book_preset_and_no_flags_are_the_seeds_recipe():
    seed = TrainConfig().to_dict()
    assert {k: v for k, v in parse([]).to_dict().items()} == seed
    assert {k: v for k, v in parse(["--preset", "book"]).to_dict().items() if k != "preset"} == \
        {k: v for k, v in seed.items() if k != "preset"}


def test_preset_sets_defaults_and_explicit_flags_win():
    config = parse(["--preset", "small"])
    assert (config.model, config.optimizer, config.schedule) == ("lenet_wide", "adamw", "onecycle")
    config = parse(["--preset", "small", "--epochs", "3", "--lr", "0.01", "--augment", "none"])
    assert (config.epochs, config.lr, config.augment) == (3, 0.01, [])
    assert config.optimizer == "adamw"  # not typed: the preset's
    # A flag typed with the book's own default still wins over the preset.
    assert parse(["--preset", "small", "--optimizer", "sgd", "--weight-decay", "0"]).optimizer == "sgd"
    # Typed model options join the preset's own.
    assert parse(["--preset", "best", "--option", "hidden=128"]).model_options == \
        {"arch": [[1, 32], [1, 96], [2, 192]], "hidden": 128}
    # Another model drops the preset's model options (they were for its model).
    assert parse(["--preset", "best", "--model", "lenet"]).model_options == {}


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="preset"):
        preset_config("fastest")
    with pytest.raises(SystemExit):
        parse(["--preset", "fastest"])

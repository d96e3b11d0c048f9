"""The training engine (``Trainer``), its callbacks, checkpoints and whole runs (``train``)."""

from cnnlab.train.callbacks import Callback, EpochPrinter, ProgressBar, RunDirWriter
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import Interrupted, Trainer, evaluate_accuracy, init_weights
from cnnlab.train.run import build_trainer, train

__all__ = ["Callback", "EpochPrinter", "ProgressBar", "RunDirWriter", "TrainConfig", "Interrupted", "Trainer",
           "evaluate_accuracy", "init_weights", "build_trainer", "train"]

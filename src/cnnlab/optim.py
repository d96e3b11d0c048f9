"""Optimizers and learning-rate schedules by name, from plain settings (a TrainConfig's, for a run).

Every schedule is a multiplier of the configured rate, a pure function of the global step, so it
resumes exactly from the step count a checkpoint keeps and needs no state of its own.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from cnnlab.errors import ConfigError

ONECYCLE_START_DIVISOR = 25.0
"""One-cycle starts at lr/25 and ends at lr/(25*1e4), as PyTorch's OneCycleLR and fastai do."""
ONECYCLE_FINAL_DIVISOR = 1e4
ONECYCLE_DEFAULT_RISE = 0.25
WARMUP_START = 0.01


def _param_groups(model: nn.Module, weight_decay: float):
    """Decay weights of conv and linear layers only: biases and norm scales are not regularised
    (decaying BN's gamma shrinks activations, not complexity)."""
    if weight_decay == 0:
        return [{"params": list(model.parameters()), "weight_decay": 0.0}]
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class PlainSGD:
    """Plain SGD, ``p -= lr * p.grad``, with ``torch.optim.SGD``'s interface and ``state_dict`` format.

    Why not ``torch.optim.SGD`` itself: constructing any ``torch.optim`` optimizer imports
    ``torch._dynamo`` (~1 s on the project's 2-core CPU), about a tenth of the whole 10-epoch LeNet
    recipe on the CPU kernel.  The book's recipe (no momentum, no weight decay, a constant rate) needs
    none of what that import serves.  The update is ``torch.optim.SGD``'s own for that case
    (``param.add_(grad, alpha=-lr)``; tested bit for bit), ``param_groups[i]["lr"]`` is read at every
    step (``cnnlab lr-find`` sets it), and state dicts load into either class.
    """

    _GROUP_DEFAULTS = {"momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False,
                       "foreach": None, "differentiable": False, "fused": None}

    def __init__(self, params, lr: float):
        params = list(params)
        if not params:
            raise ValueError("PlainSGD got an empty parameter list")
        self.defaults = {"lr": lr, **self._GROUP_DEFAULTS}
        self.param_groups = [{"params": params, "lr": lr, **self._GROUP_DEFAULTS}]
        self.state: dict = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_add_(params, [p.grad for p in params], alpha=-group["lr"])
        return loss

    def state_dict(self) -> dict:
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": list(range(start, start + n))})
            start += n
        return {"state": {}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict.get("param_groups", [])
        if len(groups) != len(self.param_groups) or any(
                len(saved["params"]) != len(group["params"]) for saved, group in zip(groups, self.param_groups)):
            raise ValueError("the saved optimizer state has a different number of parameters or groups")
        if state_dict.get("state") or any(saved.get("momentum") or saved.get("weight_decay") for saved in groups):
            raise ValueError("the saved optimizer state has momentum or weight decay; plain SGD has neither")
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})


def constant_rate(schedule: str, warmup_epochs: float) -> bool:
    """The learning rate never changes (no schedule, no warm-up): the run needs no scheduler."""
    return schedule == "constant" and warmup_epochs == 0


def build_optimizer(model: nn.Module, name: str, lr: float, *, momentum: float = 0.0, weight_decay: float = 0.0,
                    nesterov: bool = False, scheduled: bool = False) -> "torch.optim.Optimizer | PlainSGD":
    """Optimizer ``name`` (sgd, adamw, adam) for ``model``'s parameters; ``scheduled``: the rate will change
    (a schedule or warm-up).  The book's recipe (SGD without momentum or weight decay at a constant rate)
    gets PlainSGD."""
    if name == "sgd" and momentum == 0 and weight_decay == 0 and not nesterov and not scheduled:
        return PlainSGD(model.parameters(), lr=lr)
    if name == "sgd":
        # SGD with momentum, Nesterov or weight decay (every parameter decayed alike), or a schedule.
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of sgd, adamw, adam")


def lr_multiplier(schedule: str, epochs: int, steps_per_epoch: int, *, warmup_epochs: float = 0.0,
                  lr_step_epochs: int = 3, lr_gamma: float = 0.1) -> Callable[[int], float]:
    """The factor applied to the configured rate after ``step`` optimizer steps of the whole run."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    name = schedule

    def cosine(t: float) -> float:  # 1 at t=0, 0 at t=1
        return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    if name == "onecycle":
        rise = warmup or max(1, int(ONECYCLE_DEFAULT_RISE * total))
        low, final = 1.0 / ONECYCLE_START_DIVISOR, 1.0 / (ONECYCLE_START_DIVISOR * ONECYCLE_FINAL_DIVISOR)

        def factor(step: int) -> float:
            if step < rise:
                return 1.0 - (1.0 - low) * cosine(step / rise)
            return final + (1.0 - final) * cosine((step - rise) / max(1, total - rise))
        return factor

    def after_warmup(step: int) -> float:
        if name == "constant":
            return 1.0
        if name == "cosine":
            return cosine((step - warmup) / max(1, total - warmup))
        if name == "step":
            return lr_gamma ** (step // (lr_step_epochs * steps_per_epoch))
        raise ConfigError(f"unknown schedule {name!r}; choose one of constant, cosine, onecycle, step")

    def factor(step: int) -> float:
        if step < warmup:
            return WARMUP_START + (1.0 - WARMUP_START) * step / warmup
        return after_warmup(step)
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int, *,
                    warmup_epochs: float = 0.0, lr_step_epochs: int = 3, lr_gamma: float = 0.1):
    """A per-step learning-rate schedule, or None for a constant rate (the book's recipe)."""
    if constant_rate(schedule, warmup_epochs):
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(
        schedule, epochs, steps_per_epoch, warmup_epochs=warmup_epochs, lr_step_epochs=lr_step_epochs,
        lr_gamma=lr_gamma))

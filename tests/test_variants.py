"""LeNet's options change the network as stated, and no options is exactly the book's network."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models import create
from cnnlab.optim import build_optimizer, build_scheduler
from cnnlab.train.config import TrainConfig


def kinds(model):
    return [type(m).__name__ for m in model]


def test_default_lenet_is_the_seeds_network():
    model = create("lenet")
    assert kinds(model) == ["Conv2d", "Sigmoid", "AvgPool2d", "Conv2d", "Sigmoid", "AvgPool2d", "Flatten",
                            "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]
    assert (model[0].in_channels, model[0].out_channels, model[0].kernel_size, model[0].padding) == (1, 6, (5, 5), (2, 2))
    assert (model[3].out_channels, model[3].kernel_size, model[3].padding) == (16, (5, 5), (0, 0))
    assert [(l.in_features, l.out_features) for l in model if isinstance(l, nn.Linear)] == [(400, 120), (120, 84), (84, 10)]
    assert sum(p.numel() for p in model.parameters()) == 61_706  # the book's LeNet


def test_activation_and_pooling_options():
    model = create("lenet", activation="relu", pooling="max")
    assert "Sigmoid" not in kinds(model) and kinds(model).count("ReLU") == 4
    assert kinds(model).count("MaxPool2d") == 2 and "AvgPool2d" not in kinds(model)
    assert kinds(create("lenet", activation="gelu")).count("GELU") == 4
    with pytest.raises(ConfigError, match="activation"):
        create("lenet", activation="swishy")
    with pytest.raises(ConfigError, match="pooling"):
        create("lenet", pooling="median")


def test_batch_norm_follows_every_conv_and_hidden_dense_layer():
    model = create("lenet", batch_norm=True)
    k = kinds(model)
    assert k.count("BatchNorm2d") == 2 and k.count("BatchNorm1d") == 2
    for i, name in enumerate(k):
        if name.startswith("BatchNorm"):
            assert k[i - 1] in ("Conv2d", "Linear") and k[i + 1] == "Sigmoid"
    assert kinds(create("lenet_bn")) == k


def test_channels_kernels_and_dense_layers():
    model = create("lenet", channels=[8, 16, 32], kernel_sizes=[3, 3, 3], dense=[64])
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert all(c.kernel_size == (3, 3) for c in convs)
    # 28 -conv3 pad1-> 28 -pool-> 14 -conv3-> 12 -pool-> 6 -conv3-> 4 -pool-> 2: 32*2*2 = 128 features
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(128, 64), (64, 10)]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert [type(m) for m in create("lenet", dense=[])][-2:] == [nn.Flatten, nn.Linear]
    with pytest.raises(ConfigError, match="kernel sizes"):
        create("lenet", channels=[8, 16, 32], kernel_sizes=[3, 3])


def test_dropout_precedes_each_hidden_dense_layer():
    model = create("lenet", dropout=0.3)
    k = kinds(model)
    assert k.count("Dropout") == 2
    assert all(k[i + 1] == "Linear" for i, n in enumerate(k) if n == "Dropout")
    assert all(m.p == 0.3 for m in model if isinstance(m, nn.Dropout))


def test_lenet_wide_is_under_100k_parameters():
    assert sum(p.numel() for p in create("lenet_wide").parameters()) <= 100_000


def _optimizer(config, model):
    return build_optimizer(model, config.optimizer, config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov,
                           scheduled=config.schedule != "constant" or config.warmup_epochs > 0)


def _lrs(config, steps_per_epoch):
    model = nn.Linear(2, 2)
    opt = _optimizer(config, model)
    sched = build_scheduler(opt, config.schedule, config.epochs, steps_per_epoch, warmup_epochs=config.warmup_epochs,
                            lr_step_epochs=config.lr_step_epochs, lr_gamma=config.lr_gamma)
    lrs = []
    for _ in range(config.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedules():
    cos = _lrs(TrainConfig(lr=1.0, epochs=2, schedule="cosine"), 50)
    assert cos[0] == pytest.approx(1.0) and cos[50] == pytest.approx(0.5)
    assert cos[-1] == pytest.approx(0.5 * (1 + math.cos(99 / 100 * math.pi)))
    one = _lrs(TrainConfig(lr=1.0, epochs=4, schedule="onecycle"), 25)
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0) and one.index(max(one)) == 25
    assert one[-1] < 1e-3
    step = _lrs(TrainConfig(lr=1.0, epochs=4, schedule="step", lr_step_epochs=2, lr_gamma=0.1), 10)
    assert step[19] == pytest.approx(1.0) and step[20] == pytest.approx(0.1)
    warm = _lrs(TrainConfig(lr=1.0, epochs=2, warmup_epochs=1.0), 10)
    assert warm[0] == pytest.approx(0.01) and warm[5] == pytest.approx(0.01 + 0.99 * 0.5) and warm[10:] == [1.0] * 10


def test_optimizers():
    model = create("lenet_bn")
    adamw = _optimizer(TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05), model)
    assert isinstance(adamw, torch.optim.AdamW)
    decayed, plain = adamw.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    sgd = _optimizer(TrainConfig(momentum=0.9, nesterov=True).validate(), model)
    assert sgd.param_groups[0]["nesterov"] is True
    with pytest.raises(ConfigError, match="Nesterov"):
        TrainConfig(nesterov=True).validate()


def test_label_smoothing_reaches_the_trainer(fashion_subset):
    from cnnlab.train.run import build_trainer

    config = TrainConfig(data_dir=str(fashion_subset), verify=False, train_limit=64, test_limit=32, label_smoothing=0.1)
    trainer = build_trainer(config, torch.device("cpu"))
    logits, y = torch.randn(5, 10), torch.tensor([0, 1, 2, 3, 4])
    assert trainer.step.loss_fn(logits, y) == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())


def test_the_books_recipe_steps_exactly_as_torch_sgd():
    """PlainSGD (the book's recipe, built without importing torch._dynamo) equals torch.optim.SGD
    bit for bit, writes the same state dict, and each loads the other's."""
    from cnnlab.optim import PlainSGD

    torch.manual_seed(0)
    models = [create("lenet"), create("lenet")]
    models[1].load_state_dict(models[0].state_dict())
    plain = _optimizer(TrainConfig().validate(), models[0])
    assert isinstance(plain, PlainSGD)
    reference = torch.optim.SGD(models[1].parameters(), lr=0.9)
    X, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for step in range(3):
        for model, opt in zip(models, (plain, reference)):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
        if step == 1:
            for opt in (plain, reference):       # lr-find changes the rate between steps
                opt.param_groups[0]["lr"] = 0.3
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b) and a.grad is not None
    assert plain.state_dict() == reference.state_dict()
    plain.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in models[0].parameters())
    fresh = PlainSGD(models[0].parameters(), lr=0.9)
    fresh.load_state_dict(reference.state_dict())
    assert fresh.param_groups[0]["lr"] == 0.3
    reference.load_state_dict(plain.state_dict())
    momentum = torch.optim.SGD(models[1].parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(models[1](X), y).backward()
    momentum.step()
    with pytest.raises(ValueError, match="momentum"):
        fresh.load_state_dict(momentum.state_dict())
    # Anything beyond the book's recipe gets torch.optim's SGD.
    for config in (TrainConfig(momentum=0.9), TrainConfig(weight_decay=1e-4), TrainConfig(schedule="cosine"),
                   TrainConfig(warmup_epochs=1.0)):
        assert isinstance(_optimizer(config, models[0]), torch.optim.SGD)

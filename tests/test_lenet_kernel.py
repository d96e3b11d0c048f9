"""The fused LeNet step computes what PyTorch's own layers compute.

The reference is autograd through the ``nn.Sequential`` LeNet itself; in float64 the kernel must
agree to rounding (its products are summed in a different order), in bf16 to bf16's precision.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.kernels.lenet import LeNetKernel, unsupported_reason
from cnnlab.models import create
from cnnlab.train.engine import init_weights

VARIANTS = [
    {},                                             # the book's LeNet
    {"activation": "relu"},
    {"channels": [8, 12], "dense": [50]},
    {"dense": []},
    {"dense": [64, 32, 16]},
]


def model_and_batch(options, batch, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = create("lenet", **options).to(dtype)
    init_weights(model)
    X = torch.rand(batch, 1, 28, 28, dtype=dtype)
    y = torch.randint(0, 10, (batch,))
    return model, X, y


def autograd_reference(model, X, y):
    loss = nn.CrossEntropyLoss()(model(X), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "seed")
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_float64_gradients_equal_autograd(options, batch):
    model, X, y = model_and_batch(options, batch)
    loss_ref, grads_ref = autograd_reference(model, X, y)
    kernel = LeNetKernel(model, torch.float64)
    loss, correct = kernel.forward_backward(X, y)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    assert int(correct) == int((model(X).argmax(1) == y).sum())
    for (name, p), want in zip(model.named_parameters(), grads_ref):
        torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")
    torch.testing.assert_close(kernel.logits(X), model(X).detach(), rtol=1e-10, atol=1e-12)


def test_gradients_accumulate_like_backward():
    """A second call adds to .grad, as a second loss.backward() would."""
    model, X, y = model_and_batch({}, 16)
    _, grads_ref = autograd_reference(model, X, y)
    kernel = LeNetKernel(model, torch.float64)
    kernel.forward_backward(X, y)
    kernel.forward_backward(X, y)
    for p, want in zip(model.parameters(), grads_ref):
        torch.testing.assert_close(p.grad, 2 * want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_reduced_precision_gradients_are_close(dtype, tol):
    model, X, y = model_and_batch({}, 256, dtype=torch.float32)
    _, grads_ref = autograd_reference(model, X, y)
    kernel = LeNetKernel(model, dtype)
    kernel.forward_backward(X, y)
    for (name, p), want in zip(model.named_parameters(), grads_ref):
        assert p.grad.dtype == torch.float32
        rel = float((p.grad - want).norm() / want.norm())
        assert rel < tol, f"{name}: relative error {rel:.2e}"


def test_batch_sizes_change_between_calls():
    """Training batches, the last partial batch and evaluation batches interleave."""
    model, X, y = model_and_batch({}, 300)
    kernel = LeNetKernel(model, torch.float64)
    for n in (256, 44, 300, 256):
        torch.testing.assert_close(kernel.logits(X[:n]), model(X[:n]).detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model, loss_fn, reason", [
    (lambda: create("lenet", pooling="max"), nn.CrossEntropyLoss(), "pooling"),
    (lambda: create("lenet", activation="gelu"), nn.CrossEntropyLoss(), "activation"),
    (lambda: create("lenet", dropout=0.5), nn.CrossEntropyLoss(), "dropout"),
    (lambda: create("lenet", kernel_sizes=[3, 3]), nn.CrossEntropyLoss(), "5x5"),
    (lambda: create("lenet", in_channels=3), nn.CrossEntropyLoss(), "one input channel"),
    (lambda: create("lenet_bn"), nn.CrossEntropyLoss(), "batch norm"),
    (lambda: create("vgg_mini"), nn.CrossEntropyLoss(), "dropout"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), nn.CrossEntropyLoss(), "layer sequence"),
    (lambda: nn.Linear(784, 10), nn.CrossEntropyLoss(), "nn.Sequential"),
    (lambda: create("lenet"), nn.CrossEntropyLoss(label_smoothing=0.1), "label smoothing"),
    (lambda: create("lenet"), nn.NLLLoss(), "loss NLLLoss"),
])
def test_unsupported_networks_are_named(model, loss_fn, reason):
    why = unsupported_reason(model(), loss_fn)
    assert why is not None and reason in why


def test_kernel_refuses_an_unsupported_network():
    with pytest.raises(ValueError, match="cannot run this model: pooling"):
        LeNetKernel(create("lenet", pooling="max"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_refuses_a_model_off_the_cpu():
    with pytest.raises(ValueError, match="runs on the CPU"):
        LeNetKernel(create("lenet").cuda())


def test_wrong_image_size_is_refused():
    model, X, y = model_and_batch({}, 4)
    with pytest.raises(ValueError, match="1x28x28"):
        LeNetKernel(model, torch.float64).logits(torch.zeros(4, 1, 32, 32, dtype=torch.float64))

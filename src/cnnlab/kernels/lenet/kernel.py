"""A hand-fused CPU training step for the book's LeNet: the same network and the same mathematics,
computed as a few large matrix products instead of PyTorch's per-layer operators.

Why: profiled on a 2-core CPU (README, "Speed"), the book's 20 ms step is mostly PyTorch's small
convolutions (conv backward alone ~7 ms), average pooling (~4.6 ms) and sigmoid passes over
NCHW tensors; the matrix-multiply units sit idle.  This kernel rewrites one step as:

* **Space-to-depth convolutions.**  Each 5x5 convolution followed by 2x2 average pooling is one
  matrix product: a 2x2 block of outputs needs a 6x6 input patch, so conv1 is
  ``(24 x 37) @ (37 x 196B)`` (6 channels x 2 x 2 positions; 36 pixels + a ones row carrying the
  bias) and conv2 is ``(64 x 217) @ (217 x 25B)``.  This costs 1.44x the multiply-adds of a direct
  convolution, in products whose shapes the BLAS runs near peak; pooling becomes the sum of four
  contiguous slabs.
* **Batch-innermost layout.**  Activations are stored as (features, positions, batch), so every
  patch gather, pooling sum and the col2im of conv2's input gradient moves contiguous runs of B
  values, and the flattened conv2 output is already (channel, row, column) x batch, the order the
  first dense layer expects.
* **Manual backward.**  Gradients are written straight into ``param.grad`` (the optimizer then
  steps as usual): no autograd graph; conv1's input gradient, which nothing needs, is never formed;
  the sigmoid derivative and the pooling's broadcast are one fused ``sigmoid_backward``.
* **Precision.**  With ``dtype=torch.bfloat16`` (the default on CPUs with native bf16 dot products,
  e.g. AVX512-BF16 or AMX) the matrix products (convolutions and dense layers) take bf16 inputs with
  float32 accumulation, and activations are stored in bf16; parameters, their gradients, the loss and
  the optimizer stay float32 (and the C passes compute conv1 from float32 inputs).  ``dtype=torch.float32`` computes
  everything in float32 (and float64 in the tests, where it matches autograd to 1e-6).

The passes outside the matrix products come in two implementations of one interface: PyTorch
operators (:class:`TorchPasses`, in this module) and C loops (``native.CPasses``, ``lenet_native.c``,
where the system has a C compiler).  In C, conv1, which has one input channel and six outputs and so
makes a poor matrix product (memory-bound, its patch matrix written and read every step), is computed
directly instead, 16 images per vector register, fused with its activation, its pooling and the
gathering of conv2's patches; its weight gradient likewise, fused with col2im and the activation
derivative.  conv2 stays a product; its activation + pooling, the pooling's backward, the weight
matrices and their folds and the loss are one C loop each.

It applies to the book's LeNet and the options that keep its shape (activation sigmoid or ReLU,
average pooling, any channel counts and dense widths, 1x28x28 inputs, no batch norm or dropout)
trained with plain mean cross-entropy; ``LeNetKernel.supports`` says why not otherwise, and the
trainer then uses the ordinary path.
"""

from __future__ import annotations

import torch
from torch import nn


_ACTIVATIONS = {nn.Sigmoid: "sigmoid", nn.ReLU: "relu"}


def unsupported_reason(model: nn.Module, loss_fn: nn.Module | None = None) -> str | None:
    """Why the kernel cannot run ``model`` with ``loss_fn``, or None if it can."""
    if loss_fn is not None:
        if type(loss_fn) is not nn.CrossEntropyLoss:
            return f"loss {type(loss_fn).__name__} (the kernel computes cross-entropy)"
        if loss_fn.label_smoothing or loss_fn.weight is not None or loss_fn.reduction != "mean" \
                or loss_fn.ignore_index >= 0:
            return "cross-entropy with label smoothing, class weights or a non-mean reduction"
    if not isinstance(model, nn.Sequential):
        return f"{type(model).__name__} is not the book's nn.Sequential LeNet"
    if type(model).forward is not nn.Sequential.forward:
        return f"{type(model).__name__} computes its own forward, not nn.Sequential's layer after layer"
    layers = list(model)
    for layer in layers:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            return "batch norm (its statistics are not fused)"
        if isinstance(layer, nn.modules.dropout._DropoutNd):
            return "dropout (not fused)"
    if len(layers) < 8:
        return "not LeNet's layer sequence"
    conv1, act, pool1, conv2, _, pool2, flat, *dense = layers
    act_type = type(act)
    if act_type not in _ACTIVATIONS:
        return f"activation {act_type.__name__} (the kernel has sigmoid and ReLU)"

    def conv_ok(conv, in_channels, padding):
        return (type(conv) is nn.Conv2d and conv.in_channels == in_channels and conv.kernel_size == (5, 5)
                and conv.stride == (1, 1) and conv.padding == (padding, padding) and conv.dilation == (1, 1)
                and conv.groups == 1 and conv.bias is not None and conv.padding_mode == "zeros")

    def pool_ok(p):
        return (type(p) is nn.AvgPool2d and p.kernel_size in (2, (2, 2)) and p.stride in (2, (2, 2))
                and p.padding in (0, (0, 0)) and not p.ceil_mode)

    if not (conv_ok(conv1, 1, 2) and conv_ok(conv2, conv1.out_channels, 0)):
        return "convolutions other than LeNet's 5x5 (padding 2, then 0) on one input channel"
    if not (pool_ok(pool1) and pool_ok(pool2)) or type(layers[4]) is not act_type:
        return "pooling other than 2x2 average, or mixed activations"
    if type(flat) is not nn.Flatten:
        return "no Flatten after the convolutions"
    linears, acts = dense[0::2], dense[1::2]
    if len(linears) != len(acts) + 1 or any(type(m) is not nn.Linear or m.bias is None for m in linears) \
            or any(type(m) is not act_type for m in acts):
        return "dense layers other than Linear + activation pairs (dropout and batch norm are not fused)"
    if linears[0].in_features != conv2.out_channels * 25:
        return "the first dense layer does not take a 28x28 input's 5x5 feature maps"
    return None


def act(x: torch.Tensor, relu: bool) -> torch.Tensor:
    return x.relu_() if relu else x.sigmoid_()


def act_backward(grad: torch.Tensor, out: torch.Tensor, relu: bool) -> torch.Tensor:
    if relu:
        return torch.ops.aten.threshold_backward(grad, out, 0)
    return torch.ops.aten.sigmoid_backward(grad, out)


class TorchPasses:
    """The kernel's passes outside its matrix products, as PyTorch operators (any float dtype, any machine).

    The interface both implementations offer (``native.CPasses`` is the other): ``matrix`` and ``fold``
    (a convolution's weights as a space-to-depth matrix, and back), ``buffers`` and ``backward_buffers``
    (work tensors per batch size), ``conv_forward`` (image -> flattened conv2 map), ``xent`` (loss,
    correct count and the logits' gradient), ``conv2_backward`` (the gradient through conv2's pooling
    and activation) and ``conv1_backward`` (conv1's weight and bias gradients).  ``dense_scale`` is the
    factor the first dense layer carries: these passes leave the pooled map at 4x its value.
    """

    name = "torch"
    dense_scale = 0.25

    def matrix(self, k: "LeNetKernel", conv: nn.Conv2d, index: torch.Tensor, scale: float) -> torch.Tensor:
        cout, width = conv.out_channels, 36 * conv.in_channels + 1
        big = conv.weight.new_zeros(4, cout, width)
        big.view(-1)[index] = (conv.weight * scale).flatten().repeat(4)
        big[:, :, -1] = conv.bias
        return big.view(4 * cout, width).to(k.dtype)

    def fold(self, grad: torch.Tensor, conv: nn.Conv2d, index: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias gradients of ``conv`` from the gradient (width, 4*C_out) of its matrix."""
        cout = conv.out_channels
        g = grad.t().reshape(-1).to(conv.weight.dtype)
        weight = g[index].view(4, -1).sum(0).view_as(conv.weight)
        bias = g.view(4, cout, -1)[:, :, -1].sum(0)
        return weight * scale if scale != 1 else weight, bias

    def buffers(self, k: "LeNetKernel", batch: int) -> dict[str, torch.Tensor]:
        dt = k.dtype
        buf = {"Q": torch.empty(36 * k.c1 + 1, 25 * batch, dtype=dt),
               "xpad": torch.zeros(32, 32, batch, dtype=dt), "P": torch.empty(37, 196 * batch, dtype=dt)}
        buf["Q"][-1] = 1      # the bias row
        buf["P"][36] = 1
        return buf

    def backward_buffers(self, k: "LeNetKernel", buf: dict[str, torch.Tensor], batch: int) -> None:
        if "gp1" not in buf:
            buf["gp1"] = torch.empty(k.c1, 7, 2, 7, 2, batch, dtype=k.dtype)

    def conv_forward(self, k: "LeNetKernel", X: torch.Tensor, W2: torch.Tensor, buf: dict[str, torch.Tensor]):
        """(f, saved): the flattened conv2 map (features, batch) and what the backward passes need."""
        B, c1, c2, relu = X.shape[0], k.c1, k.c2, k.relu
        xpad, Q, P = buf["xpad"], buf["Q"], buf["P"]
        W1 = self.matrix(k, k.conv1, k._index1, 1.0)
        xpad[2:30, 2:30].copy_(X.reshape(B, 784).t().view(28, 28, B))
        P[:36].view(6, 6, 14, 14, B).copy_(xpad.unfold(0, 6, 2).unfold(1, 6, 2).permute(3, 4, 0, 1, 2))
        s1 = act(torch.mm(W1, P), relu).view(4, c1 * 196 * B)        # (u,v) x (c, I, J, b)
        p1 = torch.add(s1[0], s1[1]).add_(s1[2]).add_(s1[3]).view(c1, 14, 14, B)   # 4 x the pooled map
        Q[:-1].view(c1, 6, 6, 5, 5, B).copy_(p1.unfold(1, 6, 2).unfold(2, 6, 2).permute(0, 4, 5, 1, 2, 3))
        s2 = act(torch.mm(W2, Q), relu).view(4, c2 * 25 * B)
        f = torch.add(s2[0], s2[1]).add_(s2[2]).add_(s2[3]).view(c2 * 25, B)   # 4 x pooled, (c, h, w) x b
        return f, (P, Q, s1, s2)

    def xent(self, k: "LeNetKernel", h: torch.Tensor, y: torch.Tensor):
        """(mean loss, correct count, gradient of the logits, gradient of the last bias) of logits (K, B)."""
        B = h.shape[1]
        logitsT = h.to(k.linears[-1].weight.dtype)
        lsm = torch.log_softmax(logitsT, 0)
        loss = -lsm.gather(0, y[None, :]).mean()
        correct = (logitsT.argmax(0) == y).sum()
        g = lsm.exp_()
        g[y, torch.arange(B, device=y.device)] -= 1
        g /= B
        return loss, correct, g, g.sum(1, dtype=k.linears[-1].bias.dtype)

    def conv2_backward(self, k: "LeNetKernel", g: torch.Tensor, s2: torch.Tensor, buf, batch: int) -> torch.Tensor:
        return act_backward(g.view(1, -1).expand(4, -1), s2, k.relu).view(4 * k.c2, 25 * batch)

    def conv1_backward(self, k: "LeNetKernel", W2t: torch.Tensor, gz2: torch.Tensor, saved, buf, batch: int):
        P, _, s1, _ = saved
        gQ = torch.mm(W2t, gz2).view(k.c1, 3, 2, 3, 2, 5, 5, batch)  # c, a, u, b, v, I, J, b
        gp1 = buf["gp1"]
        gp1.zero_()
        for a in range(3):                  # col2im: 6x6 patches at stride 2 overlap in 3x3 blocks of 2x2
            for b in range(3):
                gp1[:, a:a + 5, :, b:b + 5] += gQ[:, a, :, b].permute(0, 3, 1, 4, 2, 5)
        gz1 = act_backward(gp1.view(1, -1).expand(4, -1), s1, k.relu).view(4 * k.c1, 196 * batch)
        gW1 = P @ gz1.t()                                # (37, 4*C1)
        return list(zip((k.conv1.weight, k.conv1.bias), self.fold(gW1, k.conv1, k._index1, 1.0)))


class LeNetKernel:
    """The fused step for one LeNet ``model``; parameters are read from the model on every call,
    so the optimizer, checkpoints and schedules work on the module as usual.

    ``passes`` computes everything but the matrix products: :class:`TorchPasses` (the default) or the
    C passes (``native.load``)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16, passes=None):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"LeNetKernel cannot run this model: {reason}")
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"LeNetKernel runs on the CPU; the model is on {device}")
        layers = list(model)
        self.conv1, self.conv2 = layers[0], layers[3]
        self.linears = [m for m in layers[7:] if isinstance(m, nn.Linear)]
        self.relu = isinstance(layers[1], nn.ReLU)
        self.dtype = dtype
        self.c1, self.c2 = self.conv1.out_channels, self.conv2.out_channels
        self._index1 = self._tap_index(self.c1, 1)
        self._index2 = self._tap_index(self.c2, self.c1)
        self._buffers: dict[int, dict[str, torch.Tensor]] = {}
        self.passes = passes if passes is not None else TorchPasses()

    # ---- weights as space-to-depth matrices ---------------------------------------------------
    # conv1's matrix is (4*C1, 37): rows (u, v, c) = position in the 2x2 output block and channel,
    # columns the 6x6 input patch's pixels (r, s) and a bias column.  conv2's is (4*C2, 36*C1 + 1):
    # rows (u, v, c'), columns (c, r, s) of a 6x6 patch of the pooled conv1 map, then the bias.  Kernel
    # tap (kh, kw) of output position (u, v) sits at patch pixel (u + kh, v + kw).  Building and
    # folding them back are one scatter and one gather through these precomputed flat indices.
    @staticmethod
    def _tap_index(out_channels: int, in_channels: int) -> torch.Tensor:
        width = 36 * in_channels + 1
        u, v, co, ci, kh, kw = torch.meshgrid(*(torch.arange(n) for n in (2, 2, out_channels, in_channels, 5, 5)),
                                              indexing="ij")
        return ((((u * 2 + v) * out_channels + co) * width + ci * 36 + (u + kh) * 6 + (v + kw))).flatten()

    def _buffers_for(self, batch: int) -> dict[str, torch.Tensor]:
        """The forward pass's work buffers for a batch size (the backward pass adds its own)."""
        buf = self._buffers.pop(batch, None)
        if buf is None:
            buf = self.passes.buffers(self, batch)
        # Keep the four most recent sizes: an epoch cycles through the training batch, the last partial
        # batch, the evaluation batch and the last evaluation batch, and rebuilding a set (a few to
        # ~60 MB, every page touched anew) costs more than the step that uses it.
        self._buffers[batch] = buf
        while len(self._buffers) > 4:
            del self._buffers[next(iter(self._buffers))]
        return buf

    # ---- the step -----------------------------------------------------------------------------
    def _forward(self, X: torch.Tensor):
        if X.shape[1:] != (1, 28, 28):
            raise ValueError(f"LeNetKernel takes 1x28x28 images, got {tuple(X.shape[1:])}")
        buf = self._buffers_for(X.shape[0])
        W2 = self.passes.matrix(self, self.conv2, self._index2, 0.25)     # carries conv1's pooling factor 1/4
        f, saved = self.passes.conv_forward(self, X, W2, buf)
        hidden, weights = [f], []
        h = f
        for i, lin in enumerate(self.linears):
            weight = (lin.weight * self.passes.dense_scale if i == 0 and self.passes.dense_scale != 1
                      else lin.weight).to(self.dtype)
            weights.append(weight)
            h = torch.addmm(lin.bias.to(self.dtype)[:, None], weight, h)
            if i < len(self.linears) - 1:
                h = act(h, self.relu)
                hidden.append(h)
        return h, (saved, W2, hidden, weights, buf)

    EVAL_CHUNK = 256
    """logits() runs larger batches in chunks of this many images: the work buffers of a 1,024-image
    batch (~60 MB) fall out of the caches, and 10,000 test images took 95 against 82 ms."""

    @torch.no_grad()
    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """The model's output (B, classes) for a batch X (B, 1, 28, 28), as the kernel computes it."""
        dtype = self.linears[-1].weight.dtype
        if X.shape[0] <= self.EVAL_CHUNK:
            return self._forward(X)[0].to(dtype).t()
        return torch.cat([self._forward(part)[0].to(dtype).t() for part in X.split(self.EVAL_CHUNK)])

    @torch.no_grad()
    def forward_backward(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy of the batch and its correct count (tensors); gradients go to ``.grad``."""
        h, (saved, W2, hidden, weights, buf) = self._forward(X)
        B, passes = X.shape[0], self.passes
        passes.backward_buffers(self, buf, B)
        loss, correct, g, bias_grad = passes.xent(self, h, y)
        grads: list[tuple[nn.Parameter, torch.Tensor]] = []
        for i in range(len(self.linears) - 1, -1, -1):
            lin, inp = self.linears[i], hidden[i]
            grads.append((lin.bias, bias_grad if bias_grad is not None else g.sum(1, dtype=lin.bias.dtype)))
            bias_grad = None
            g = g.to(self.dtype)
            gw = g @ inp.t()
            grads.append((lin.weight, gw * passes.dense_scale if i == 0 and passes.dense_scale != 1 else gw))
            g = weights[i].t() @ g
            if i > 0:
                g = act_backward(g, inp, self.relu)
        gz2 = passes.conv2_backward(self, g, saved[3], buf, B)
        gW2 = saved[1] @ gz2.t()                                # (36*C1+1, 4*C2)
        grads += zip((self.conv2.weight, self.conv2.bias), passes.fold(gW2, self.conv2, self._index2, 0.25))
        W2t = W2[:, :-1].t().contiguous()
        grads += passes.conv1_backward(self, W2t, gz2, saved, buf, B)
        for param, grad in grads:
            if param.grad is None:
                param.grad = grad.to(param.dtype).contiguous()
            else:
                param.grad += grad
        return loss, correct

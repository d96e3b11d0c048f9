"""The book's API: code written for ``from d2l import torch as d2l`` runs with ``from cnnlab import d2l``.

Dive into Deep Learning's chapter 6 (convolution layer, padding and stride, channels, pooling,
LeNet) calls a small vocabulary through ``d2l.``: ``corr2d``, ``load_data_fashion_mnist``,
``try_gpu``, ``Accumulator``, ``Timer``, ``Animator``, ``accuracy``, ``evaluate_accuracy_gpu``,
``train_ch6`` and the framework aliases (``d2l.zeros``, ``d2l.reduce_sum``, ...).  Every name here
has the book's signature and behaviour, including the lines ``train_ch6`` prints.  What differs
is underneath and only helps:

* ``load_data_fashion_mnist`` reads the verified IDX files through :mod:`cnnlab.data` (no
  torchvision, no PIL per image, no worker processes) and batches whole-split uint8 tensors.
* ``train_ch6`` trains the net on the step ``cnnlab train`` would choose for it
  (``cnnlab.train.steps.choose_step``): the fused LeNet kernel on a CPU for LeNet-shaped networks,
  else PyTorch's layers in the layout and precision measured fastest there.  When an epoch will be
  long it says so once on stderr, and on a CPU names the zoo's 28x28 form of the network.
* ``train_ch6`` and ``evaluate_accuracy_gpu`` keep their running sums on the device, so a step
  does not wait for the GPU; on cnnlab's own iterators they move the split to the device once
  instead of every batch.  Any iterable of ``(X, y)`` still works, a user's DataLoader included.
* ``try_gpu`` and ``try_all_gpus`` find Apple's GPU (``mps``) where there is no CUDA GPU.
* ``Animator`` redraws live in Jupyter; anywhere else it saves the figure to a PNG file (said
  once, on stderr) instead of trying to open a window.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
import weakref
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from cnnlab import fileio
from cnnlab.data import BatchIterator, get_spec, load_split
from cnnlab.device import synchronize
from cnnlab.models.match import small_form
from cnnlab.ops import corr2d
from cnnlab.train.config import TrainConfig
from cnnlab.train.steps import TrainStep, choose_step, inference_forward, sum_dtype
from cnnlab.viz import use_cjk_fonts

__all__ = [
    "ANIMATOR_PATH", "LONG_EPOCH_SECONDS", "Accumulator", "Animator", "Timer", "accuracy", "corr2d", "cpu",
    "evaluate_accuracy_gpu", "get_fashion_mnist_labels", "gpu", "load_data_fashion_mnist", "num_gpus",
    "plot", "set_axes", "set_figsize", "show_images", "train_ch6", "try_all_gpus", "try_gpu",
    "use_svg_display",
]

# ------------------------------------------------------------------ framework aliases (d2l's torch.py)

ones, zeros, ones_like, zeros_like = torch.ones, torch.zeros, torch.ones_like, torch.zeros_like
tensor, arange, meshgrid, linspace, eye = torch.tensor, torch.arange, torch.meshgrid, torch.linspace, torch.eye
sin, sinh, cos, cosh, tanh, exp, log = torch.sin, torch.sinh, torch.cos, torch.cosh, torch.tanh, torch.exp, torch.log
normal, rand, randn = torch.normal, torch.rand, torch.randn
matmul, batch_matmul, sigmoid = torch.matmul, torch.bmm, torch.sigmoid
int32, int64, float32 = torch.int32, torch.int64, torch.float32
concat, stack, abs = torch.cat, torch.stack, torch.abs  # noqa: A001 - the book shadows abs too


def numpy(x, *args, **kwargs):
    """A tensor as a numpy array; unlike the book's alias it also accepts a GPU tensor."""
    return x.detach().cpu().numpy(*args, **kwargs)


def _method_alias(name: str, method: str):
    """``d2l.<name>(x, ...)`` is ``x.<method>(...)``, as the book's torch.py defines these aliases."""
    def alias(x, *args, **kwargs):
        return getattr(x, method)(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = name
    return alias


size = _method_alias("size", "numel")
reshape = _method_alias("reshape", "reshape")
to = _method_alias("to", "to")
reduce_sum = _method_alias("reduce_sum", "sum")
reduce_mean = _method_alias("reduce_mean", "mean")
argmax = _method_alias("argmax", "argmax")
astype = _method_alias("astype", "type")
transpose = _method_alias("transpose", "t")
expand_dims = _method_alias("expand_dims", "unsqueeze")
swapaxes = _method_alias("swapaxes", "swapaxes")
repeat = _method_alias("repeat", "repeat")


def __getattr__(name: str):
    """``d2l.plt`` is pyplot, imported on first use so that ``from cnnlab import d2l`` stays light."""
    if name == "plt":
        from matplotlib import pyplot

        return pyplot
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------ devices


def cpu() -> torch.device:
    return torch.device("cpu")


def gpu(i: int = 0) -> torch.device:
    return torch.device(f"cuda:{i}")


def num_gpus() -> int:
    return torch.cuda.device_count()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def try_gpu(i: int = 0) -> torch.device:
    """CUDA GPU ``i`` if it exists; else, on a Mac with no CUDA GPU, Apple's GPU (``mps``, the only one,
    so for ``i == 0``); else the CPU.  The book looks for CUDA only: a Mac trained on its CPU."""
    if num_gpus() >= i + 1:
        return gpu(i)
    if i == 0 and num_gpus() == 0 and _mps_available():
        return torch.device("mps")
    return cpu()


def try_all_gpus() -> list[torch.device]:
    """Every CUDA GPU; else ``[mps]`` where Apple's GPU is available; else ``[cpu()]``."""
    if num_gpus():
        return [gpu(i) for i in range(num_gpus())]
    return [torch.device("mps")] if _mps_available() else [cpu()]


# ------------------------------------------------------------------ counting and timing


class Accumulator:
    """Running sums of ``n`` numbers, added to together (``metric.add(loss, correct, count)``)."""

    def __init__(self, n: int):
        self.data = [0.0] * n

    def add(self, *args) -> None:
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def reset(self) -> None:
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]


class Timer:
    """Records several running times; starts on creation."""

    def __init__(self):
        self.times: list[float] = []
        self.start()

    def start(self) -> None:
        self.tik = time.perf_counter()

    def stop(self) -> float:
        """Stop the timer, record and return the time since ``start``."""
        self.times.append(time.perf_counter() - self.tik)
        return self.times[-1]

    def avg(self) -> float:
        return sum(self.times) / len(self.times)

    def sum(self) -> float:
        return sum(self.times)

    def cumsum(self) -> list[float]:
        return np.array(self.times).cumsum().tolist()


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Number of correct predictions (a float, as the book); ``y_hat`` holds scores or class indices."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    return float((y_hat.type(y.dtype) == y).type(y.dtype).sum())


# ------------------------------------------------------------------ Fashion-MNIST


def get_fashion_mnist_labels(labels) -> list[str]:
    """Text labels of Fashion-MNIST class indices (a tensor or any sequence of ints)."""
    classes = get_spec("fashion-mnist").classes
    return [classes[int(i)] for i in labels]


class FashionMNISTIterator(BatchIterator):
    """A :class:`~cnnlab.data.BatchIterator` that can also yield its batches on another device.

    The book's iterators live on the CPU and ``train_ch6`` copies every batch to the GPU.  Given
    one of these, :func:`train_ch6` and :func:`evaluate_accuracy_gpu` instead copy the uint8 split
    to the device once (cached per device) and cut batches there, in the same order.
    """

    def batches_on(self, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The next epoch's batches (advancing the epoch as ``iter()`` does), produced on ``device``."""
        device, own = _indexed(torch.device(device)), _indexed(self.device)
        if device == own:
            return iter(self)
        twins = self.__dict__.setdefault("_twins", {})
        if device not in twins:
            twins[device] = BatchIterator(
                self.images, self.labels, self.batch_size, shuffle=self.shuffle, seed=self.seed, device=device,
                normalize=self.normalize, resize=self.resize, dtype=self.dtype, drop_last=self.drop_last)
        epoch = self.epoch
        self.epoch += 1
        return twins[device].batches(epoch)


def load_data_fashion_mnist(batch_size: int, resize=None, *, device=None, data_dir=None, seed: int | None = None):
    """``(train_iter, test_iter)`` over Fashion-MNIST, as the book's function returns.

    Batches are ``(X, y)``: X float32 in [0, 1] of shape (B, 1, 28, 28), or (B, 1, resize, resize)
    (bilinear with antialiasing, as ``transforms.Resize``), and y int64.  The training iterator
    gives a new order each time it is iterated; the test iterator keeps the file's order.  Both
    can be iterated any number of times and ``len()`` is the number of batches.

    Extra keywords (not in the book): ``device`` keeps the data on that device (default: CPU,
    like the book); ``data_dir`` names a folder with the IDX files (default: ``CNNLAB_DATA``, the
    user cache, system copies, then a download); ``seed`` fixes the shuffling (default: drawn
    from torch's generator, so ``torch.manual_seed`` makes runs repeat).
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    iterators = []
    for split, shuffle in (("train", True), ("test", False)):
        images, labels = load_split("fashion-mnist", split, data_dir=data_dir)
        iterators.append(FashionMNISTIterator(images, labels, batch_size, shuffle=shuffle, seed=seed,
                                              device=device, resize=resize))
    return tuple(iterators)


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:N`` of the current GPU, so that one GPU has one name."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _batches_on(data_iter: Iterable, device: torch.device) -> Iterable:
    """cnnlab's iterators produce batches on the device directly; anything else is iterated as given."""
    if isinstance(data_iter, FashionMNISTIterator):
        return data_iter.batches_on(device)
    return data_iter


# ------------------------------------------------------------------ evaluation and training


def evaluate_accuracy_gpu(net, data_iter: Iterable, device=None) -> float:
    """Accuracy of ``net`` over ``data_iter``, computed on ``device`` (default: where the net's parameters are).

    As the book: the net is put in evaluation mode, each batch is moved to the device (``X`` may
    be a list of tensors), and the result is correct predictions / examples.  The counts stay on
    the device until the end, so no batch waits for the previous one, and no autograd state is kept
    (``inference_mode``).  A LeNet-shaped net on a CPU is scored by the LeNet kernel's forward pass in
    float32 (``cnnlab.train.steps.inference_forward``: the net's own function up to rounding, in
    fewer operations; 10,000 test images took 143 against 200 ms).
    """
    forward = net
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    device = torch.device(device) if device else torch.device("cpu")
    if isinstance(net, nn.Module):
        forward = inference_forward(net, device)
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    with torch.inference_mode():
        for X, y in _batches_on(data_iter, device):
            if isinstance(X, list):
                X = [x.to(device) for x in X]
            else:
                X = X.to(device)
            y = y.to(device)
            y_hat = forward(X)
            if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
                y_hat = y_hat.argmax(dim=1)
            counts[0] += (y_hat.type(y.dtype) == y).sum()
            counts[1] += y.numel()
    correct, total = counts.tolist()
    return correct / total


def _init_weights(m: nn.Module) -> None:
    """The book's Xavier initialisation of every Linear and Conv2d layer (exact types, as the book)."""
    if type(m) == nn.Linear or type(m) == nn.Conv2d:  # noqa: E721 - the book's test, subclasses excluded
        nn.init.xavier_uniform_(m.weight)


def _training_step(net: nn.Module, loss: nn.Module, lr: float, device: torch.device, X: torch.Tensor) -> TrainStep:
    """The step ``cnnlab train`` would take for ``net`` on the book's recipe (plain SGD at rate ``lr``,
    cross-entropy, every speed setting ``auto``), chosen by the same function from the first batch ``X``:
    the LeNet kernel for LeNet-shaped networks on a CPU (it trains ``net``'s own parameters), else
    PyTorch's layers in the layout and precision measured fastest for the network and device."""
    side = X.shape[-1] if X.dim() == 4 and X.shape[-2] == X.shape[-1] else -1
    return choose_step(TrainConfig(lr=lr), net, device, loss_fn=loss, batch_size=X.shape[0], input_size=side)


LONG_EPOCH_SECONDS = 120.0
"""An epoch expected to take longer than this makes :func:`train_ch6` say so (once, on stderr)."""

_clock = time.perf_counter
"""The clock of :class:`_EpochForecast` (tests slow it down instead of training for hours)."""


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _EpochForecast:
    """Times a few batches after the first (which pays one-off costs) and, if an epoch will be long,
    says on stderr how long, and on a CPU which of the zoo's 28x28 networks is this one's small form.

    An epoch is its training batches at the measured pace, plus the test set's forward passes at a
    third of a training step each (a backward pass costs about two forward passes)."""

    TIMED_BATCHES = 3

    def __init__(self, net: nn.Module, device: torch.device, num_batches: int | None, test_iter: Iterable,
                 num_epochs: int, lr: float):
        self.net, self.device, self.num_batches = net, device, num_batches
        self.num_epochs, self.lr = num_epochs, lr
        try:
            self.test_batches = len(test_iter)
        except TypeError:
            self.test_batches = 0
        self.done = num_batches is None or num_batches <= self.TIMED_BATCHES + 1
        self.start = 0.0

    def batch_done(self, i: int, batch_size: int) -> None:
        """Called after training batch ``i`` of the first epoch."""
        if self.done or i not in (0, self.TIMED_BATCHES):
            return
        synchronize(self.device)
        if i == 0:
            self.start = _clock()
            return
        self.done = True
        per_batch = (_clock() - self.start) / self.TIMED_BATCHES
        epoch = per_batch * (self.num_batches + self.test_batches / 3)
        if epoch > LONG_EPOCH_SECONDS:
            print(self.message(per_batch, epoch, batch_size), file=sys.stderr)

    def message(self, per_batch: float, epoch: float, batch_size: int) -> str:
        lines = [f"train_ch6: about {_duration(epoch)} per epoch on {self.device} ({self.num_batches} batches at "
                 f"{per_batch:.1f} s, then the test set), {_duration(epoch * self.num_epochs)} for "
                 f"{self.num_epochs} epoch{'' if self.num_epochs == 1 else 's'}."]
        if self.device.type == "cpu":
            small = small_form(self.net)
            if small is not None:
                lines.append(f"On a CPU, the zoo's small form of this network, {small}, trains on 28x28 images: "
                             f"cnnlab train --model {small} --epochs {self.num_epochs} --lr {self.lr:g} "
                             f"--batch-size {batch_size}")
            else:
                lines.append("On a CPU, `cnnlab models` lists networks for 28x28 images (the *_mini ones) "
                             "that train in minutes.")
        return "\n".join(lines)


def train_ch6(net, train_iter: Iterable, test_iter: Iterable, num_epochs: int, lr: float, device=None) -> None:
    """Train ``net`` with SGD and cross-entropy, as the book's ``train_ch6``, printing the same lines.

    ``training on {device}`` first, then ``loss .., train acc .., test acc ..`` and
    ``.. examples/sec on {device}``; the Animator gets five points per epoch plus the test
    accuracy.  ``device`` defaults to :func:`try_gpu`.  The examples/sec figure, like the book's,
    counts training time only.

    The book's recipe (Xavier-uniform weights, plain SGD at rate ``lr``, mean cross-entropy) runs on
    the training step ``cnnlab train`` would choose for ``net`` (``cnnlab.train.steps.choose_step``):
    on a CPU the fused LeNet kernel when ``net`` has LeNet's shape, else PyTorch's layers in the layout
    and precision measured fastest there (docs/speed.md).  Either way ``net``'s own parameters are the
    ones trained.  The running loss and accuracy are summed on the device and read only when a point
    is drawn (the book reads them after every batch).  If an epoch looks long (over
    :data:`LONG_EPOCH_SECONDS`), a note on stderr says how long after the first few batches.
    """
    device = torch.device(device) if device is not None else try_gpu()
    net.apply(_init_weights)
    print("training on", device)
    net.to(device)
    loss = nn.CrossEntropyLoss()
    animator = Animator(xlabel="epoch", xlim=[1, num_epochs], legend=["train loss", "train acc", "test acc"])
    timer = Timer()
    try:
        num_batches = len(train_iter)
    except TypeError:  # an iterable without len(): one point per epoch
        num_batches = None
    every = max(1, num_batches // 5) if num_batches else None
    forecast = _EpochForecast(net, device, num_batches, test_iter, num_epochs, lr)
    dtype = sum_dtype(device)
    step = None
    examples = 0
    train_l = train_acc = test_acc = float("nan")
    try:
        for epoch in range(num_epochs):
            sums = torch.zeros(3, dtype=dtype, device=device)  # loss * n, correct, n
            net.train()
            timer.start()
            for i, (X, y) in enumerate(_batches_on(train_iter, device)):
                X, y = X.to(device), y.to(device)
                if step is None:
                    step = _training_step(net, loss, lr, device, X)
                loss_sum, correct = step(X, y)
                n = X.shape[0]
                sums += torch.stack((loss_sum, correct.to(dtype), torch.tensor(n, dtype=dtype, device=device)))
                if epoch == 0:
                    forecast.batch_done(i, n)
                if every and ((i + 1) % every == 0 or i == num_batches - 1):
                    loss_total, correct_total, seen = sums.tolist()
                    timer.stop()
                    train_l, train_acc = loss_total / seen, correct_total / seen
                    animator.add(epoch + (i + 1) / num_batches, (train_l, train_acc, None))
                    timer.start()
            synchronize(device)
            timer.stop()
            loss_total, correct_total, seen = sums.tolist()
            examples += int(seen)
            train_l, train_acc = loss_total / seen, correct_total / seen
            if not every:
                animator.add(epoch + 1, (train_l, train_acc, None))
            test_acc = evaluate_accuracy_gpu(net, test_iter, device)
            animator.add(epoch + 1, (None, None, test_acc))
    finally:
        animator.flush()
        # The step may have put the weights in channels-last order; the net goes back as it came.
        net.to(memory_format=torch.contiguous_format)
    print(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    print(f"{examples / timer.sum():.1f} examples/sec on {str(device)}")


# ------------------------------------------------------------------ figures

ANIMATOR_PATH: str | None = None
"""Where a headless :class:`Animator` saves its figure; None: ``$CNNLAB_ANIMATOR``, else ``./animator.png``."""

_ANIMATOR_ENV = "CNNLAB_ANIMATOR"
_announced_paths: set[str] = set()
_waiting: "weakref.WeakSet[Animator]" = weakref.WeakSet()
"""Headless Animators with points not yet in their file: written at exit."""


@atexit.register
def _flush_waiting() -> None:
    for animator in list(_waiting):
        try:
            animator.flush()
        except OSError as exc:  # its folder may be gone by now; exiting goes on
            print(f"Animator: could not write {animator.path} at exit: {exc}", file=sys.stderr)


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (any IPython shell that has a kernel), not in plain or terminal Python."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def use_svg_display() -> None:
    """Show pyplot figures in Jupyter as SVG (as the book); outside Jupyter there is nothing to change.

    :class:`Animator` draws SVG in Jupyter whether or not this was called, as the book's does.
    """
    if _in_notebook():
        try:
            from matplotlib_inline import backend_inline
        except ImportError:
            return
        backend_inline.set_matplotlib_formats("svg")


def set_figsize(figsize=(3.5, 2.5)) -> None:
    """Default size of new matplotlib figures."""
    import matplotlib

    use_svg_display()
    use_cjk_fonts()
    matplotlib.rcParams["figure.figsize"] = figsize


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend) -> None:
    """Labels, limits, scales, legend and grid of a matplotlib Axes."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale(xscale)
    axes.set_yscale(yscale)
    # A range of zero width (the book's xlim=[1, num_epochs] with one epoch) is left to autoscaling,
    # where matplotlib would warn and widen it anyway.
    if xlim is None or xlim[0] != xlim[1]:
        axes.set_xlim(xlim)
    if ylim is None or ylim[0] != ylim[1]:
        axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


def plot(X, Y=None, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None, xscale="linear",
         yscale="linear", fmts=("-", "m--", "g-.", "r:"), figsize=(3.5, 2.5), axes=None):
    """Plot one or several curves on ``axes`` (default: pyplot's current axes), as the book's ``plot``.

    ``X`` and ``Y`` are each a 1-D sequence or a list of them; with ``Y`` omitted, ``X`` is plotted
    against its indices.
    """
    if legend is None:
        legend = []
    set_figsize(figsize)
    if axes is None:
        from matplotlib import pyplot

        axes = pyplot.gca()

    def has_one_axis(v):
        return (hasattr(v, "ndim") and v.ndim == 1) or (isinstance(v, list) and not hasattr(v[0], "__len__"))

    if has_one_axis(X):
        X = [X]
    if Y is None:
        X, Y = [[]] * len(X), X
    elif has_one_axis(Y):
        Y = [Y]
    if len(X) != len(Y):
        X = X * len(Y)
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts):
        if len(x):
            axes.plot(x, y, fmt)
        else:
            axes.plot(y, fmt)
    set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend)


def show_images(imgs, num_rows: int, num_cols: int, titles=None, scale: float = 1.5):
    """A grid of images with optional titles, through pyplot; returns the flat array of Axes (as the book).

    Tensors may be on any device and shaped (H, W), (1, H, W) or (H, W, C).
    """
    from matplotlib import pyplot

    use_cjk_fonts()
    figsize = (num_cols * scale, num_rows * scale)
    _, axes = pyplot.subplots(num_rows, num_cols, figsize=figsize, squeeze=False)
    axes = axes.flatten()
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        if torch.is_tensor(img):
            img = img.detach().cpu()
            if img.ndim == 3 and img.shape[0] == 1:
                img = img[0]
            img = img.numpy()
        ax.imshow(img)
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles:
            ax.set_title(titles[i])
    return axes


def _animator_path() -> str:
    return os.path.abspath(ANIMATOR_PATH or os.environ.get(_ANIMATOR_ENV) or "animator.png")


class Animator:
    """Plot data as it arrives, as the book's ``Animator``.

    In Jupyter the figure is redrawn in place after every :meth:`add` (SVG, as the book; the cell's
    printed lines stay visible).  Anywhere else the figure is written to a PNG file (``path``, else
    :data:`ANIMATOR_PATH`, else ``$CNNLAB_ANIMATOR``, else ``./animator.png``); the path is said once
    on stderr.  The file is written on the first ``add``, then at most every :attr:`SAVE_INTERVAL`
    seconds (a PNG costs ~50 ms, a point of a fast training run much less), and :meth:`flush`
    (called by :func:`train_ch6` when it ends, and at exit) writes points still waiting.  No window
    is ever opened: the figure is a bare ``matplotlib.figure.Figure``, outside pyplot.
    """

    SAVE_INTERVAL = 2.0

    def __init__(self, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None, xscale="linear",
                 yscale="linear", fmts=("-", "m--", "g-.", "r:"), nrows=1, ncols=1, figsize=(3.5, 2.5),
                 *, path: str | os.PathLike | None = None):
        from matplotlib.figure import Figure

        if legend is None:
            legend = []
        use_cjk_fonts()
        self.fig = Figure(figsize=figsize)
        self.axes = self.fig.subplots(nrows, ncols)
        if nrows * ncols == 1:
            self.axes = [self.axes]
        self.config_axes = lambda: set_axes(self.axes[0], xlabel, ylabel, xlim, ylim, xscale, yscale, legend)
        self.X, self.Y, self.fmts = None, None, fmts
        self.notebook = _in_notebook()
        self.path = None if self.notebook else os.path.abspath(path) if path is not None else _animator_path()
        self._display_handle = None
        self._laid_out = False
        self._saved_at: float | None = None
        self._unsaved = False

    def add(self, x, y) -> None:
        """Add one point to each curve (``y`` a value or a sequence; None leaves that curve alone) and redraw."""
        if not hasattr(y, "__len__"):
            y = [y]
        n = len(y)
        if not hasattr(x, "__len__"):
            x = [x] * n
        if not self.X:
            self.X = [[] for _ in range(n)]
        if not self.Y:
            self.Y = [[] for _ in range(n)]
        for i, (a, b) in enumerate(zip(x, y)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        self.axes[0].cla()
        for xs, ys, fmt in zip(self.X, self.Y, self.fmts):
            self.axes[0].plot(xs, ys, fmt)
        self.config_axes()
        if not self._laid_out:  # once: labels and legend exist now; a layout pass per point would double its cost
            self.fig.tight_layout()
            self._laid_out = True
        self._show()

    def _show(self) -> None:
        if self.notebook:
            from IPython import display

            image = self._rendered()
            if self._display_handle is None:
                self._display_handle = display.display(image, display_id=True)
            else:
                self._display_handle.update(image)
            return
        if self._saved_at is not None and time.perf_counter() - self._saved_at < self.SAVE_INTERVAL:
            if not self._unsaved:
                self._unsaved = True
                _waiting.add(self)
            return
        self._save()

    def _save(self) -> None:
        fileio.save_figure(self.path, self.fig)
        self._saved_at = time.perf_counter()
        self._unsaved = False
        _waiting.discard(self)
        if self.path not in _announced_paths:
            _announced_paths.add(self.path)
            print(f"Animator: not in a notebook, drawing the figure to {self.path}", file=sys.stderr)

    def flush(self) -> None:
        """Write the figure's file now if points added since it was last written are waiting."""
        if self._unsaved:
            self._save()

    def _rendered(self):
        """The figure as an IPython SVG object (the book's format), whatever matplotlib's backend."""
        import io

        from IPython import display

        buf = io.BytesIO()
        self.fig.savefig(buf, format="svg")
        return display.SVG(buf.getvalue())

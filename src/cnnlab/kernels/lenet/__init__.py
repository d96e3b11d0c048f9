"""The hand-fused CPU training step for LeNet-shaped networks (``LeNetKernel``), with its passes outside
the matrix products as PyTorch operators (``TorchPasses``) or as C loops (``native.load``)."""

from cnnlab.kernels.lenet.kernel import LeNetKernel, TorchPasses, unsupported_reason

__all__ = ["LeNetKernel", "TorchPasses", "unsupported_reason"]

"""Imports every model family so that each registers its names.

Naming: a bare family name (``alexnet``, ``vgg11``, ``nin``, ``googlenet``, ``resnet18``,
``densenet``) is the book's network at the book's input size (d2l chapter 7: 224 or 96 pixels, the
loader resizes); ``<family>_mini`` is a compact form for 28x28 that trains in minutes on a CPU.
"""

from cnnlab.models import alexnet, densenet, googlenet, lenet, nin, resnet, vgg  # noqa: F401

"""Imports every model family so that each registers its names."""

from cnnlab.models import lenet  # noqa: F401

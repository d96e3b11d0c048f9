"""cnnlab: learn, train and measure small convolutional networks on MNIST-like images.

The layout follows the data flow, one way only:
``data`` (formats, sources, loaders) -> ``models`` (registry and families) -> ``engine``
(training loop, metrics, callbacks) -> ``viz`` (pictures).  ``ops`` and ``layers`` hold the
convolution building blocks from scratch.  The command line (``cnnlab.cli``) is a thin shell over
the library; the library never imports it.
"""

from cnnlab import portable
from cnnlab.errors import CnnlabError, ConfigError, DataError

# Here, so the command line, the library and `from cnnlab import d2l` all print Chinese names on any console.
portable.make_console_safe()

__version__ = "0.1.0"

__all__ = ["CnnlabError", "ConfigError", "DataError", "__version__"]

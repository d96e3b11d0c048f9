"""Optional features whose packages are extras of cnnlab (``pip install -e ".[NAME]"`` in cnnlab's folder).

A feature asks for its packages before it does any work, so a missing one is a one-line refusal that
names the install command, not an ImportError after an hour of training.
"""

from __future__ import annotations

import importlib
from typing import Sequence

from cnnlab.errors import ConfigError


def require(modules: Sequence[str], extra: str, feature: str) -> None:
    """Raise ConfigError naming the packages to install unless every module imports (the modules here are
    their packages' names)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"{feature} needs {' and '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed; "
                          f"install {'it' if len(missing) == 1 else 'them'} with: pip install {' '.join(missing)} "
                          f"(or, in cnnlab's folder, pip install -e \".[{extra}]\")")

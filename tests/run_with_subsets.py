"""``python tests/run_with_subsets.py SCRIPT [ARGS]``: run a learner's SCRIPT as ``__main__`` with the
registry describing the committed data subsets, so that the script finds and verifies them as it would
the full datasets (what the ``fashion_dir`` fixture does inside the test process)."""

import runpy
import sys

import pytest

from conftest import use_subset_registry

if __name__ == "__main__":
    use_subset_registry(pytest.MonkeyPatch())
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")

"""What differs between operating systems, in one place: cnnlab runs on Linux, macOS and Windows.

Nothing else in the package calls an API that one of them lacks (``fcntl``, ``os.O_DIRECTORY``,
``dir_fd``, ``os.fchmod``, ``os.sysconf``, fork, ``/proc``, ...); ``tests/test_portable.py`` checks
that.  Each primitive here takes the fast or native route where the platform has it and a portable
route beside it, chosen by what the running system offers.
"""

from __future__ import annotations

import platform

SYSTEM = platform.system()
"""``Linux``, ``Darwin`` (macOS) or ``Windows``: the one place cnnlab asks which system it runs on."""
WINDOWS = SYSTEM == "Windows"
MACOS = SYSTEM == "Darwin"
LINUX = SYSTEM == "Linux"

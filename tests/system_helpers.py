"""Running cnnlab's code as if on another operating system, for the tests of what differs between them."""

from __future__ import annotations

import platform

from cnnlab import portable


def as_system(monkeypatch, name: str, machine: str | None = None) -> None:
    """Make :mod:`cnnlab.portable` answer as on ``name`` ("Linux", "Darwin" or "Windows") and, if given,
    ``platform.machine()`` answer ``machine`` ("arm64" on Apple silicon); ``monkeypatch`` undoes it."""
    monkeypatch.setattr(portable, "SYSTEM", name)
    monkeypatch.setattr(portable, "WINDOWS", name == "Windows")
    monkeypatch.setattr(portable, "MACOS", name == "Darwin")
    monkeypatch.setattr(portable, "LINUX", name == "Linux")
    if machine is not None:
        monkeypatch.setattr(platform, "machine", lambda: machine)

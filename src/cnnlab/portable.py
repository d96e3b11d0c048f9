"""What differs between operating systems, in one place: cnnlab runs on Linux, macOS and Windows.

Nothing else in the package calls an API that one of them lacks (``fcntl``, ``os.O_DIRECTORY``,
``dir_fd``, ``os.fchmod``, ``os.sysconf``, fork, ``/proc``, ...); ``tests/test_portable.py`` checks
that.  Each primitive here takes the fast or native route where the platform has it and a portable
route beside it, chosen by what the running system offers.
"""

from __future__ import annotations

import codecs
import errno
import io
import platform
import re
import sys

SYSTEM = platform.system()
"""``Linux``, ``Darwin`` (macOS) or ``Windows``: the one place cnnlab asks which system it runs on."""
WINDOWS = SYSTEM == "Windows"
MACOS = SYSTEM == "Darwin"
LINUX = SYSTEM == "Linux"


# --- Console ---

_NEVER_RAISE = {"replace", "backslashreplace", "xmlcharrefreplace", "namereplace", "ignore"}
"""Error handlers with which writing text never fails (stderr's default is ``backslashreplace``)."""


def make_console_safe() -> None:
    """Let printing any text succeed, whatever the console's or pipe's encoding.

    Redirected to a file or pipe, Python writes in the locale's encoding (cp1252 on an English Windows,
    ascii under ``LANG=C``) and raises ``UnicodeEncodeError`` on the first character it lacks: a Chinese
    class name or folder.  A stream that raises so (``errors="strict"``, or ``"surrogateescape"`` as
    under ``LANG=C``) in an encoding other than UTF is switched to write ``?`` for those characters
    instead; its encoding stays, so a UTF-8 console keeps printing every character and a GBK one its
    Chinese.  A stream that is not a plain text file (a notebook's, pythonw's None, one a caller
    replaced) is left alone.
    """
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper) or stream.errors in _NEVER_RAISE:
            continue
        try:
            if codecs.lookup(stream.encoding).name.startswith("utf"):
                continue
            stream.reconfigure(errors="replace")
        except (LookupError, ValueError):   # an unknown codec name, a closed or detached stream
            continue


def is_closed_pipe(exc: BaseException) -> bool:
    """Whether ``exc`` says the program reading stdout went away (``cnnlab data info | head``).

    On Linux and macOS a write to a closed pipe raises ``BrokenPipeError``; on Windows it raises
    ``OSError`` with errno ``EINVAL``, which also means an invalid argument elsewhere (a file name with
    ``?`` in it), so there it counts only if stdout itself still cannot be written.
    """
    if isinstance(exc, BrokenPipeError):
        return True
    if not (WINDOWS and isinstance(exc, OSError) and exc.errno == errno.EINVAL and exc.filename is None):
        return False
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as again:
        return isinstance(again, BrokenPipeError) or again.errno == errno.EINVAL
    return False


# --- Names ---
# A run folder made on Linux or macOS is copied to a Windows laptop, so every folder cnnlab names follows
# Windows' rules (the strictest) on every system.

_RESERVED = {"CON", "PRN", "AUX", "NUL", *(port + n for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3")}
"""Device names Windows reserves, in any case and with any extension (``con.txt``)."""
_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
"""Characters Windows forbids in a file name: ``<>:"/\\|?*`` and the control characters."""


def _reserved(name: str) -> bool:
    return name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED


def check_portable_name(name: str) -> str | None:
    """What keeps ``name`` from being a folder's name on every system (Windows' rules), or None if nothing."""
    if name in ("", ".", ".."):
        return f"{name!r} names no folder"
    bad = sorted(set(_FORBIDDEN.findall(name)))
    if bad:
        shown = " ".join(repr(c) if c.isprintable() else f"U+{ord(c):04X}" for c in bad)
        return f"Windows forbids {shown} in folder names (any of <>:\"/\\|?* and control characters)"
    if name[-1] in ". ":
        return "Windows drops a trailing dot or space from folder names"
    if _reserved(name):
        return (f"{name.split('.', 1)[0]!r} is a device name Windows reserves (CON, PRN, AUX, NUL, COM0-9, "
                f"LPT0-9, in any case, with or without an extension)")
    return None


def portable_name(name: str) -> str:
    """``name`` made a valid folder name on every system, always the same way: each forbidden character
    becomes ``-``, trailing dots and spaces go, and a reserved device name gains ``_`` (``con.txt`` ->
    ``con_.txt``).  A name that is valid already comes back unchanged."""
    safe = _FORBIDDEN.sub("-", name).rstrip(". ")
    if _reserved(safe):
        stem, dot, rest = safe.partition(".")
        safe = stem.rstrip(" ") + "_" + dot + rest
    return safe or "_"

"""What differs between operating systems, in one place: cnnlab runs on Linux, macOS and Windows.

Nothing else in the package calls an API that one of them lacks (``fcntl``, ``os.O_DIRECTORY``,
``dir_fd``, ``os.fchmod``, ``os.sysconf``, fork, ``/proc``, ...); ``tests/test_portable.py`` checks
that.  Each primitive here takes the fast or native route where the platform has it and a portable
route beside it, chosen by what the running system offers.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import struct
import subprocess
import time

SYSTEM = platform.system()
"""``Linux``, ``Darwin`` (macOS) or ``Windows``: the one place cnnlab asks which system it runs on."""
WINDOWS = SYSTEM == "Windows"
MACOS = SYSTEM == "Darwin"
LINUX = SYSTEM == "Linux"


# --- System facts ---
# What the machine offers, asked of each system its own way: the CPU's instruction sets, free memory,
# this process's age, the shared libraries it has loaded.  Each answer is None where the system does
# not say or the question fails, and callers then take their cautious default.


def _read_text(path: str) -> str | None:
    """A system file's text (``/proc/...``), or None where it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _command_output(*command: str) -> str | None:
    """What ``command`` prints, or None if it cannot run, fails or takes more than two seconds."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def cpu_flags() -> set[str] | None:
    """This CPU's instruction-set extensions, named as Linux names them (x86 ``avx2``, ``avx512_bf16``,
    ``amx_bf16``; Arm ``asimd``, ``bf16``), or None where the system does not say (Windows).

    Linux: the first CPU's ``flags`` (x86) or ``Features`` (Arm) in /proc/cpuinfo.  macOS: ``sysctl``:
    on Apple silicon the ``hw.optional`` entries set to 1 (``hw.optional.arm.FEAT_BF16`` -> ``bf16``,
    which M2 and later have and M1 has not), on an Intel Mac ``machdep.cpu.features`` and
    ``leaf7_features``."""
    if WINDOWS:
        return None
    if MACOS:
        if platform.machine() == "arm64":
            return _apple_silicon_features(_command_output("sysctl", "hw.optional"))
        return _intel_mac_features(_command_output("sysctl", "-n", "machdep.cpu.features",
                                                   "machdep.cpu.leaf7_features"))
    text = _read_text("/proc/cpuinfo")
    if text is None:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _apple_silicon_features(sysctl: str | None) -> set[str] | None:
    """The features ``sysctl hw.optional`` reports present (``hw.optional.arm.FEAT_BF16: 1`` -> ``bf16``)."""
    if sysctl is None:
        return None
    features = set()
    for line in sysctl.splitlines():
        name, _, value = line.partition(":")
        if value.strip() == "1":
            feature = name.strip().rsplit(".", 1)[-1].lower()
            features.add(feature.removeprefix("feat_"))
    return features


_INTEL_MAC_NAMES = {"avx1.0": "avx", "sse4.1": "sse4_1", "sse4.2": "sse4_2",
                    "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512vbmi2": "avx512_vbmi2",
                    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq"}
"""macOS's names for x86 extensions whose Linux names differ by more than their case."""


def _intel_mac_features(sysctl: str | None) -> set[str] | None:
    """The features of ``sysctl -n machdep.cpu.features machdep.cpu.leaf7_features``, in Linux's names."""
    if sysctl is None:
        return None
    return {_INTEL_MAC_NAMES.get(name.lower(), name.lower()) for name in sysctl.split()}


def available_memory() -> int | None:
    """Bytes of memory free for new allocations without swapping, or None where unknown.

    Linux: ``MemAvailable`` in /proc/meminfo (else the free pages, ``os.sysconf``); macOS: the free,
    speculative and inactive pages of ``vm_stat`` (as psutil counts them); Windows: ``ullAvailPhys`` of
    GlobalMemoryStatusEx."""
    if WINDOWS:
        return _windows_available_memory()
    if MACOS:
        return _vm_stat_available(_command_output("vm_stat"))
    for line in (_read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _vm_stat_available(vm_stat: str | None) -> int | None:
    """Free + speculative + inactive pages of ``vm_stat``'s report, in bytes."""
    if vm_stat is None:
        return None
    lines = vm_stat.splitlines()
    page = re.search(r"page size of (\d+) bytes", lines[0]) if lines else None
    pages = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if value.strip().rstrip(".").isdigit():
            pages[name.strip()] = int(value.strip().rstrip("."))
    kinds = ("Pages free", "Pages speculative", "Pages inactive")
    if page is None or any(kind not in pages for kind in kinds):
        return None
    return sum(pages[kind] for kind in kinds) * int(page.group(1))


class _MemoryStatus(ctypes.Structure):
    """MEMORYSTATUSEX, which GlobalMemoryStatusEx fills in (64 bytes)."""

    _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32),
                ("ullTotalPhys", ctypes.c_uint64), ("ullAvailPhys", ctypes.c_uint64),
                ("ullTotalPageFile", ctypes.c_uint64), ("ullAvailPageFile", ctypes.c_uint64),
                ("ullTotalVirtual", ctypes.c_uint64), ("ullAvailVirtual", ctypes.c_uint64),
                ("ullAvailExtendedVirtual", ctypes.c_uint64)]


def _kernel32():
    """Windows' kernel32.dll, an instance of its own (argument types set on it touch no other caller)."""
    return ctypes.WinDLL("kernel32")


def _windows_available_memory() -> int | None:
    status = _MemoryStatus()
    status.dwLength = ctypes.sizeof(_MemoryStatus)
    try:
        if _kernel32().GlobalMemoryStatusEx(ctypes.byref(status)):
            return status.ullAvailPhys
    except (OSError, AttributeError):
        pass
    return None


def process_age() -> float | None:
    """Seconds since this process started, or None where unknown.

    Linux: /proc/self/stat against /proc/uptime (10 ms resolution); macOS: the start time the kernel
    keeps for the process (``sysctl`` kern.proc.pid, 1 us); Windows: its creation time (GetProcessTimes,
    100 ns)."""
    if WINDOWS:
        return _windows_process_age()
    if MACOS:
        return _macos_process_age()
    try:
        # Field 22 is the start time in clock ticks after boot; the command name (field 2) may hold
        # spaces, so count from the closing parenthesis.
        start_ticks = int(_read_text("/proc/self/stat").rsplit(")", 1)[1].split()[19])
        uptime = float(_read_text("/proc/uptime").split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (AttributeError, OSError, ValueError, IndexError):
        return None


def _windows_process_age() -> float | None:
    created, exited, kernel, user, now = (ctypes.c_uint64() for _ in range(5))   # FILETIMEs: 100 ns ticks
    try:
        kernel32 = _kernel32()
        if not kernel32.GetProcessTimes(ctypes.c_void_p(-1), ctypes.byref(created), ctypes.byref(exited),
                                        ctypes.byref(kernel), ctypes.byref(user)):   # -1: this process
            return None
        kernel32.GetSystemTimeAsFileTime(ctypes.byref(now))
    except (OSError, AttributeError):
        return None
    return max(0.0, (now.value - created.value) / 1e7)


def _libc():
    """The C library's functions (on macOS, libSystem's), from the running process."""
    return ctypes.CDLL(None)


def _macos_process_age() -> float | None:
    # sysctl {CTL_KERN, KERN_PROC, KERN_PROC_PID, pid} fills a struct kinfo_proc (648 bytes), which
    # begins with the process's start time, a struct timeval (64-bit seconds, 32-bit microseconds).
    mib = (ctypes.c_int * 4)(1, 14, 1, os.getpid())
    info = ctypes.create_string_buffer(1024)
    size = ctypes.c_size_t(ctypes.sizeof(info))
    try:
        if _libc().sysctl(mib, ctypes.c_uint(4), info, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    if size.value < 16:
        return None
    seconds, microseconds = struct.unpack_from("=qi", info.raw)
    return max(0.0, time.time() - (seconds + microseconds / 1e6))


def loaded_libraries() -> list[str] | None:
    """The files of the shared libraries mapped into this process (Linux: /proc/self/maps), or None
    where the system does not say."""
    if WINDOWS or MACOS:
        return None
    text = _read_text("/proc/self/maps")
    if text is None:
        return None
    paths = {}
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths[fields[5]] = None
    return list(paths)


def shared_library_suffix() -> str:
    """How this system's shared libraries are named: ``.dll`` (Windows), ``.dylib`` (macOS), ``.so``."""
    return ".dll" if WINDOWS else ".dylib" if MACOS else ".so"


def compiler_blocked(compiler: str) -> str | None:
    """Why the C compiler at ``compiler`` must not be run unasked, or None.

    On macOS the compilers in /usr/bin are Apple's stubs: without the command line tools (``xcode-select
    -p`` names no folder), running one opens an installer dialog instead of compiling."""
    if not MACOS or not compiler.startswith("/usr/bin/"):
        return None
    folder = (_command_output("xcode-select", "-p") or "").strip()
    if folder and os.path.isdir(folder):
        return None
    return f"{compiler} needs Apple's command line tools, which are not installed (xcode-select --install)"

"""What cnnlab asks of the machine (CPU instruction sets, free memory, the process's age, loaded libraries),
asked of Linux, macOS and Windows each its own way (cnnlab.portable).

Each system's answer is faked at the point where cnnlab reads it (a /proc file, a command's output, a
Windows or C library call), with samples written out by hand from those systems' documented formats.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import time

import pytest
from system_helpers import as_system

from cnnlab import portable
from cnnlab.device import cpu_has_native_bf16

# `sysctl hw.optional` on an M1 and an M2 MacBook Air (macOS 14), shortened: the M2 adds BF16 and I8MM.
M1_SYSCTL = """\
hw.optional.arm.FEAT_FlagM: 1
hw.optional.arm.FEAT_FHM: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_SHA3: 1
hw.optional.arm.FEAT_RDM: 1
hw.optional.arm.FEAT_LSE: 1
hw.optional.arm.FEAT_FP16: 1
hw.optional.arm.FEAT_SPECRES: 0
hw.optional.arm.FEAT_BF16: 0
hw.optional.arm.FEAT_I8MM: 0
hw.optional.arm.FEAT_BTI: 0
hw.optional.arm.FP_SyncExceptions: 1
hw.optional.floatingpoint: 1
hw.optional.neon: 1
hw.optional.neon_fp16: 1
hw.optional.armv8_crc32: 1
hw.optional.watchpoint: 4
hw.optional.breakpoint: 6
hw.optional.AdvSIMD: 1
hw.optional.arm64: 1
"""
M2_SYSCTL = M1_SYSCTL.replace("FEAT_BF16: 0", "FEAT_BF16: 1").replace("FEAT_I8MM: 0", "FEAT_I8MM: 1") \
    .replace("FEAT_BTI: 0", "FEAT_BTI: 1")
# `sysctl -n machdep.cpu.features machdep.cpu.leaf7_features` on a 2019 MacBook Pro (Core i9, Coffee Lake)
# and a 2019 Mac Pro (Xeon W, Cascade Lake: AVX-512 with VNNI, without BF16).
INTEL_MAC_SYSCTL = """\
FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36 CLFSH DS ACPI MMX FXSR SSE SSE2 SS HTT TM \
PBE SSE3 PCLMULQDQ DTES64 MON DSCPL VMX SMX EST TM2 SSSE3 FMA CX16 TPR PDCM SSE4.1 SSE4.2 x2APIC MOVBE POPCNT AES \
PCID XSAVE OSXSAVE SEGLIM64 TSCTMR AVX1.0 RDRAND F16C
RDWRFSGS TSC_THREAD_OFFSET SGX BMI1 HLE AVX2 SMEP BMI2 ERMS INVPCID RTM FPU_CSDS MPX RDSEED ADX SMAP CLFSOPT IPT \
MDCLEAR TSXFA IBRS STIBP L1DF SSBD
"""
MAC_PRO_SYSCTL = INTEL_MAC_SYSCTL.replace("SSBD", "AVX512F AVX512DQ AVX512CD AVX512BW AVX512VL AVX512VNNI SSBD")
# /proc/meminfo, shortened
MEMINFO = "MemTotal:       32594180 kB\nMemFree:         1022260 kB\nMemAvailable:   20482512 kB\nBuffers: 1 kB\n"
# vm_stat on an M1 (16 KiB pages)
VM_STAT = """\
Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               12345.
Pages active:                            180000.
Pages inactive:                          170000.
Pages speculative:                         5000.
Pages throttled:                              0.
Pages wired down:                         90000.
Pages purgeable:                           3000.
"Translation faults":                 123456789.
Pages copy-on-write:                    1234567.
File-backed pages:                       150000.
Anonymous pages:                         200000.
Pages stored in compressor:              100000.
Pages occupied by compressor:             40000.
Swapins:                                      0.
Swapouts:                                     0.
"""


@pytest.fixture
def reads(monkeypatch):
    """Fake system files: ``reads[path] = text`` (a path not set cannot be read); the paths read are
    recorded in ``reads.asked``."""

    class Files(dict):
        asked: list

    files = Files()
    files.asked = []

    def read(path):
        files.asked.append(path)
        return files.get(path)

    monkeypatch.setattr(portable, "_read_text", read)
    return files


@pytest.fixture
def commands(monkeypatch):
    """Fake commands: ``commands[("sysctl", ...)] = output`` (a command not set fails); the commands run
    are recorded in ``commands.run``."""

    class Commands(dict):
        run: list

    table = Commands()
    table.run = []

    def run(*command):
        table.run.append(command)
        return table.get(command)

    monkeypatch.setattr(portable, "_command_output", run)
    return table


@pytest.fixture
def fresh_bf16_answer():
    """cpu_has_native_bf16 remembers its answer: forget it before and after the test."""
    cpu_has_native_bf16.cache_clear()
    yield cpu_has_native_bf16
    cpu_has_native_bf16.cache_clear()


# ---- CPU instruction sets ------------------------------------------------------------------------

@pytest.mark.parametrize("text, flags, bf16", [
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n", {"fpu", "avx2", "avx512f", "avx512_bf16",
                                                                              "avx512_vnni"}, True),  # Zen 4
    ("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n", {"fpu", "avx2", "amx_bf16", "amx_tile"}, True),
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", {"fpu", "avx2", "avx512f", "avx512_vnni"}, False),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", {"fp", "asimd", "sve", "bf16", "i8mm"}, True),  # Neoverse V1
    ("processor\t: 0\nFeatures\t: fp asimd\nprocessor\t: 1\nFeatures\t: fp asimd bf16\n", {"fp", "asimd"}, False),
    ("processor\t: 0\nmodel name\t: something without flags\n", set(), False),
])
def test_linux_cpu_flags_are_the_first_cpus_in_proc_cpuinfo(monkeypatch, reads, fresh_bf16_answer, text, flags, bf16):
    as_system(monkeypatch, "Linux")
    reads["/proc/cpuinfo"] = text
    assert portable.cpu_flags() == flags
    assert fresh_bf16_answer() is bf16


def test_without_proc_cpuinfo_the_flags_are_unknown_and_bf16_is_not_chosen(monkeypatch, reads, fresh_bf16_answer):
    as_system(monkeypatch, "Linux")
    assert portable.cpu_flags() is None
    assert fresh_bf16_answer() is False


@pytest.mark.parametrize("sysctl, bf16", [(M1_SYSCTL, False), (M2_SYSCTL, True)], ids=["M1", "M2"])
def test_apple_silicon_features_come_from_sysctl(monkeypatch, reads, commands, fresh_bf16_answer, sysctl, bf16):
    """An M1 has no bf16 instructions, an M2 has them: bf16 is chosen on the M2 only."""
    as_system(monkeypatch, "Darwin", machine="arm64")
    commands[("sysctl", "hw.optional")] = sysctl
    flags = portable.cpu_flags()
    assert {"dotprod", "fp16", "neon", "arm64", "advsimd"} <= flags
    assert ("bf16" in flags, "i8mm" in flags) == (bf16, bf16)
    assert not {"specres", "watchpoint", "breakpoint"} & flags     # 0, or counts rather than features
    assert fresh_bf16_answer() is bf16
    assert reads.asked == []      # no /proc on macOS


@pytest.mark.parametrize("sysctl, avx512", [(INTEL_MAC_SYSCTL, False), (MAC_PRO_SYSCTL, True)],
                         ids=["Coffee Lake", "Cascade Lake"])
def test_intel_mac_features_come_from_sysctl_in_linux_names(monkeypatch, commands, fresh_bf16_answer, sysctl, avx512):
    as_system(monkeypatch, "Darwin", machine="x86_64")
    commands[("sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features")] = sysctl
    flags = portable.cpu_flags()
    assert {"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"} <= flags
    assert ({"avx512f", "avx512_vnni"} <= flags) is avx512
    assert fresh_bf16_answer() is False


def test_a_mac_whose_sysctl_fails_has_unknown_flags_and_no_bf16(monkeypatch, commands, fresh_bf16_answer):
    as_system(monkeypatch, "Darwin", machine="arm64")
    assert portable.cpu_flags() is None
    assert commands.run == [("sysctl", "hw.optional")]
    assert fresh_bf16_answer() is False


def test_windows_cpu_flags_are_unknown_without_reading_anything(monkeypatch, reads, commands, fresh_bf16_answer):
    as_system(monkeypatch, "Windows")
    assert portable.cpu_flags() is None
    assert fresh_bf16_answer() is False
    assert reads.asked == [] and commands.run == []


# ---- free memory ---------------------------------------------------------------------------------

def test_linux_available_memory_is_memavailable(monkeypatch, reads):
    as_system(monkeypatch, "Linux")
    reads["/proc/meminfo"] = MEMINFO
    assert portable.available_memory() == 20482512 * 1024


def test_linux_without_memavailable_counts_the_free_pages(monkeypatch, reads):
    as_system(monkeypatch, "Linux")
    reads["/proc/meminfo"] = "MemTotal:       32594180 kB\nMemFree:         1022260 kB\n"   # kernels before 3.14
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name], raising=False)
    assert portable.available_memory() == 1000 * 4096


def test_macos_available_memory_is_free_speculative_and_inactive_pages(monkeypatch, reads, commands):
    as_system(monkeypatch, "Darwin")
    commands[("vm_stat",)] = VM_STAT
    assert portable.available_memory() == (12345 + 5000 + 170000) * 16384
    commands[("vm_stat",)] = VM_STAT.replace("16384", "4096")     # an Intel Mac's pages
    assert portable.available_memory() == (12345 + 5000 + 170000) * 4096
    assert reads.asked == []


@pytest.mark.parametrize("output", [None, "", "Mach Virtual Memory Statistics: (page size of 16384 bytes)\n"])
def test_macos_available_memory_is_unknown_when_vm_stat_says_nothing(monkeypatch, commands, output):
    as_system(monkeypatch, "Darwin")
    commands[("vm_stat",)] = output
    assert portable.available_memory() is None


class FakeKernel32:
    """The kernel32.dll functions cnnlab calls, answering as Windows does through their out-parameters."""

    created, now = 133_500_000_000_000_000, 133_500_000_042_500_000     # FILETIMEs, 4.25 s apart

    def GlobalMemoryStatusEx(self, pointer):
        status = pointer._obj
        assert status.dwLength == ctypes.sizeof(status) == 64      # Windows refuses any other length
        status.ullTotalPhys, status.ullAvailPhys = 16 * 2**30, 6 * 2**30
        return 1

    def GetProcessTimes(self, process, created, exited, kernel, user):
        assert process.value == ctypes.c_void_p(-1).value      # GetCurrentProcess()'s pseudo handle
        created._obj.value = self.created
        return 1

    def GetSystemTimeAsFileTime(self, now):
        now._obj.value = self.now


def test_windows_available_memory_comes_from_globalmemorystatusex(monkeypatch, reads):
    as_system(monkeypatch, "Windows")
    monkeypatch.setattr(portable, "_kernel32", FakeKernel32)
    assert portable.available_memory() == 6 * 2**30
    assert reads.asked == []


def test_windows_available_memory_is_unknown_if_the_call_fails(monkeypatch):
    as_system(monkeypatch, "Windows")
    failing = type("Failing", (), {"GlobalMemoryStatusEx": lambda self, pointer: 0})
    monkeypatch.setattr(portable, "_kernel32", failing)
    assert portable.available_memory() is None


def test_on_this_system_available_memory_is_a_positive_number_or_unknown():
    memory = portable.available_memory()
    assert memory is None or memory > 0


# ---- the process's age ---------------------------------------------------------------------------

def test_linux_process_age_is_uptime_less_the_start_tick(monkeypatch, reads):
    as_system(monkeypatch, "Linux")
    # A command name with spaces and parentheses: fields are counted from the last ")".
    reads["/proc/self/stat"] = ("4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 10 5 0 0 20 0 1 0 "
                                "123456 1000000 200 18446744073709551615\n")
    reads["/proc/uptime"] = "1300.25 5000.00\n"
    monkeypatch.setattr(os, "sysconf", {"SC_CLK_TCK": 100}.__getitem__, raising=False)
    assert portable.process_age() == pytest.approx(1300.25 - 1234.56)


def test_linux_process_age_is_unknown_without_proc(monkeypatch, reads):
    as_system(monkeypatch, "Linux")
    assert portable.process_age() is None


def test_macos_process_age_is_from_the_kernels_start_time(monkeypatch, reads):
    """sysctl {CTL_KERN, KERN_PROC, KERN_PROC_PID, pid} fills a struct kinfo_proc that begins with the start
    time (a struct timeval)."""
    as_system(monkeypatch, "Darwin")
    started = time.time() - 30.25

    class FakeLibc:
        def sysctl(self, mib, length, info, size, new, new_size):
            assert list(mib) == [1, 14, 1, os.getpid()] and length.value == 4 and new is None
            assert size._obj.value == ctypes.sizeof(info) >= 648
            struct.pack_into("=qi", info, 0, int(started), round(started % 1 * 1e6))
            size._obj.value = 648
            return 0

    monkeypatch.setattr(portable, "_libc", FakeLibc)
    assert portable.process_age() == pytest.approx(30.25, abs=0.5)
    assert reads.asked == []


def test_macos_process_age_is_unknown_if_sysctl_fails(monkeypatch):
    as_system(monkeypatch, "Darwin")
    monkeypatch.setattr(portable, "_libc", lambda: type("L", (), {"sysctl": lambda self, *a: -1})())
    assert portable.process_age() is None


def test_windows_process_age_is_from_the_creation_time(monkeypatch, reads):
    as_system(monkeypatch, "Windows")
    monkeypatch.setattr(portable, "_kernel32", FakeKernel32)
    assert portable.process_age() == pytest.approx(4.25)
    assert reads.asked == []


# ---- cores busy elsewhere ------------------------------------------------------------------------

@pytest.fixture
def sample(monkeypatch):
    """A 50 ms sample that takes no time, on a 2-core machine whose own process used ``sample.ours`` of a
    core: os.times() before and after, 0.05 s apart."""

    class Sample:
        ours = 0.0

    state = Sample()
    times = iter([0.0, 0.05])

    def fake_times():
        elapsed = next(times)
        cpu = state.ours * elapsed
        return os.times_result((cpu, 0.0, 0.0, 0.0, elapsed))

    monkeypatch.setattr(os, "times", fake_times)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    return state


def test_linux_busy_cores_are_the_busy_ticks_of_proc_stat_less_this_process(monkeypatch, sample):
    as_system(monkeypatch, "Linux")
    stats = iter(["cpu  100 5 50 1000 10 1 2 3 0 0\ncpu0 50 2 25 500 5 0 1 1 0 0\n",
                  # 10 ticks later (5 on each core): 5 busy (user 3, nice 1, system 1), 5 idle or waiting on a disk
                  "cpu  103 6 51 1004 11 1 2 3 0 0\ncpu0 51 3 25 502 6 0 1 1 0 0\n"])
    monkeypatch.setattr(portable, "_read_text", lambda path: next(stats) if path == "/proc/stat" else None)
    sample.ours = 0.25
    assert portable.busy_cores_elsewhere() == pytest.approx(1.0 - 0.25)


def test_linux_busy_cores_are_unknown_without_proc_stat(monkeypatch, reads, sample):
    as_system(monkeypatch, "Linux")
    assert portable.busy_cores_elsewhere() is None and reads.asked == ["/proc/stat"]


def test_macos_busy_cores_are_from_host_statistics_cpu_load_ticks(monkeypatch, reads, sample):
    as_system(monkeypatch, "Darwin")
    loads = iter([(1000, 500, 9000, 10), (1015, 500, 9005, 10)])   # user, system, idle, nice ticks: 15 of 20 busy

    class FakeLibc:
        def mach_host_self(self):
            return 7

        def host_statistics(self, host, flavor, info, count):
            assert host == 7 and flavor == 3 and count._obj.value == 4 == len(info)   # HOST_CPU_LOAD_INFO
            info[:] = next(loads)
            return 0

    monkeypatch.setattr(portable, "_libc", FakeLibc)
    assert portable.busy_cores_elsewhere() == pytest.approx(1.5)
    assert reads.asked == []


def test_windows_busy_cores_are_from_getsystemtimes(monkeypatch, reads, sample):
    """GetSystemTimes' kernel time includes the idle time."""
    as_system(monkeypatch, "Windows")
    readings = iter([(8_000_000, 10_000_000, 6_000_000), (8_750_000, 10_900_000, 6_100_000)])  # idle, kernel, user

    class Kernel32:
        def GetSystemTimes(self, idle, kernel, user):
            idle._obj.value, kernel._obj.value, user._obj.value = next(readings)
            return 1

    monkeypatch.setattr(portable, "_kernel32", Kernel32)
    # Over the sample: 1,000,000 of CPU time on 2 cores, 750,000 of it idle: a quarter of the time was busy.
    assert portable.busy_cores_elsewhere() == pytest.approx(0.5)
    assert reads.asked == []


def test_on_this_system_a_busy_process_elsewhere_is_seen():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = portable.busy_cores_elsewhere(0.3)
    finally:
        proc.kill()
        proc.wait()
    # The loop has a core or a share of one; whatever else the machine runs only adds to it.
    assert busy is not None and 0.5 <= busy <= os.cpu_count()


# ---- loaded libraries, library names, compilers --------------------------------------------------

MAPS = """\
55d0c0a00000-55d0c0a28000 r--p 00000000 08:01 1234                       /usr/bin/python3.11
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0
7f1c2b000000-7f1c2b040000 r-xp 00000000 08:01 5678                       /venv/lib/torch/lib/libgomp.so.1
7f1c2b040000-7f1c2b041000 r--p 00040000 08:01 5678                       /venv/lib/torch/lib/libgomp.so.1
7f1c2c000000-7f1c2c001000 r--p 00000000 08:01 91011                      /opt/lib with space/libx.so
7ffd1a000000-7ffd1a021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_linux_loaded_libraries_are_the_files_mapped_in_proc_self_maps(monkeypatch, reads):
    as_system(monkeypatch, "Linux")
    reads["/proc/self/maps"] = MAPS
    assert portable.loaded_libraries() == ["/usr/bin/python3.11", "/venv/lib/torch/lib/libgomp.so.1",
                                           "/opt/lib with space/libx.so"]


@pytest.mark.parametrize("system", ["Darwin", "Windows"])
def test_elsewhere_loaded_libraries_are_unknown(monkeypatch, reads, system):
    as_system(monkeypatch, system)
    assert portable.loaded_libraries() is None and reads.asked == []


@pytest.mark.parametrize("system, suffix", [("Linux", ".so"), ("Darwin", ".dylib"), ("Windows", ".dll")])
def test_shared_libraries_are_named_as_each_system_names_them(monkeypatch, system, suffix):
    as_system(monkeypatch, system)
    assert portable.shared_library_suffix() == suffix


def test_apples_compiler_stubs_are_not_run_without_the_command_line_tools(monkeypatch, commands, tmp_path):
    """Without Apple's command line tools, running /usr/bin/cc opens an installer dialog: cnnlab says why
    it has no compiler instead."""
    as_system(monkeypatch, "Darwin")
    assert portable.compiler_blocked("/usr/bin/cc") == ("/usr/bin/cc needs Apple's command line tools, which are "
                                                         "not installed (xcode-select --install)")
    assert commands.run == [("xcode-select", "-p")]
    commands[("xcode-select", "-p")] = f"{tmp_path}\n"       # the tools' folder exists
    assert portable.compiler_blocked("/usr/bin/cc") is None
    commands.run.clear()
    assert portable.compiler_blocked("/opt/homebrew/bin/gcc-14") is None     # not a stub: nothing to ask
    as_system(monkeypatch, "Linux")
    assert portable.compiler_blocked("/usr/bin/cc") is None
    assert commands.run == []

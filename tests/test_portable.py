"""cnnlab.portable, the one module that knows which operating system it runs on, and the rule that no
other module calls an API that Linux, macOS or Windows lacks."""

from __future__ import annotations

import ast
import errno
import os
import stat
from pathlib import Path

import pytest

from cnnlab import portable
from conftest import REPO

PACKAGE = REPO / "src" / "cnnlab"

POSIX_ONLY_MODULES = {"fcntl", "termios", "resource", "pwd", "grp", "posix", "msvcrt", "winreg", "_winapi"}
POSIX_ONLY_OS = {
    "O_DIRECTORY", "O_CLOEXEC", "O_NOFOLLOW", "O_NONBLOCK", "O_PATH", "pwrite", "pread", "fchmod", "fchown",
    "chown", "lchown", "sysconf", "sysconf_names", "confstr", "fork", "forkpty", "register_at_fork", "waitid",
    "wait3", "wait4", "WNOHANG", "sched_getaffinity", "sched_setaffinity", "getuid", "geteuid", "setsid",
    "killpg", "getpgid", "setpgid", "mkfifo", "mknod", "getloadavg", "statvfs", "fstatvfs", "uname", "pipe2",
    "supports_dir_fd", "supports_fd", "name",
}
"""Attributes of ``os`` that Windows (or macOS) lacks, or that ask which system this is."""
POSIX_ONLY_SIGNALS = {"SIGKILL", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM",
                      "SIGPIPE", "SIGQUIT", "SIGTSTP", "setitimer", "alarm", "pause", "pthread_kill", "siginterrupt"}


def platform_calls(path: Path) -> list[str]:
    """Every use in ``path`` of an API one of the three systems lacks, or of a question about which
    system this is, as ``file:line: what``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []

    def report(node, what):
        found.append(f"{path.relative_to(PACKAGE) if path.is_relative_to(PACKAGE) else path.name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] in POSIX_ONLY_MODULES:
                    report(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.partition(".")[0]
            if top in POSIX_ONLY_MODULES:
                report(node, f"from {node.module} import")
            elif top in ("os", "signal", "sys", "platform"):
                names = {a.name for a in node.names}
                bad = names & (POSIX_ONLY_OS if top == "os" else POSIX_ONLY_SIGNALS if top == "signal"
                               else {"platform"} if top == "sys" else {"system", "uname", "mac_ver", "win32_ver"})
                if bad:
                    report(node, f"from {node.module} import {', '.join(sorted(bad))}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, attr = node.value.id, node.attr
            if (owner == "os" and attr in POSIX_ONLY_OS) or (owner == "signal" and attr in POSIX_ONLY_SIGNALS) \
                    or (owner == "sys" and attr == "platform") \
                    or (owner == "platform" and attr in ("system", "uname", "mac_ver", "win32_ver")):
                report(node, f"{owner}.{attr}")
        elif isinstance(node, ast.keyword) and node.arg == "dir_fd":
            report(node, "dir_fd=")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value == "/proc" or node.value.startswith("/proc/"):
                report(node, repr(node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("get_context", "set_start_method") and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value in ("fork", "forkserver"):
            report(node, f"{node.func.attr}({node.args[0].value!r})")
        if isinstance(node, ast.Call) and text_without_encoding(node):
            report(node, "text file without encoding=")
    return found


def text_without_encoding(call: ast.Call) -> bool:
    """``open(path)``, ``path.open("w")``, ``path.read_text()`` or ``path.write_text(s)`` in text mode
    without ``encoding=``: the system's default encoding, cp1252 on an English Windows."""
    if any(k.arg == "encoding" for k in call.keywords):
        return False
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name in ("read_text", "write_text") and isinstance(func, ast.Attribute):
        return not (isinstance(func.value, ast.Name) and func.value.id in ("fileio", "self"))
    if name == "open" and (isinstance(func, ast.Name) or (isinstance(func, ast.Attribute)
                                                          and not isinstance(func.value, ast.Name))):
        position = 1 if isinstance(func, ast.Name) else 0
        mode = call.args[position] if len(call.args) > position else \
            next((k.value for k in call.keywords if k.arg == "mode"), None)
        return mode is None or (isinstance(mode, ast.Constant) and "b" not in str(mode.value))
    return False


def test_no_module_but_portable_calls_an_api_one_system_lacks():
    modules = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "portable.py" or p.parent != PACKAGE)
    assert len(modules) > 50
    found = [use for path in modules for use in platform_calls(path)]
    assert not found, "only cnnlab/portable.py may use these:\n" + "\n".join(found)


def test_the_check_finds_each_kind_of_use(tmp_path):
    """The rule above can fail: each kind of use it looks for, written out, is found."""
    source = tmp_path / "uses.py"
    source.write_text(
        "import fcntl\nimport os, signal, sys, platform\nfrom os import fchmod\n"
        "os.fchmod(3, 0o644)\nos.open('.', os.O_DIRECTORY)\nos.stat('x', dir_fd=3)\nopen('/proc/self/stat')\n"
        "signal.SIGKILL\nsys.platform\nplatform.system()\nimport multiprocessing as mp\nmp.get_context('fork')\n"
        "os.name\nopen('notes.txt')\nPath('a').read_text()\nPath('b').open('w')\n"
        "open('ok', 'rb')\nPath('ok').read_text(encoding='utf-8')\n", encoding="utf-8")
    found = [line.split(": ", 1)[1] for line in platform_calls(source)]
    assert set(found) == {"import fcntl", "from os import fchmod", "os.fchmod", "os.O_DIRECTORY", "dir_fd=",
                          "'/proc/self/stat'", "signal.SIGKILL", "sys.platform", "platform.system",
                          "get_context('fork')", "os.name", "text file without encoding="}
    assert sum(use == "text file without encoding=" for use in found) == 4


# --- Files -------------------------------------------------------------------------------------------

def test_a_new_file_is_an_ordinary_file_of_the_umask(tmp_path):
    mask = os.umask(0o027)
    try:
        fd, path = portable.new_file(tmp_path, ".x.", ".tmp")
    finally:
        os.umask(mask)
    with os.fdopen(fd, "wb") as f:
        f.write(b"a\nb\n")
    assert Path(path).parent == tmp_path and Path(path).name.startswith(".x.") and path.endswith(".tmp")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640   # 0666 less the umask, as open() gives
    assert Path(path).read_bytes() == b"a\nb\n"
    assert portable.new_file(tmp_path, ".x.", ".tmp")[1] != path


def refusing(times: int, code: int | None):
    """An ``os.replace`` refused ``times`` times as Windows refuses it (``winerror`` ``code``), then done."""
    calls = []
    real = os.replace

    def replace(src, dst):
        calls.append(dst)
        if len(calls) <= times:
            exc = PermissionError(errno.EACCES, "Access is denied", str(dst))
            if code is not None:
                exc.winerror = code
            raise exc
        real(src, dst)

    return replace, calls


def test_a_replace_waits_while_another_program_holds_the_file(tmp_path, monkeypatch):
    target, source = tmp_path / "metrics.csv", tmp_path / "new"
    target.write_text("old")
    source.write_text("new")
    replace, calls = refusing(3, code=32)
    monkeypatch.setattr(os, "replace", replace)
    portable.replace(source, target)
    assert target.read_text() == "new" and len(calls) == 4


def test_a_replace_held_too_long_names_the_file(tmp_path, monkeypatch):
    target, source = tmp_path / "curves.png", tmp_path / "new"
    target.write_text("old")
    source.write_text("new")
    monkeypatch.setattr(os, "replace", refusing(10**6, code=5)[0])
    monkeypatch.setattr(portable, "REPLACE_PATIENCE_S", 0.05)
    with pytest.raises(portable.FileInUseError) as info:
        portable.replace(source, target)
    assert str(info.value) == (f"cannot replace {target}: another program has it open; close it there "
                               f"(a spreadsheet, an image viewer, an editor) and run again")
    assert target.read_text() == "old"


def test_a_refusal_that_is_not_a_held_file_is_not_retried(tmp_path, monkeypatch):
    """POSIX's permission denied (no winerror) is a permission problem: raised at once."""
    target, source = tmp_path / "a", tmp_path / "b"
    source.write_text("new")
    replace, calls = refusing(1, code=None)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError):
        portable.replace(source, target)
    assert len(calls) == 1


@pytest.mark.parametrize("fast", [True, False])
def test_a_folder_lists_the_same_by_either_route(tmp_path, monkeypatch, fast):
    """The dir_fd route (Linux, macOS) and the scandir route (Windows) see the same names and stats,
    links followed, a broken link an OSError."""
    (tmp_path / "b.png").write_bytes(b"12345")
    (tmp_path / "类 别").mkdir()
    (tmp_path / "a link.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "missing.png")
    if fast and not portable.Folder.FAST:
        pytest.skip("this system has no dir_fd")
    monkeypatch.setattr(portable.Folder, "FAST", fast)
    with portable.Folder(str(tmp_path)) as folder:
        assert folder.names == ["a link.png", "b.png", "broken.png", "类 别"]
        assert folder.key == (os.stat(tmp_path).st_dev, os.stat(tmp_path).st_ino)
        assert folder.stat("a link.png").st_size == 5 and folder.stat("b.png").st_size == 5
        assert stat.S_ISDIR(folder.stat("类 别").st_mode)
        with pytest.raises(OSError):
            folder.stat("broken.png")


# --- Sockets -----------------------------------------------------------------------------------------

def test_a_claimed_port_is_not_shared():
    """A second ``cnnlab explain`` on the port of a running one is refused in one line."""
    from cnnlab.errors import ConfigError
    from cnnlab.explain.server import ExplainServer, serve

    first = ExplainServer(("127.0.0.1", 0), explained_run=None)
    try:
        port = first.server_address[1]
        with pytest.raises(ConfigError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(Address already in use\)"):
            serve(None, port=port)
    finally:
        first.server_close()


class RecordingSocket:
    def __init__(self):
        self.options = []

    def setsockopt(self, level, option, value):
        self.options.append((level, option, value))


@pytest.mark.parametrize("windows", [False, True])
def test_windows_claims_a_port_exclusively(monkeypatch, windows):
    """Windows' SO_REUSEADDR would let a second server bind the same port: there it is SO_EXCLUSIVEADDRUSE."""
    import socket

    monkeypatch.setattr(portable, "WINDOWS", windows)
    monkeypatch.setattr(socket, "SO_EXCLUSIVEADDRUSE", -5, raising=False)
    sock = RecordingSocket()
    portable.claim_port(sock)
    assert sock.options == [(socket.SOL_SOCKET, -5 if windows else socket.SO_REUSEADDR, 1)]


@pytest.mark.parametrize("system, expected", [
    ("Linux", ".cache/cnnlab"), ("Darwin", "Library/Caches/cnnlab"), ("Windows", "AppData/Local/cnnlab/Cache")])
def test_the_user_cache_is_where_each_system_keeps_caches(monkeypatch, tmp_path, system, expected):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("LOCALAPPDATA", raising=False)
    monkeypatch.setattr(portable, "MACOS", system == "Darwin")
    monkeypatch.setattr(portable, "WINDOWS", system == "Windows")
    assert portable.user_cache_dir() == tmp_path / expected
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "本地"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert portable.user_cache_dir() == tmp_path / "xdg" / "cnnlab"   # set on purpose: honoured everywhere
    monkeypatch.delenv("XDG_CACHE_HOME")
    if system == "Windows":
        assert portable.user_cache_dir() == tmp_path / "本地" / "cnnlab" / "Cache"

"""Does ``constraints.txt`` install cnnlab, with every extra, from wheels on each system and Python cnnlab
supports?  One line per (platform, Python); the exit status is 1 if any fails.

    pip install uv && python tools/check_wheels.py

Each pair is resolved from PyPI by uv (``uv pip compile --python-platform ... --python-version ...
--only-binary :all:``), which reads the wheels' metadata only, never whole wheels.  pip cannot do this
check: with ``--platform`` and ``--python-version`` it still evaluates environment markers
(``python_version < "3.11"``, ``sys_platform == "win32"``) for the machine it runs on, so a
constraints file that pins by Python version would be checked against the wrong lines.

A pair fails when no set of wheels satisfies the constraints (the resolver's reason is printed), or
when the set takes a package that ``constraints.txt`` does not pin (the tested set would then drift
with each release of that package).  The exception: the CUDA runtime that PyPI's Linux build of
torch pulls in (``nvidia-*``, ``cuda-*``, ``triton``), which the project's machines do not install:
they take the CPU build of the pinned torch.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = {
    # name: (uv's --python-platform, environment: uv reads the macOS version from MACOSX_DEPLOYMENT_TARGET)
    "linux x86_64 (manylinux_2_28)": ("x86_64-manylinux_2_28", {}),
    "macOS 14 arm64": ("aarch64-apple-darwin", {"MACOSX_DEPLOYMENT_TARGET": "14.0"}),
    "windows x86-64": ("x86_64-pc-windows-msvc", {}),
}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
TORCH_CUDA_RUNTIME = re.compile(r"(nvidia-.*|cuda-.*|triton)")
"""Packages of PyPI's Linux (CUDA) torch that the CPU build, which the project installs, does not need."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_names(constraints: Path) -> set[str]:
    """The package names ``constraints`` pins (on any line, whatever its marker)."""
    names = set()
    for line in constraints.read_text().splitlines():
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        if requirement:
            names.add(normalise(re.split(r"[=<>!~ \[]", requirement, maxsplit=1)[0]))
    return names


def resolve(uv: str, platform: str, env: dict, python: str, constraints: Path, index: str) -> tuple[dict, str]:
    """({package: version}, "") of the wheels that install cnnlab with every extra, or ({}, why not)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "resolved.txt"
        command = [uv, "pip", "compile", str(REPO / "pyproject.toml"), "--all-extras", "-c", str(constraints),
                   "--python-platform", platform, "--python-version", python, "--only-binary", ":all:",
                   "--index-url", index, "--no-header", "--no-annotate", "--quiet", "-o", str(out)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                                  env={**os.environ, **env})
        except (OSError, subprocess.SubprocessError) as exc:
            return {}, f"{uv} did not run: {exc}"
        if done.returncode != 0:
            lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
            causes = [ln for ln in lines if ln.startswith(("cause:", "╰─▶"))]
            reason = (causes or lines or [f"exit status {done.returncode}"])[0]
            return {}, re.sub(r"^(cause:|╰─▶)\s*", "", reason)
        packages = {}
        for line in out.read_text().splitlines():
            if "==" in line and not line.lstrip().startswith("#"):
                name, version = line.split(";", 1)[0].strip().split("==", 1)
                packages[normalise(name)] = version
        return packages, ""


def find_uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    return find_uv_bin()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--constraints", type=Path, default=REPO / "constraints.txt")
    parser.add_argument("--index-url", default="https://pypi.org/simple")
    args = parser.parse_args(argv)
    uv = find_uv()
    if uv is None:
        print("check_wheels: needs uv (pip install uv)", file=sys.stderr)
        return 2
    pinned, failed = pinned_names(args.constraints), 0
    for name, (platform, env) in PLATFORMS.items():
        for python in PYTHONS:
            packages, why = resolve(uv, platform, env, python, args.constraints, args.index_url)
            unpinned = sorted(p for p in packages if p not in pinned and not TORCH_CUDA_RUNTIME.fullmatch(p))
            if not why and unpinned:
                why = "not pinned in constraints.txt: " + ", ".join(f"{p}=={packages[p]}" for p in unpinned)
            if why:
                failed += 1
                print(f"FAIL {name}, Python {python}: {why}", flush=True)
            else:
                extra = f" (numpy {packages['numpy']}, torch {packages['torch']})"
                print(f"ok   {name}, Python {python}: {len(packages)} wheels{extra}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

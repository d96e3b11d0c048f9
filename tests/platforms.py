"""Running cnnlab as it runs on Windows and macOS: fresh Python processes under the simulation in
tests/simulated_os/ (what cnnlab's code meets there), with a console encoding and output sink chosen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

SIMULATOR = REPO / "tests" / "simulated_os"


def simulated_env(system: str, encoding: str = "utf-8", held: tuple = (), **extra: str) -> dict[str, str]:
    """The environment of a process that meets ``system`` (``windows``, ``macos``; ``""``: Linux as it
    is) with stdout and stderr in ``encoding`` (as a console or a redirect of that system gives them),
    the files ``held`` open by another program, and the variables ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SIMULATOR), str(REPO / "src"), str(REPO / "tests"),
                                         *filter(None, [env.get("PYTHONPATH")])])
    env["CNNLAB_SIMULATE"] = system
    env["CNNLAB_SIMULATE_HELD"] = json.dumps([str(p) for p in held])
    env["PYTHONIOENCODING"] = encoding
    env.pop("PYTHONUTF8", None)
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env


@dataclass
class Finished:
    argv: list[str]
    returncode: int
    out: str
    err: str

    def clean(self) -> str | None:
        """What is wrong with how it ended, or None: exit 0 without a traceback."""
        if self.returncode == 0 and "Traceback" not in self.err:
            return None
        return f"{' '.join(self.argv)}: exit {self.returncode}\n{self.err[-3000:]}"

    def one_line_error(self) -> str | None:
        """The error line of a command that refused in one line (exit 2), else None."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        if self.returncode == 2 and "Traceback" not in self.err and lines and lines[-1].startswith("error: "):
            return lines[-1]
        return None


def run(system: str, argv: list[str], *, cwd: Path, encoding: str = "utf-8", sink: str = "pipe",
        held: tuple = (), timeout: float = 300, python: list[str] | None = None, **extra: str) -> Finished:
    """``python -m cnnlab ARGV`` (or ``python`` with ``python`` as its arguments) under ``system``;
    stdout goes to a pipe or, with ``sink="file"``, to a file, as a redirect would send it."""
    cmd = [sys.executable, *(python if python is not None else ["-m", "cnnlab", *argv])]
    env = simulated_env(system, encoding, held, **extra)
    if sink == "file":
        out_path = cwd / f".stdout-{os.getpid()}.txt"
        with open(out_path, "wb") as out:
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.PIPE, timeout=timeout)
        stdout = out_path.read_bytes()
        out_path.unlink()
    else:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=timeout)
        stdout = proc.stdout
    return Finished([*map(str, cmd[1:])], proc.returncode, stdout.decode(encoding, "replace"),
                    proc.stderr.decode(encoding, "replace"))

"""Every flag README.md and docs/*.md tell a reader to type exists: a flag after ``cnnlab COMMAND`` is that
command's, a flag after ``python benchmarks/X.py`` is that script's, and a flag named on its own (in
prose or a code span such as ```--image-size N```) is some cnnlab command's.  docs/data.md once told
readers that ``--resize N`` forces a side, a flag no command has.

Flags of other programs (``torchrun --standalone``, ``tensorboard --logdir``) are theirs; a flag named on
its own may also be one of those, where the docs show it with its program."""

from __future__ import annotations

import argparse
import re

import pytest

from cnnlab.cli.main import build_parser
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OTHER_PROGRAMS = {"torchrun", "tensorboard", "xcode-select", "pip", "pytest", "git", "nvidia-smi"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
FENCE = re.compile(r"^\s*```")


def command_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every parser of the ``cnnlab`` command by its words: () for ``cnnlab``, ("data", "info"), ..."""
    found = {}

    def walk(parser, words):
        found[words] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*words, name))
    walk(build_parser(), ())
    return found


PARSERS = command_parsers()


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


CNNLAB_FLAGS = set().union(*(flags_of(p) for p in PARSERS.values()))


def segments(text: str) -> tuple[list[str], list[str]]:
    """A Markdown file's commands (code-block lines, continuation lines joined, comments apart; code
    spans) and its prose (the rest)."""
    commands, prose, paragraph, fenced, pending = [], [], [], False, ""
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            pending += line.rstrip("\\").rstrip() + " "
            if not line.rstrip().endswith("\\"):
                code, _, comment = pending.partition(" #")
                commands += [code, comment]
                pending = ""
        else:
            paragraph.append(line)
    body = "\n".join(paragraph)
    commands += re.findall(r"`([^`]+)`", body)
    prose.append(re.sub(r"`[^`]+`", " ", body))
    return commands, prose


def check_command(command: str, other_flags: set[str], problems: list[str], where: str) -> None:
    """Each flag in ``command`` against the program it follows: cnnlab's command, a benchmark script's
    source, or (for another program's) recorded in ``other_flags``; a flag before any program is
    checked as prose."""
    program, words, descending = None, (), False
    tokens = command.split()
    for i, token in enumerate(tokens):
        flag = FLAG.match(token.lstrip("[("))
        if token == "cnnlab":
            program, words, descending = "cnnlab", (), True
        elif token in OTHER_PROGRAMS or (token == "python" and tokens[i + 1:i + 2] != ["-m"]):
            script = tokens[i + 1] if token == "python" and i + 1 < len(tokens) else ""
            program = script if script.endswith(".py") else "other"
        elif flag and program == "cnnlab":
            if flag.group() not in flags_of(PARSERS[words]):
                problems.append(f"{where}: `cnnlab {' '.join(words)}` has no {flag.group()} ({command.strip()})")
        elif flag and program == "other":
            other_flags.add(flag.group())
        elif flag and program is not None:   # a script of the repository
            script = REPO / program
            if not script.is_file() or f'"{flag.group()}"' not in script.read_text(encoding="utf-8"):
                problems.append(f"{where}: {program} has no {flag.group()} ({command.strip()})")
        elif flag:
            problems.append(f"{where}: PROSE {flag.group()}")   # settled once every other flag is known
        elif program == "cnnlab" and descending and (*words, token) in PARSERS:
            words = (*words, token)
        elif not flag:
            descending = False


def test_every_flag_the_docs_name_exists():
    problems: list[str] = []
    other_flags: set[str] = set()
    for doc in DOCS:
        commands, prose = segments(doc.read_text(encoding="utf-8"))
        where = str(doc.relative_to(REPO))
        for command in commands:
            check_command(command, other_flags, problems, where)
        for text in prose:
            problems += [f"{where}: PROSE {flag}" for flag in FLAG.findall(text)]
    unknown = [p for p in problems if " PROSE " not in p or p.split(" PROSE ")[1] not in CNNLAB_FLAGS | other_flags]
    assert not unknown, "\n".join(unknown)


@pytest.mark.parametrize("text, found", [
    ("`--resize N` still forces a side.", "README.md: PROSE --resize"),
    ("```\ncnnlab train --epochs 2 \\\n    --resize 32   # bigger\n```", "`cnnlab train` has no --resize"),
    ("`cnnlab data info --out x`", "`cnnlab data info` has no --out"),
    ("`python benchmarks/speed.py --no-such-flag`", "benchmarks/speed.py has no --no-such-flag"),
])
def test_the_check_finds_a_flag_that_does_not_exist(text, found):
    problems: list[str] = []
    commands, prose = segments(text)
    for command in commands:
        check_command(command, set(), problems, "README.md")
    problems += [f"README.md: PROSE {flag}" for text in prose for flag in FLAG.findall(text)]
    assert any(found in p for p in problems), problems
    assert not [p for p in problems if "no --epochs" in p or p.endswith("PROSE --epochs")]

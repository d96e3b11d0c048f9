"""Text as a terminal shows it: Chinese, Japanese and Korean characters take two columns, so tables that
name classes or layers in them pad by columns on screen, not by characters."""

from __future__ import annotations

import unicodedata


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: 2 for each wide or full-width character (CJK, full-width
    forms), 0 for combining marks and invisible format characters, 1 for the rest."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def pad(text: str, width: int, align: str = "<") -> str:
    """``text`` padded with spaces to ``width`` columns: on the right (``align="<"``) or the left (``">"``);
    text as wide or wider comes back as it is."""
    if align not in ("<", ">"):
        raise ValueError(f"align must be '<' or '>', not {align!r}")
    fill = " " * max(width - display_width(text), 0)
    return text + fill if align == "<" else fill + text

"""Where a label goes on the leaderboard's scatter: text widths without font metrics, and a free box
beside a point that overlaps no other point, error bar or label (pure geometry; `kdbench.leaderboard.svg`
draws)."""

from __future__ import annotations

import math

__all__ = ["Box", "inside", "overlaps", "place_label", "text_width"]

#: An axis-aligned box: x, y, width, height (SVG user units = CSS px).
Box = tuple[float, float, float, float]

#: Advance widths in em of DejaVu Sans, the widest of the usual sans-serif fonts (a browser that picks
#: a narrower font only leaves more room). Characters not listed count as the widest letter.
_NARROW, _MEDIUM = set("iljI.,:;'!|` "), set('frt()[]{}-/\\"*')
_WIDE = set("mwMW@%…⚑—")


def text_width(text: str, size: float) -> float:
    """An upper bound of the rendered width of ``text`` at ``size`` px (the page has no font metrics)."""
    em = 0.0
    for ch in text:
        if ch in _NARROW:
            em += 0.34
        elif ch in _MEDIUM:
            em += 0.48
        elif ch in _WIDE:
            em += 1.0
        elif ch.isupper():
            em += 0.78
        elif ch.isascii():
            em += 0.66
        else:
            em += 1.0
    return em * size * 1.06 + 2


def overlaps(a: Box, b: Box) -> bool:
    """Whether boxes ``a`` and ``b`` share interior points."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def inside(box: Box, area: Box) -> bool:
    """Whether ``box`` lies wholly within ``area``."""
    return (
        area[0] <= box[0]
        and box[0] + box[2] <= area[0] + area[2]
        and area[1] <= box[1]
        and box[1] + box[3] <= area[1] + area[3]
    )


def place_label(
    text: str, size: float, cx: float, cy: float, r: float, area: Box, taken: list[Box], *, far: bool = False
) -> Box | None:
    """A box for ``text`` next to the point (cx, cy) of radius r, inside ``area``, overlapping nothing in
    ``taken`` (labels placed so far and every point); None when no candidate is free. Candidates: right,
    left, above, below, the four diagonals, right and left moved up and down by a line at a time, and
    with ``far`` (for short texts: a name that far from its point would read as another's) rings
    farther out."""
    w, h = text_width(text, size), 1.3 * size
    gap = r + 3
    right, left, middle = cx + gap, cx - gap - w, cx - w / 2
    candidates = [
        (right, cy - h / 2),
        (left, cy - h / 2),
        (middle, cy - gap - h),
        (middle, cy + gap),
        (right, cy - gap - h + 4),
        (right, cy + gap - 4),
        (left, cy - gap - h + 4),
        (left, cy + gap - 4),
    ]
    for step in (1, 2, 3, 4):
        for sign in (-1, 1):
            dy = sign * step * h
            candidates += [(right, cy - h / 2 + dy), (left, cy - h / 2 + dy)]
    for distance in range(30, 130, 12) if far else ():  # farther out, all around (a leader line joins them)
        for k in range(16):
            angle = 2 * math.pi * k / 16
            bx, by = cx + distance * math.cos(angle), cy - distance * math.sin(angle)
            candidates.append((bx if math.cos(angle) >= 0 else bx - w, by - h / 2))
    for x0, y0 in candidates:
        box = (x0, y0, w, h)
        if inside(box, area) and not any(overlaps(box, other) for other in taken):
            taken.append(box)
            return box
    return None

"""The leaderboard page's plots as inline SVG (no plotting library, no fonts or scripts fetched): the
clean-vs-robust scatter, with labels placed off every point, error bar and other label (a leader line
when moved, a numbered key when no room is left), and the per-attack bar chart."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape

from kdbench.leaderboard.group import Board
from kdbench.leaderboard.label_layout import Box, place_label, text_width
from kdbench.leaderboard.readings import METRIC_LABELS, METRICS
from kdbench.leaderboard.variant import Stat, Variant

__all__ = ["FLAG_COLOR", "METRIC_COLORS", "PALETTE", "bars_svg", "scatter_svg"]

#: Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
METRIC_COLORS = {
    "clean": "#56B4E9",
    "fgsm": "#E69F00",
    "pgd20": "#D55E00",
    "cw": "#CC79A7",
    "autoattack": "#0072B2",
    "worst": "#444444",
}
FLAG_COLOR = "#C0161B"


# ------------------------------------------------------------------------------------ SVG helpers


def _f(x: float) -> str:
    return f"{x:.1f}"


def _nice_range(values: Sequence[float], pad: float = 2.0, minimum_span: float = 10.0) -> tuple[float, float]:
    """A [lo, hi] within [0, 100] covering ``values`` (percent), on multiples of 5."""
    lo = max(0.0, math.floor((min(values) - pad) / 5) * 5)
    hi = min(100.0, math.ceil((max(values) + pad) / 5) * 5)
    while hi - lo < minimum_span:
        lo, hi = max(0.0, lo - 5), min(100.0, hi + 5)
        if lo == 0.0 and hi == 100.0:
            break
    return lo, hi


def _ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50) if (hi - lo) / s <= most)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) // step) + 1)]


def _pct(stat: Stat) -> tuple[float | None, float]:
    return (None, 0.0) if stat.mean is None else (100 * stat.mean, 100 * (stat.std or 0.0))


def _short(text: str, n: int = 22) -> str:
    """At most ``n`` characters; a longer name keeps its end (``…sweep_rslad_T4``): the variants of a
    sweep share their start and differ at the end."""
    return text if len(text) <= n else "…" + text[len(text) - n + 1 :]


def _plot_name(v: Variant, shared: str, n: int) -> str:
    """A variant's name in a plot: flagged mark, without the board's common start, shortened."""
    rest = v.label.removeprefix(shared)
    short = _short(rest, n)
    return ("⚑ " if v.flags else "") + ("…" if shared and not short.startswith("…") else "") + short


def _common_prefix(labels: Sequence[str]) -> str:
    """The start all ``labels`` share, cut after a separator (``sweep_`` of ``sweep_rslad``, ``sweep_ard``);
    "" for fewer than two labels or a prefix under 6 characters. A plot names points by what differs."""
    if len(labels) < 2:
        return ""
    first, last = min(labels), max(labels)  # the common start of all is that of these two
    n = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last)))
    prefix = first[:n]
    cut = max(prefix.rfind(c) for c in "_-./") + 1
    return prefix[:cut] if cut >= 6 and all(len(label) > cut for label in labels) else ""


def _breakable(text: str) -> str:
    """Escaped ``text`` with break opportunities after ``_ - . /``, so a long recipe name wraps at its
    separators instead of pushing the table past its card."""
    return re.sub(r"([_\-./])", r"\1<wbr>", escape(text))


def _leader(cx: float, cy: float, r: float, box: Box) -> str:
    """A thin line from a point to its label when the label had to move away from it ("" when adjacent)."""
    nx, ny = min(max(cx, box[0]), box[0] + box[2]), min(max(cy, box[1]), box[1] + box[3])
    d = math.hypot(nx - cx, ny - cy)
    if d <= r + 6:
        return ""
    sx, sy = cx + (nx - cx) * (r + 1) / d, cy + (ny - cy) * (r + 1) / d
    return (
        f'<line class="leader" x1="{_f(sx)}" y1="{_f(sy)}" x2="{_f(nx)}" y2="{_f(ny)}" '
        'stroke="#9aa3b2" stroke-width="0.8"/>'
    )


def _scatter(board: Board) -> tuple[str, list[tuple[int, Variant]]]:
    """The scatter's SVG and its key: the (number, variant) of every point whose name did not fit
    beside it without overlapping another label or point, drawn as that number instead."""
    metric = board.ranked_by
    points = []
    for i, v in enumerate(board.variants):
        (x, sx), (y, sy) = _pct(v.metrics["clean"]), _pct(v.metrics[metric])
        if x is not None and y is not None:
            points.append((v, i, x, sx, y, sy))
    # A crowd gets a larger canvas (it has a row of its own: the bars beside it are as crowded).
    W, H, L, R, T, B = (500, 360, 56, 18, 16, 48) if len(points) <= 8 else (720, 440, 56, 18, 16, 48)
    pw, ph = W - L - R, H - T - B
    label_y = f"{METRIC_LABELS[metric]} accuracy (%)"
    out = [
        f'<svg class="plot scatter" role="img" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        f'aria-label="{escape(label_y)} against clean accuracy">'
    ]
    if not points:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#5b6475">no data</text></svg>')
        return "".join(out), []
    x0, x1 = _nice_range([p[2] - p[3] for p in points] + [p[2] + p[3] for p in points])
    y0, y1 = _nice_range([p[4] - p[5] for p in points] + [p[4] + p[5] for p in points])

    def sx_(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * pw

    def sy_(y: float) -> float:
        return T + (1 - (y - y0) / (y1 - y0)) * ph

    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="#fbfcfd" stroke="#c9ced8"/>')
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{_f(sx_(t))}" y1="{T}" x2="{_f(sx_(t))}" y2="{T + ph}" stroke="#e6e9ef"/>')
        out.append(
            f'<text x="{_f(sx_(t))}" y="{T + ph + 16}" text-anchor="middle" font-size="11" fill="#5b6475">{t:g}</text>'
        )
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{L}" y1="{_f(sy_(t))}" x2="{L + pw}" y2="{_f(sy_(t))}" stroke="#e6e9ef"/>')
        out.append(
            f'<text x="{L - 6}" y="{_f(sy_(t) + 4)}" text-anchor="end" font-size="11" fill="#5b6475">{t:g}</text>'
        )
    out.append(
        f'<text x="{L + pw / 2}" y="{H - 10}" text-anchor="middle" font-size="12" fill="#1d2330">'
        "clean accuracy (%)</text>"
    )
    out.append(
        f'<text transform="translate(14 {T + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12" '
        f'fill="#1d2330">{escape(label_y)}</text>'
    )
    # Every point (and error bar) is an obstacle for every label; labels are placed in rank order, best first.
    radius = {i: 10.0 if v.flags else 6.0 for v, i, *_ in points}
    taken: list[Box] = [
        (sx_(p[2]) - radius[p[1]] - 1, sy_(p[4]) - radius[p[1]] - 1, 2 * radius[p[1]] + 2, 2 * radius[p[1]] + 2)
        for p in points
    ]
    for _, _, x, ex, y, ey in points:  # error bars are obstacles too
        if ex:
            taken.append((sx_(x - ex), sy_(y) - 1, sx_(x + ex) - sx_(x - ex), 2))
        if ey:
            taken.append((sx_(x) - 1, sy_(y + ey), 2, sy_(y - ey) - sy_(y + ey)))
    area: Box = (L + 2, T + 2, pw - 4, ph - 4)
    shared = _common_prefix([p[0].label for p in points])  # named in the caption; labels show the rest
    size = 11.5
    key: list[tuple[int, Variant]] = []
    for v, i, x, ex, y, ey in points:
        color = PALETTE[i % len(PALETTE)]
        cx, cy = sx_(x), sy_(y)
        out.append(f'<g class="point{" flagged" if v.flags else ""}" data-variant="{escape(v.label)}">')
        tip = f"{v.label}: clean {x:.2f}%, {METRIC_LABELS[metric]} {y:.2f}% ({len(v.runs)} seeds)"
        if v.flags:
            tip += f"; {len(v.flag_texts)} flag(s): " + "; ".join(v.flag_texts)
        out.append(f"<title>{escape(tip)}</title>")
        if ex:
            out.append(
                f'<line x1="{_f(sx_(x - ex))}" y1="{_f(cy)}" x2="{_f(sx_(x + ex))}" y2="{_f(cy)}" '
                f'stroke="{color}" stroke-width="1.5"/>'
            )
        if ey:
            out.append(
                f'<line x1="{_f(cx)}" y1="{_f(sy_(y - ey))}" x2="{_f(cx)}" y2="{_f(sy_(y + ey))}" '
                f'stroke="{color}" stroke-width="1.5"/>'
            )
        if v.flags:
            out.append(
                f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="10" fill="none" stroke="{FLAG_COLOR}" stroke-width="2"/>'
            )
        out.append(f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="6" fill="{color}" stroke="#fff" stroke-width="1.5"/>')
        name = _plot_name(v, shared, 22)
        box = place_label(name, size, cx, cy, radius[i], area, taken)
        if box is None:  # no room beside the point: a number, named in the key under the plot
            key.append((i + 1, v))
            name = str(i + 1)
            box = place_label(name, size, cx, cy, radius[i], area, taken, far=True)
        if box is not None:  # (a number with no free spot at all is left out; the key and tooltip name it)
            out.append(_leader(cx, cy, radius[i], box))
            fill = FLAG_COLOR if v.flags else "#1d2330"
            out.append(
                f'<text class="label" x="{_f(box[0] + 1)}" y="{_f(box[1] + size)}" font-size="{size}" '
                f'fill="{fill}">{escape(name)}</text>'
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out), key


def scatter_svg(board: Board) -> str:
    """Robust accuracy (the ranked metric) against clean accuracy, one point per variant, as inline SVG.

    Each point is named beside it where the name fits without overlapping another name or point
    (`place_label`); otherwise it carries its rank-order number, which the key under the plot names."""
    return _scatter(board)[0]


def _scatter_key(key: Sequence[tuple[int, Variant]]) -> str:
    if not key:
        return ""
    items = "".join(
        f'<li data-variant="{escape(v.label)}"><b>{n}</b><i style="background:{PALETTE[(n - 1) % len(PALETTE)]}">'
        f"</i>{'⚑ ' if v.flags else ''}{_breakable(v.label)}</li>"
        for n, v in key
    )
    return f'<ol class="key">{items}</ol>'


def bars_svg(board: Board) -> str:
    """Accuracy under each attack evaluated, grouped per variant (rank order), with std whiskers."""
    metrics = [m for m in METRICS if any(v.metrics[m].mean is not None for v in board.variants)]
    n = max(len(metrics), 1)
    bar, gap = 11, 18
    group = n * bar + gap
    shared = _common_prefix([v.label for v in board.variants])
    names = [_plot_name(v, shared, 18) for v in board.variants]
    # the first name, rotated 28 degrees, ends under the middle of its group: room for it on the left
    first = text_width(names[0], 11) * math.cos(math.radians(28)) if names else 0.0
    L, R, T, B = max(48, math.ceil(first - gap / 2 - n * bar / 2) + 4), 16, 40, 78
    W = max(500, L + R + group * len(board.variants))
    H = 360
    ph = H - T - B
    out = [
        f'<svg class="plot bars" role="img" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'aria-label="accuracy under each attack per variant">'
    ]

    def sy(pct: float) -> float:
        return T + (1 - pct / 100) * ph

    for t in range(0, 101, 20):
        out.append(f'<line x1="{L}" y1="{_f(sy(t))}" x2="{W - R}" y2="{_f(sy(t))}" stroke="#e6e9ef"/>')
        out.append(f'<text x="{L - 6}" y="{_f(sy(t) + 4)}" text-anchor="end" font-size="11" fill="#5b6475">{t}</text>')
    out.append(
        f'<text transform="translate(13 {T + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12" '
        'fill="#1d2330">accuracy (%)</text>'
    )
    lx = float(L)
    for m in metrics:  # legend
        out.append(f'<rect x="{_f(lx)}" y="10" width="11" height="11" fill="{METRIC_COLORS[m]}"/>')
        out.append(f'<text x="{_f(lx + 15)}" y="20" font-size="11.5" fill="#1d2330">{escape(METRIC_LABELS[m])}</text>')
        lx += 28 + 7.5 * len(METRIC_LABELS[m])
    for gi, v in enumerate(board.variants):
        gx = L + gi * group + gap / 2
        out.append(f'<g class="group{" flagged" if v.flags else ""}" data-variant="{escape(v.label)}">')
        for bi, m in enumerate(metrics):
            mean, std = _pct(v.metrics[m])
            if mean is None:
                continue
            x = gx + bi * bar
            tip = escape(f"{v.label}: {METRIC_LABELS[m]} {mean:.2f}%")
            out.append(
                f'<rect class="bar" x="{_f(x)}" y="{_f(sy(mean))}" width="{bar - 2}" height="{_f(sy(0) - sy(mean))}" '
                f'fill="{METRIC_COLORS[m]}"><title>{tip}</title></rect>'
            )
            if std:
                cx = x + (bar - 2) / 2
                out.append(
                    f'<line x1="{_f(cx)}" y1="{_f(sy(min(100, mean + std)))}" x2="{_f(cx)}" '
                    f'y2="{_f(sy(max(0, mean - std)))}" stroke="#1d2330" stroke-width="1"/>'
                )
        name = names[gi]
        tx, ty = gx + n * bar / 2, sy(0) + 14
        fill = FLAG_COLOR if v.flags else "#1d2330"
        out.append(
            f'<text transform="translate({_f(tx)} {_f(ty)}) rotate(-28)" text-anchor="end" font-size="11" '
            f'fill="{fill}">{escape(name)}</text>'
        )
        out.append("</g>")
    out.append(f'<line x1="{L}" y1="{_f(sy(0))}" x2="{W - R}" y2="{_f(sy(0))}" stroke="#9aa3b2"/>')
    out.append("</svg>")
    return "".join(out)

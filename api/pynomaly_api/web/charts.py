"""Charts drawn on the server as SVG from a few numbers: a score histogram from binned counts
(never one mark per row, so a 100k-row result is as light as a 100-row one) and a line chart.

Both return markup for the page's template (already escaped where text goes in) and keep
what the page's script needs in ``data-`` attributes: the histogram's scale, so the
threshold line can move without asking the server.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

import numpy as np

W, H = 640, 240  # the viewBox; the SVG scales to the page's width
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 12, 34


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def score_range(scores: np.ndarray, threshold: float) -> tuple:
    """``(lo, hi)`` covering every score and the threshold (a span of at least 1e-12)."""
    lo, hi = float(scores.min()), float(scores.max())
    if math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def histogram(scores: np.ndarray, threshold: float, bins: int = 60) -> str:
    """The SVG of the scores' histogram (count on a log scale, so the few anomalous rows in the
    tail stay visible next to the bulk) with a vertical line at ``threshold``; bins right of
    the threshold are drawn as flagged."""
    lo, hi = score_range(scores, threshold)
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
    top = max(1.0, math.log10(1 + float(counts.max())))
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(v: float) -> float:
        return PAD_L + pw * (v - lo) / (hi - lo)

    def y(c: float) -> float:
        return PAD_T + ph * (1 - math.log10(1 + c) / top)

    out = [f'<svg class="chart" id="histogram" viewBox="0 0 {W} {H}" role="img" '
           f'aria-labelledby="histogram-title" data-lo="{lo!r}" data-hi="{hi!r}" data-x0="{PAD_L}" data-w="{pw}">',
           f'<title id="histogram-title">Histogram of {scores.size} scores in {bins} bins, from {_fmt(lo)} to '
           f'{_fmt(hi)}, threshold {_fmt(threshold)}</title>']
    # y axis: powers of ten
    k = 0
    while 10 ** k <= counts.max():
        yy = y(10 ** k)
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                   f'<text class="tick" x="{PAD_L - 4}" y="{yy + 4:.1f}" text-anchor="end">{10 ** k:,}</text>')
        k += 1
    bw = pw / bins
    for i, c in enumerate(counts):
        if c == 0:
            continue
        left = float(edges[i])
        cls = "bar flagged" if left >= threshold else "bar"
        yy = y(float(c))
        out.append(f'<rect class="{cls}" data-left="{left!r}" x="{x(left):.2f}" y="{yy:.2f}" '
                   f'width="{max(bw - 1, 0.5):.2f}" height="{PAD_T + ph - yy:.2f}">'
                   f'<title>{c:,} rows scoring {_fmt(left)} to {_fmt(float(edges[i + 1]))}</title></rect>')
    base = PAD_T + ph
    out.append(f'<line class="axis" x1="{PAD_L}" x2="{W - PAD_R}" y1="{base}" y2="{base}"/>')
    for v in np.linspace(lo, hi, 5):
        out.append(f'<text class="tick" x="{x(float(v)):.1f}" y="{base + 16}" text-anchor="middle">{_fmt(float(v))}</text>')
    out.append(f'<text class="label" x="{PAD_L + pw / 2:.0f}" y="{H - 2}" text-anchor="middle">score</text>')
    if math.isfinite(threshold):
        tx = x(threshold)
        out.append(f'<line id="threshold-line" class="threshold" x1="{tx:.2f}" x2="{tx:.2f}" y1="{PAD_T}" '
                   f'y2="{base}"/>')
    out.append("</svg>")
    return "".join(out)


def threshold_stops(scores: np.ndarray, threshold: float, steps: int = 400) -> tuple:
    """``(stops, flagged)``: thresholds the page's slider can take (an even grid over the
    scores' range, with the result's own threshold among them) and the exact number of rows
    scoring above each, counted here once so the page needs no scores."""
    lo, hi = score_range(scores, threshold)
    stops = np.linspace(lo, hi, steps + 1)
    if math.isfinite(threshold):
        stops = np.unique(np.append(stops, threshold))
    ordered = np.sort(scores)
    flagged = ordered.size - np.searchsorted(ordered, stops, side="right")
    return stops, flagged


def line_chart(times: Sequence[str], values: Sequence[float], *, label: str = "anomaly rate") -> str:
    """An SVG line chart of ``values`` (fractions, drawn as percentages) in the order given,
    one point per value, labelled with ``times`` (ISO strings)."""
    n = len(values)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    vmax = max(max(values, default=0.0), 1e-9) * 1.1

    def x(i: int) -> float:
        return PAD_L + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return PAD_T + ph * (1 - v / vmax)

    out = [f'<svg class="chart" id="history-chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="history-title">',
           f'<title id="history-title">{escape(label)} of {n} detections, oldest to newest</title>']
    for v in np.linspace(0, vmax, 5):
        yy = y(float(v))
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                   f'<text class="tick" x="{PAD_L - 4}" y="{yy + 4:.1f}" text-anchor="end">{100 * v:.3g}%</text>')
    base = PAD_T + ph
    out.append(f'<line class="axis" x1="{PAD_L}" x2="{W - PAD_R}" y1="{base}" y2="{base}"/>')
    if n:
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        out.append(f'<polyline class="line" points="{pts}"/>')
        for i, (t, v) in enumerate(zip(times, values)):
            out.append(f'<circle class="point" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5">'
                       f'<title>{escape(t[:19].replace("T", " "))}: {100 * v:.3g}%</title></circle>')
        for i in sorted({0, n - 1}):
            anchor = "start" if i == 0 and n > 1 else ("end" if n > 1 else "middle")
            out.append(f'<text class="tick" x="{x(i):.1f}" y="{base + 16}" text-anchor="{anchor}">'
                       f'{escape(times[i][:16].replace("T", " "))}</text>')
    out.append("</svg>")
    return "".join(out)

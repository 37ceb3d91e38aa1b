"""Charts drawn on the server as SVG from a few numbers: a score histogram from binned counts
(never one mark per row, so a 100k-row result is as light as a 100-row one), score
distributions overlaid (versions compared) and detections placed by time (history).

Both return markup for the page's template (already escaped where text goes in) and keep
what the page's script needs in ``data-`` attributes: the histogram's scale, so the
threshold line can move without asking the server.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from html import escape
from typing import Sequence

import numpy as np

W, H = 640, 240  # the viewBox; the SVG scales to the page's width
# Room for tick labels at the size a phone shows them (style.css enlarges them there: at a
# phone's width the viewBox is drawn at about half size).
PAD_L, PAD_R, PAD_T, PAD_B = 72, 16, 12, 42


def _steps(x, y, edges, heights, base: float) -> str:
    """The points of a step line over ``edges`` (one height per bin), from the axis and back."""
    pts = [f"{x(float(edges[0])):.1f},{base:.1f}"]
    for i, v in enumerate(heights):
        yy = y(float(v))
        pts.append(f"{x(float(edges[i])):.1f},{yy:.1f} {x(float(edges[i + 1])):.1f},{yy:.1f}")
    pts.append(f"{x(float(edges[-1])):.1f},{base:.1f}")
    return " ".join(pts)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _count(n: float) -> str:
    """A count as a short axis label: 1, 10, 100, 1k, 10k, 1M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _x_ticks(x, lo: float, hi: float, base: float, n: int = 5) -> list:
    """Tick labels under an axis from ``lo`` to ``hi``; the first and last are anchored at
    their outer ends, so neither is cut at the chart's edge."""
    out = []
    for i, v in enumerate(np.linspace(lo, hi, n)):
        anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
        out.append(f'<text class="tick" x="{x(float(v)):.1f}" y="{base + 18}" text-anchor="{anchor}">'
                   f'{_fmt(float(v))}</text>')
    return out


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
                   f'<text class="tick" x="{PAD_L - 6}" y="{yy + 4:.1f}" text-anchor="end">{_count(10 ** k)}</text>')
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
    out.extend(_x_ticks(x, lo, hi, base))
    out.append(f'<text class="label" x="{PAD_L + pw / 2:.0f}" y="{H - 3}" text-anchor="middle">score</text>')
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


def overlaid(series: Sequence[tuple], bins: int = 50) -> str:
    """The SVG of several score distributions on one axis: ``series`` is ``(label, scores,
    threshold)`` per version. Each is drawn as the outline of its histogram in shares of its
    own rows (versions trained on different numbers of rows compare), with its threshold as a
    dashed line of its colour; a legend names them."""
    drawn = [(label, np.asarray(s, dtype=np.float64), t) for label, s, t in series if s is not None and len(s)]
    if not drawn:
        return ""
    lo = min(float(s.min()) for _, s, _ in drawn)
    hi = max(float(s.max()) for _, s, _ in drawn)
    for _, _, t in drawn:
        if t is not None and math.isfinite(t):
            lo, hi = min(lo, t), max(hi, t)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    shares = [np.histogram(s, bins=bins, range=(lo, hi))[0] / s.size for _, s, _ in drawn]
    top = max(float(max(sh.max() for sh in shares)) * 1.1, 1e-9)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    base = PAD_T + ph

    def x(v: float) -> float:
        return PAD_L + pw * (v - lo) / (hi - lo)

    def y(v: float) -> float:
        return PAD_T + ph * (1 - v / top)

    names = ", ".join(label for label, _, _ in drawn)
    out = [f'<svg class="chart" id="compare-chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="compare-title">',
           f'<title id="compare-title">Training score distributions of {escape(names)}, from {_fmt(lo)} to '
           f'{_fmt(hi)}</title>']
    for v in np.linspace(0, top, 4)[1:]:
        yy = y(float(v))
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                   f'<text class="tick" x="{PAD_L - 6}" y="{yy + 4:.1f}" text-anchor="end">{100 * v:.2g}%</text>')
    out.append(f'<line class="axis" x1="{PAD_L}" x2="{W - PAD_R}" y1="{base}" y2="{base}"/>')
    edges = np.linspace(lo, hi, bins + 1)
    for k, ((label, s, t), sh) in enumerate(zip(drawn, shares)):
        out.append(f'<polyline class="dist series-{k % 4}" data-label="{escape(label)}" '
                   f'points="{_steps(x, y, edges, sh, base)}">'
                   f'<title>{escape(label)}: {s.size:,} training scores</title></polyline>')
        if t is not None and math.isfinite(t):
            tx = x(t)
            out.append(f'<line class="threshold series-{k % 4}" x1="{tx:.2f}" x2="{tx:.2f}" y1="{PAD_T}" y2="{base}">'
                       f'<title>{escape(label)} threshold {_fmt(t)}</title></line>')
        ly = PAD_T + 16 + 26 * k
        out.append(f'<rect class="key series-{k % 4}" x="{W - PAD_R - 110}" y="{ly - 12}" width="14" height="12"/>'
                   f'<text class="tick" x="{W - PAD_R - 90}" y="{ly}">{escape(label[:12])}</text>')
    out.extend(_x_ticks(x, lo, hi, base))
    out.append(f'<text class="label" x="{PAD_L + pw / 2:.0f}" y="{H - 3}" text-anchor="middle">training score</text>')
    out.append("</svg>")
    return "".join(out)


def _time_label(t: float, span: float) -> str:
    d = datetime.fromtimestamp(t, timezone.utc)
    return d.strftime("%H:%M:%S" if span < 600 else "%m-%d %H:%M" if span < 3 * 86400 else "%Y-%m-%d")


def time_scatter(times: Sequence[float], rates: Sequence[float], rows: Sequence[int], *,
                 label: str = "anomaly rate") -> str:
    """An SVG of detections placed by time (``times``: Unix seconds) at their anomaly rate
    (fractions, drawn as percentages), each a point whose area follows its number of rows:
    a one-row check and a 100k-row batch are told apart, and no line joins them as if they
    were one series of like measurements."""
    n = len(rates)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    base = PAD_T + ph
    vmax = max(max(rates, default=0.0), 1e-9) * 1.1
    t0, t1 = (min(times), max(times)) if n else (0.0, 1.0)
    span = t1 - t0
    pad_t = span * 0.03 if span > 0 else 60.0  # a point at either end is drawn whole
    lo_t, hi_t = t0 - pad_t, t1 + pad_t
    biggest = max(max(rows, default=1), 1)

    def x(t: float) -> float:
        return PAD_L + pw * (t - lo_t) / (hi_t - lo_t)

    def y(v: float) -> float:
        return PAD_T + ph * (1 - v / vmax)

    def r(k: int) -> float:  # area by rows: radius by its square root, 3 to 14 units
        return 3.0 + 11.0 * math.sqrt(max(k, 0) / biggest)

    out = [f'<svg class="chart" id="history-chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="history-title">',
           f'<title id="history-title">{escape(label)} of {n} detections by time; larger points scored more rows'
           '</title>']
    for v in np.linspace(0, vmax, 5):
        yy = y(float(v))
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                   f'<text class="tick" x="{PAD_L - 6}" y="{yy + 4:.1f}" text-anchor="end">{100 * v:.2g}%</text>')
    out.append(f'<line class="axis" x1="{PAD_L}" x2="{W - PAD_R}" y1="{base}" y2="{base}"/>')
    order = sorted(range(n), key=lambda i: -rows[i])  # big points first, so small ones stay on top
    for i in order:
        t, v, k = times[i], rates[i], rows[i]
        when = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        out.append(f'<circle class="point" cx="{x(t):.1f}" cy="{y(v):.1f}" r="{r(k):.1f}" data-t="{t!r}" '
                   f'data-rows="{k}"><title>{when} UTC: {100 * v:.3g}% of {k:,} rows</title></circle>')
    if n:
        ticks = [t0] if span == 0 else [t0, t0 + span / 2, t1]
        for j, t in enumerate(ticks):
            anchor = "middle" if len(ticks) == 1 or j == 1 else ("start" if j == 0 else "end")
            out.append(f'<text class="tick" x="{x(t):.1f}" y="{base + 18}" text-anchor="{anchor}">'
                       f'{_time_label(t, span)}</text>')
    out.append(f'<text class="label" x="{PAD_L + pw / 2:.0f}" y="{H - 3}" text-anchor="middle">time (UTC)</text>')
    out.append("</svg>")
    return "".join(out)


def attribution_bars(names: Sequence[str], values: np.ndarray, sign: int = 1) -> str:
    """The SVG of one row's attributions: a horizontal bar per feature (in the order given)
    from a zero line, drawn as "push" where it moves the row toward anomalous (``sign`` *
    value > 0; ``sign`` is -1 for an output where smaller is anomalous) and "pull" otherwise."""
    values = np.asarray(values, dtype=np.float64)
    row_h, pad_l = 22, 150
    h = PAD_T + row_h * len(values) + PAD_B
    lo, hi = min(0.0, float(values.min(initial=0.0))), max(0.0, float(values.max(initial=0.0)))
    if hi - lo < 1e-300:
        lo, hi = -1.0, 1.0
    pw = W - pad_l - PAD_R

    def x(v: float) -> float:
        return pad_l + pw * (v - lo) / (hi - lo)

    out = [f'<svg class="chart" id="attributions" viewBox="0 0 {W} {h}" role="img" '
           f'aria-labelledby="attributions-title">',
           f'<title id="attributions-title">Attributions of {len(values)} features, from {_fmt(lo)} to '
           f'{_fmt(hi)}</title>']
    zero = x(0.0)
    for i, (name, v) in enumerate(zip(names, values)):
        y = PAD_T + i * row_h
        left, right = sorted((zero, x(float(v))))
        cls = "bar push" if sign * v > 0 else "bar pull"
        label = escape(str(name))
        out.append(f'<text class="tick" x="{pad_l - 6}" y="{y + row_h * 0.7:.1f}" text-anchor="end">'
                   f'{escape(str(name)[:22])}</text>'
                   f'<rect class="{cls}" x="{left:.2f}" y="{y + 3}" width="{max(right - left, 0.5):.2f}" '
                   f'height="{row_h - 6}"><title>{label}: {float(v):+.6g}</title></rect>')
    base = PAD_T + row_h * len(values)
    out.append(f'<line class="axis" x1="{zero:.2f}" x2="{zero:.2f}" y1="{PAD_T}" y2="{base}"/>')
    out.extend(_x_ticks(x, lo, hi, base))
    out.append(f'<text class="label" x="{pad_l + pw / 2:.0f}" y="{h - 3}" text-anchor="middle">attribution</text>')
    out.append("</svg>")
    return "".join(out)


def psi_bar(psi: float, top: float, drifted: bool) -> str:
    """A small inline bar of one feature's PSI on a scale to ``top`` (the page's largest, at
    least twice the threshold), marked when the feature drifts."""
    w = 120.0 * min(max(psi, 0.0) / top, 1.0) if top > 0 else 0.0
    cls = "bar flagged" if drifted else "bar"
    return (f'<svg class="psi-bar" viewBox="0 0 120 10" width="120" height="10" aria-hidden="true">'
            f'<rect class="{cls}" x="0" y="0" width="{w:.1f}" height="10"/></svg>')


def score_drift(edges: np.ndarray, training: np.ndarray, live: np.ndarray, threshold) -> str:
    """The SVG of the served scores' distribution drawn over the training one, both on the
    reference's score bins (``edges``; ``training`` and ``live`` the shares of the
    len(edges) + 1 bins, the first and last open-ended). Drawn as densities between the edges
    (share / bin width: the bins are equal-frequency, so of unequal width); the open-ended
    bins' shares are named in the title."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.size < 2:
        return ""
    lo, hi = float(edges[0]), float(edges[-1])
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    widths = np.diff(edges)
    dens = [np.asarray(s, dtype=np.float64)[1:-1] / widths for s in (training, live)]
    top = max(float(max(d.max() for d in dens)) * 1.1, 1e-12)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    base = PAD_T + ph

    def x(v: float) -> float:
        return PAD_L + pw * (v - lo) / (hi - lo) if hi > lo else PAD_L

    def y(v: float) -> float:
        return PAD_T + ph * (1 - v / top)

    outside = (f"below the training range: {100 * float(training[0]):.2g}% in training, {100 * float(live[0]):.2g}% "
               f"served; above it: {100 * float(training[-1]):.2g}% and {100 * float(live[-1]):.2g}%")
    out = [f'<svg class="chart" id="drift-scores" viewBox="0 0 {W} {H}" role="img" aria-labelledby="drift-title">',
           f'<title id="drift-title">Served scores over training scores on {edges.size - 1} bins from {_fmt(lo)} '
           f'to {_fmt(hi)} ({outside})</title>',
           f'<line class="axis" x1="{PAD_L}" x2="{W - PAD_R}" y1="{base}" y2="{base}"/>']
    for k, (label, d) in enumerate((("training", dens[0]), ("served", dens[1]))):
        out.append(f'<polyline class="dist series-{k}" data-label="{label}" points="{_steps(x, y, edges, d, base)}">'
                   f'<title>{label} scores</title></polyline>')
        ly = PAD_T + 16 + 26 * k
        out.append(f'<rect class="key series-{k}" x="{W - PAD_R - 110}" y="{ly - 12}" width="14" height="12"/>'
                   f'<text class="tick" x="{W - PAD_R - 90}" y="{ly}">{label}</text>')
    if threshold is not None and math.isfinite(threshold):
        tx = x(threshold)
        out.append(f'<line class="threshold" x1="{tx:.2f}" x2="{tx:.2f}" y1="{PAD_T}" y2="{base}">'
                   f'<title>threshold {_fmt(threshold)}</title></line>')
    out.extend(_x_ticks(x, lo, hi, base))
    out.append(f'<text class="label" x="{PAD_L + pw / 2:.0f}" y="{H - 3}" text-anchor="middle">score</text>')
    out.append("</svg>")
    return "".join(out)

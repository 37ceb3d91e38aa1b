"""What the command groups share: progress on a terminal, the parsing of ``--param`` and
``--columns``, and tables."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time


class Progress:
    """Progress on stderr: a redrawn one-line display on a terminal; with ``force`` (the
    ``--progress`` option) on any stream too, as plain lines a log keeps (a line per stage
    and at most one every ``every`` seconds within a stage).

    Called as ``progress(stage, fraction_or_None)``; on a terminal a background thread redraws
    it so a long native call (which reports no fraction) still shows the elapsed time.
    """

    def __init__(self, stream=None, force: bool = False, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = self.tty or force
        self.every = every
        self.stage, self.fraction, self.t0 = "", None, time.monotonic()
        self._last_line = 0.0
        self._stop = threading.Event()
        self._thread = None

    def __call__(self, stage, fraction=None):
        if not self.enabled:
            return
        new_stage = stage != self.stage
        if new_stage:
            self.t0 = time.monotonic()
        self.stage, self.fraction = stage, fraction
        if not self.tty:
            now = time.monotonic()
            if new_stage or now - self._last_line >= self.every or fraction == 1.0:
                self._last_line = now
                self.stream.write(self._line() + "\n")
                self.stream.flush()
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        self._draw()

    def _run(self):
        while not self._stop.wait(0.2):
            self._draw()

    def _line(self) -> str:
        spent = time.monotonic() - self.t0
        if self.fraction is None:
            spin = "|/-\\"[int(spent * 5) % 4] if self.tty else "..."
            return f"{self.stage} {spin} {spent:5.1f}s"
        width = 30
        filled = int(round(width * min(max(self.fraction, 0.0), 1.0)))
        return f"{self.stage} [{'#' * filled}{'.' * (width - filled)}] {100 * self.fraction:3.0f}% {spent:5.1f}s"

    def _draw(self):
        self.stream.write("\r\033[K" + self._line())
        self.stream.flush()

    def close(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.enabled = False  # the command is done: later stages print nothing


def parse_param(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param needs KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--param key {key!r} is not a parameter name")
    words = {"true": True, "false": False, "none": None, "null": None}
    if raw.strip().lower() in words:
        return key, words[raw.strip().lower()]
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw  # a plain string, e.g. max_samples=auto


def columns(text: str):
    return [c.strip() for c in text.split(",") if c.strip()]


def fmt_time(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def table(rows, headers) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


"""Results of a fault-injection run: the history, the verdict, and a picture.

:func:`write_report` fills a results folder with

* ``history.jsonl``: the history (:mod:`._history`), to re-check or to read;
* ``verdict.json``: the combined verdict of the checkers, their anomalies and statistics, the
  run's metadata (seed, nemesis schedule) and a latency summary;
* ``latency.png``: latency of every operation over time (log scale, coloured by outcome:
  green ok, red fail, orange unknown, drawn at the top edge as their latency is unknown) with a
  p95 line, and below it throughput (completed operations per second) over time; the windows
  in which a nemesis fault was in force are shaded on both and labelled.

The verdict's vocabulary lives here too: a checker returns a :class:`CheckResult` (valid,
invalid with :class:`Anomaly` witnesses, or unknown), and :func:`verdict_json` combines them.

The picture is drawn without any plotting library: :class:`Canvas` is a small RGB rasteriser
(rectangles, lines, dots, a 3x5 bitmap font) and :func:`encode_png` writes it with ``zlib``
and ``struct``. Everything here is blocking file I/O: from trio, call :func:`write_report`
through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import enum
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from ._history import History, Op, Outcome, fault_windows, write_jsonl

__all__ = [
    "Anomaly",
    "Canvas",
    "CheckResult",
    "Chart",
    "ReportPaths",
    "Validity",
    "encode_png",
    "latency_summary",
    "render_chart",
    "verdict_json",
    "write_report",
]

RGB = tuple[int, int, int]

WHITE: Final[RGB] = (255, 255, 255)
BLACK: Final[RGB] = (0, 0, 0)
GREY: Final[RGB] = (200, 200, 200)
SHADE: Final[RGB] = (255, 222, 222)
OK_COLOUR: Final[RGB] = (40, 150, 60)
FAIL_COLOUR: Final[RGB] = (210, 40, 40)
INFO_COLOUR: Final[RGB] = (235, 140, 0)
P95_COLOUR: Final[RGB] = (40, 70, 200)

# A 3x5 bitmap font: five rows of three columns per glyph ("#" is ink).
_FONT_SRC: Final = {
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###",
    "3": "### ..# .## ..# ###", "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###", "7": "### ..# .#. .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###", "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..", "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#",
    "L": "#.. #.. #.. #.. ###", "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#",
    "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##",
    "R": "##. #.# ##. #.# #.#", "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#",
    "X": "#.# #.# .#. #.# #.#", "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    ".": "... ... ... ... .#.", "-": "... ... ### ... ...", "/": "..# ..# .#. #.. #..",
    "%": "#.# ..# .#. #.. #.#", ":": "... .#. ... .#. ...", "(": ".#. #.. #.. #.. .#.",
    ")": ".#. ..# ..# ..# .#.", "=": "... ### ... ### ...", ",": "... ... ... .#. #..",
    "_": "... ... ... ... ###", "+": "... .#. ### .#. ...", " ": "... ... ... ... ...",
}  # fmt: skip
_FONT: Final = {
    ch: tuple((x, y) for y, row in enumerate(src.split()) for x, c in enumerate(row) if c == "#")
    for ch, src in _FONT_SRC.items()
}


@final
class Canvas:
    """An RGB image in memory with just enough drawing for a chart."""

    def __init__(self, width: int, height: int, background: RGB = WHITE) -> None:
        self.width = width
        self.height = height
        self._px = bytearray(bytes(background) * (width * height))

    def get(self, x: int, y: int) -> RGB:
        i = (y * self.width + x) * 3
        return (self._px[i], self._px[i + 1], self._px[i + 2])

    def set(self, x: int, y: int, colour: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self._px[i : i + 3] = bytes(colour)

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: RGB) -> None:
        """Fill the rectangle with corners (x0, y0) and (x1, y1), both included."""
        x0, x1 = sorted((max(0, x0), min(self.width - 1, x1)))
        y0, y1 = sorted((max(0, y0), min(self.height - 1, y1)))
        row = bytes(colour) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            i = (y * self.width + x0) * 3
            self._px[i : i + len(row)] = row

    def line(self, x0: int, y0: int, x1: int, y1: int, colour: RGB) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:  # Bresenham
            self.set(x0, y0, colour)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def dot(self, x: int, y: int, colour: RGB, radius: int = 1) -> None:
        self.rect(x - radius, y - radius, x + radius, y + radius, colour)

    def text(self, x: int, y: int, s: str, colour: RGB = BLACK, scale: int = 2) -> int:
        """Draw ``s`` (upper-cased) with its top-left corner at (x, y); returns the end x."""
        for ch in s.upper():
            for gx, gy in _FONT.get(ch, _FONT["_"]):
                self.rect(
                    x + gx * scale, y + gy * scale, x + gx * scale + scale - 1,
                    y + gy * scale + scale - 1, colour,
                )  # fmt: skip
            x += 4 * scale
        return x

    @staticmethod
    def text_width(s: str, scale: int = 2) -> int:
        return len(s) * 4 * scale

    def rows(self) -> list[bytes]:
        w = self.width * 3
        return [bytes(self._px[y * w : (y + 1) * w]) for y in range(self.height)]


def encode_png(canvas: Canvas) -> bytes:
    """The canvas as an 8-bit RGB PNG (no filtering, zlib level 6)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", canvas.width, canvas.height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in canvas.rows())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


# --- the chart ------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Panel:
    left: int
    top: int
    right: int
    bottom: int


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), 10 * mag)


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"


@final
class Chart:
    """Latency and throughput of a history over time, with fault windows shaded."""

    WIDTH: Final = 1100
    HEIGHT: Final = 640

    def __init__(self, history: History, *, title: str = "") -> None:
        self.history = history
        self.title = title
        self.ops = history.operations()
        times = [e.time for e in history.events] or [0.0, 1.0]
        self.t0 = min(times)
        self.t1 = max(max(times), self.t0 + 1e-3)
        self.latency = Panel(90, 40, self.WIDTH - 20, 340)
        self.throughput = Panel(90, 400, self.WIDTH - 20, self.HEIGHT - 50)
        lat = [o.ret - o.call for o in self.ops if o.ret is not None]
        positive = [v for v in lat if v > 0] or [1e-3]
        self.log_lo = math.floor(math.log10(min(positive)))
        self.log_hi = max(math.ceil(math.log10(max(positive))), self.log_lo + 1)

    def x_of(self, t: float) -> int:
        p = self.latency
        return p.left + round((t - self.t0) / (self.t1 - self.t0) * (p.right - p.left))

    def _y_latency(self, seconds: float) -> int:
        p = self.latency
        v = math.log10(max(seconds, 10.0**self.log_lo))
        frac = (v - self.log_lo) / (self.log_hi - self.log_lo)
        return p.bottom - round(frac * (p.bottom - p.top))

    def render(self) -> Canvas:
        c = Canvas(self.WIDTH, self.HEIGHT)
        c.text(90, 10, self.title or "microtrio fault injection", scale=2)
        for panel in (self.latency, self.throughput):
            self._shade(c, panel)
        self._draw_latency(c)
        self._draw_throughput(c)
        for panel in (self.latency, self.throughput):
            self._time_axis(c, panel)
        c.text(self.WIDTH // 2 - 40, self.HEIGHT - 22, "time (s)")
        self._legend(c)
        return c

    def _shade(self, c: Canvas, panel: Panel) -> None:
        for w in fault_windows(self.history):
            x0 = self.x_of(w.start)
            x1 = max(x0 + 1, self.x_of(w.stop if w.stop is not None else self.t1))
            c.rect(x0, panel.top, x1, panel.bottom, SHADE)
            if panel is self.latency:
                c.text(x0 + 2, panel.top + 6, w.fault, (150, 60, 60), scale=1)

    def _time_axis(self, c: Canvas, panel: Panel) -> None:
        c.line(panel.left, panel.bottom, panel.right, panel.bottom, BLACK)
        c.line(panel.left, panel.top, panel.left, panel.bottom, BLACK)
        span = self.t1 - self.t0
        step = _nice_step(span, 10)
        k = 0
        while k * step <= span + 1e-9:
            x = self.x_of(self.t0 + k * step)
            c.line(x, panel.bottom, x, panel.bottom + 4, BLACK)
            label = _fmt(k * step)
            c.text(x - Canvas.text_width(label, 1) // 2, panel.bottom + 7, label, scale=1)
            k += 1

    def _draw_latency(self, c: Canvas) -> None:
        p = self.latency
        for e in range(self.log_lo, self.log_hi + 1):
            y = self._y_latency(10.0**e)
            c.line(p.left, y, p.right, y, GREY)
            label = _fmt(10.0**e * 1000)
            c.text(p.left - 8 - Canvas.text_width(label, 1), y - 2, label, scale=1)
        c.text(8, p.top - 14, "latency (ms)", scale=1)
        events = self.history.events
        colours = {Outcome.OK: OK_COLOUR, Outcome.FAIL: FAIL_COLOUR}
        for o in self.ops:
            if o.ret is not None:
                c.dot(self.x_of(o.ret), self._y_latency(o.ret - o.call), colours[o.outcome])
            elif o.complete_index is not None:
                c.dot(self.x_of(events[o.complete_index].time), p.top + 1, INFO_COLOUR)
        prev: tuple[int, int] | None = None
        for t, ops in self._buckets():
            lat = sorted(o.ret - o.call for o in ops if o.ret is not None and o.ok)
            if not lat:
                prev = None
                continue
            pt = (self.x_of(t), self._y_latency(lat[min(len(lat) - 1, int(0.95 * len(lat)))]))
            if prev is not None:
                c.line(*prev, *pt, P95_COLOUR)
            prev = pt

    def _buckets(self) -> list[tuple[float, list[Op]]]:
        n = 60
        width = (self.t1 - self.t0) / n
        buckets: list[list[Op]] = [[] for _ in range(n)]
        events = self.history.events
        for o in self.ops:
            if o.complete_index is None:
                continue
            t = events[o.complete_index].time
            buckets[min(n - 1, int((t - self.t0) / width))].append(o)
        return [(self.t0 + (i + 0.5) * width, b) for i, b in enumerate(buckets)]

    def _draw_throughput(self, c: Canvas) -> None:
        p = self.throughput
        buckets = self._buckets()
        width = (self.t1 - self.t0) / len(buckets)
        series = {
            outcome: [sum(1 for o in b if o.outcome is outcome) / width for _, b in buckets]
            for outcome in Outcome
        }
        top = max(max(s) for s in series.values()) or 1.0
        step = _nice_step(top, 4)
        top = math.ceil(top / step) * step

        def y_of(rate: float) -> int:
            return p.bottom - round(rate / top * (p.bottom - p.top))

        k = 0
        while k * step <= top + 1e-9:
            y = y_of(k * step)
            c.line(p.left, y, p.right, y, GREY)
            label = _fmt(k * step)
            c.text(p.left - 8 - Canvas.text_width(label, 1), y - 2, label, scale=1)
            k += 1
        c.text(8, p.top - 14, "throughput (ops/s)", scale=1)
        colours = {Outcome.OK: OK_COLOUR, Outcome.FAIL: FAIL_COLOUR, Outcome.UNKNOWN: INFO_COLOUR}
        for outcome, values in series.items():
            pts = [(self.x_of(t), y_of(v)) for (t, _), v in zip(buckets, values, strict=True)]
            for a, b in zip(pts, pts[1:], strict=False):
                c.line(*a, *b, colours[outcome])

    def _legend(self, c: Canvas) -> None:
        x = self.WIDTH - 420
        for label, colour in (("ok", OK_COLOUR), ("fail", FAIL_COLOUR), ("unknown", INFO_COLOUR),
                              ("p95", P95_COLOUR), ("fault", SHADE)):  # fmt: skip
            c.rect(x, 12, x + 9, 21, colour)
            x = c.text(x + 14, 13, label, scale=1) + 14


def render_chart(history: History, *, title: str = "") -> bytes:
    """The latency/throughput picture of ``history`` as PNG bytes."""
    return encode_png(Chart(history, title=title).render())


# --- verdicts ------------------------------------------------------------------------------


class Validity(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


@final
@dataclass(frozen=True, slots=True)
class Anomaly:
    """One violation: its kind (``lost``, ``G1c``, ...), an explanation, the events involved."""

    kind: str
    message: str
    events: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "events": list(self.events)}


@final
@dataclass(frozen=True, slots=True)
class CheckResult:
    checker: str
    validity: Validity
    anomalies: tuple[Anomaly, ...] = ()
    stats: Mapping[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.validity is Validity.VALID

    def __bool__(self) -> bool:
        return self.valid

    def kinds(self) -> set[str]:
        return {a.kind for a in self.anomalies}

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": self.checker,
            "validity": self.validity.value,
            "anomalies": [a.to_json() for a in self.anomalies],
            "stats": dict(self.stats),
        }


def verdict_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    """The combined verdict of several checkers: invalid beats unknown beats valid."""
    validity = Validity.VALID
    for r in results:
        if r.validity is Validity.INVALID:
            validity = Validity.INVALID
        elif r.validity is Validity.UNKNOWN and validity is Validity.VALID:
            validity = Validity.UNKNOWN
    return {"validity": validity.value, "results": [r.to_json() for r in results]}


# --- the results folder ---------------------------------------------------------------------


def latency_summary(history: History) -> dict[str, Any]:
    """Counts by outcome and latency percentiles (milliseconds) of completed operations."""
    ops = history.operations()
    lat = sorted((o.ret - o.call) * 1000 for o in ops if o.ret is not None)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

    return {
        "operations": len(ops),
        "ok": sum(1 for o in ops if o.ok),
        "fail": sum(1 for o in ops if o.failed),
        "unknown": sum(1 for o in ops if o.unknown),
        "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0)},
    }


@final
@dataclass(frozen=True, slots=True)
class ReportPaths:
    history: Path
    verdict: Path
    png: Path | None


def write_report(
    directory: Path,
    history: History,
    results: Sequence[CheckResult],
    *,
    png: bool = True,
    title: str = "",
) -> ReportPaths:
    """Write ``history.jsonl``, ``verdict.json`` and (unless ``png=False``) ``latency.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    hist_path = directory / "history.jsonl"
    write_jsonl(history, hist_path)
    verdict = verdict_json(results)
    verdict["meta"] = history.meta
    verdict["summary"] = latency_summary(history)
    verdict["faults"] = [
        {"fault": w.fault, "start": w.start, "stop": w.stop} for w in fault_windows(history)
    ]
    verdict_path = directory / "verdict.json"
    verdict_path.write_text(json.dumps(verdict, indent=2, default=str) + "\n", encoding="utf-8")
    png_path = None
    if png:
        seed = history.meta.get("nemesis", {}).get("seed", history.meta.get("seed"))
        heading = title or f"microtrio  seed {seed}  {verdict['validity']}"
        png_path = directory / "latency.png"
        png_path.write_bytes(render_chart(history, title=heading))
    return ReportPaths(hist_path, verdict_path, png_path)

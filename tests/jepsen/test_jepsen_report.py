"""The results folder: history, verdict and a PNG that decodes, with fault windows shaded."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from microtrio.testing._checkers import check_set
from microtrio.testing._history import NEMESIS, History, Recorder, read_jsonl
from microtrio.testing._report import (
    SHADE,
    WHITE,
    Canvas,
    Chart,
    encode_png,
    latency_summary,
    write_report,
)


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """A minimal decoder for what encode_png writes: checks chunk CRCs, unfilters rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", body)
            assert (depth, colour) == (8, 2)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * 3 + 1
    assert len(raw) == stride * height
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(r[0] == 0 for r in rows)
    return width, height, [r[1:] for r in rows]


def pixel(rows: list[bytes], x: int, y: int) -> tuple[int, int, int]:
    r = rows[y][x * 3 : x * 3 + 3]
    return (r[0], r[1], r[2])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sample_history() -> History:
    clock = Clock()
    rec = Recorder(clock, meta={"seed": 4242})
    for i in range(20):
        clock.now = (i % 10) * 0.2 + (0 if i < 10 else 8)  # 0..2 s and 8..10 s
        inv = rec.invoke(i, "add", value=i)
        clock.now += 0.01 * (1 + i % 3)
        if i == 5:
            rec.info(inv, "timeout")
        else:
            rec.ok(inv)
    clock.now = 4.0
    start = rec.invoke(NEMESIS, "start", value={"fault": "kill", "id": 0})
    rec.ok(start, {"fault": "kill", "id": 0, "detail": {"members": ["m2"]}})
    clock.now = 6.0
    rec.ok(rec.invoke(NEMESIS, "stop", value={"fault": "kill", "id": 0}))
    clock.now = 10.5
    inv = rec.invoke(99, "read")
    clock.now = 10.6
    rec.ok(inv, [i for i in range(20) if i != 5])
    return rec.history()


def test_canvas_draws_and_png_round_trips() -> None:
    c = Canvas(20, 10)
    c.rect(2, 2, 5, 4, (1, 2, 3))
    c.line(0, 9, 19, 9, (9, 9, 9))
    c.text(10, 0, "7", (5, 5, 5), scale=1)
    w, h, rows = decode_png(encode_png(c))
    assert (w, h) == (20, 10)
    assert pixel(rows, 3, 3) == (1, 2, 3) and pixel(rows, 6, 3) == WHITE
    assert pixel(rows, 0, 9) == pixel(rows, 19, 9) == (9, 9, 9)
    assert pixel(rows, 10, 0) == (5, 5, 5) and pixel(rows, 10, 1) == WHITE  # "7": ###/..#


def test_report_writes_history_verdict_and_shaded_png(tmp_path: Path) -> None:
    h = sample_history()
    paths = write_report(tmp_path / "run", h, [check_set(h)])
    assert read_jsonl(paths.history) == h
    verdict = json.loads(paths.verdict.read_text())
    assert verdict["validity"] == "valid"
    assert verdict["meta"]["seed"] == 4242
    assert verdict["summary"]["unknown"] == 1 and verdict["summary"]["operations"] == 21
    assert verdict["faults"] == [{"fault": "kill", "start": 4.0, "stop": 6.0}]
    assert paths.png is not None
    w, h_px, rows = decode_png(paths.png.read_bytes())
    assert (w, h_px) == (Chart.WIDTH, Chart.HEIGHT)
    chart = Chart(h)
    for panel in (chart.latency, chart.throughput):
        assert pixel(rows, chart.x_of(5.0), panel.top + 40) == SHADE
        assert pixel(rows, chart.x_of(3.0), panel.top + 40) != SHADE
        assert pixel(rows, chart.x_of(7.0), panel.top + 40) != SHADE


def test_report_of_invalid_run_and_without_png(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder(clock)
    rec.ok(rec.invoke(0, "add", value=1))
    clock.now = 1.0
    rec.ok(rec.invoke(1, "read"), [])
    h = rec.history()
    paths = write_report(tmp_path, h, [check_set(h)], png=False)
    assert paths.png is None and not (tmp_path / "latency.png").exists()
    verdict = json.loads(paths.verdict.read_text())
    assert verdict["validity"] == "invalid"
    assert verdict["results"][0]["anomalies"][0]["kind"] == "lost"


def test_latency_summary_percentiles() -> None:
    s = latency_summary(sample_history())
    assert s["ok"] == 20 and s["fail"] == 0
    assert s["latency_ms"]["p50"] == 20.0 and s["latency_ms"]["max"] == 100.0

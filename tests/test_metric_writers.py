"""Tests for drd_jax.metric_writers."""

import errno
import json
import pathlib
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import folder_stats
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from drd_jax import metric_writers
from drd_jax.files import DiskFullError
from drd_jax.metric_writers import MetricWriter, read_jsonl


def read_events(logdir: pathlib.Path) -> list[event_pb2.Event]:
    """Parses TFRecord framing: u64 length, u32 masked crc(length), payload, u32 masked crc."""
    events = []
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            (crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            assert crc == masked_crc32c(header)
            payload = data[pos + 12 : pos + 12 + length]
            (crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
            assert crc == masked_crc32c(payload)
            events.append(event_pb2.Event.FromString(payload))
            pos += 16 + length
    return events


def tb_scalars(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for ev in read_events(logdir):
        for v in ev.summary.value:
            out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_jsonl_round_trip_and_types(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False, curves_on_close=False) as w:
        w.write_scalars(1, {"loss": 2.5, "lr": np.float32(0.125)})
        w.write_scalars(np.int64(2), {"loss": jnp.asarray(1.5)}, split="train")
        w.write_scalars(2, {"mean_iou": np.asarray([0.25])}, split="eval")
        # flushed at each write: readable before close
        assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 3
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    got = [(r["step"], r["split"], r["scalars"]) for r in recs]
    assert got == [
        (1, "train", {"loss": 2.5, "lr": 0.125}),
        (2, "train", {"loss": 1.5}),
        (2, "eval", {"mean_iou": 0.25}),
    ]
    assert all(isinstance(r["wall_time"], float) for r in recs)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_non_finite_written_as_null_and_bad_inputs_rejected(tmp_path):
    w = MetricWriter(tmp_path, curves_on_close=False)
    w.write_scalars(3, {"loss": float("nan"), "grad_norm": np.inf, "ok": 1.0})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert json.loads(line)["scalars"] == {"loss": None, "grad_norm": None, "ok": 1.0}
    assert "NaN" not in line and "Infinity" not in line  # strict JSON
    for step, scalars, err in [
        (1, {"loss": "high"}, TypeError),
        (1, {"loss": True}, TypeError),
        (1, {"loss": np.ones(3)}, ValueError),
        (1, {"loss": 1 + 2j}, TypeError),
        (1, {}, ValueError),
        (1, {3: 1.0}, TypeError),
        (-1, {"loss": 1.0}, ValueError),
        (1.5, {"loss": 1.0}, TypeError),
    ]:
        with pytest.raises(err):
            w.write_scalars(step, scalars)
    with pytest.raises(ValueError, match="split"):
        w.write_scalars(1, {"loss": 1.0}, split="a/b")
    w.close()
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1  # rejected writes left no trace
    with pytest.raises(RuntimeError, match="closed"):
        w.write_scalars(4, {"loss": 1.0})


def test_tensorboard_events_hold_the_scalars(tmp_path):
    with MetricWriter(tmp_path, curves_on_close=False) as w:
        w.write_scalars(10, {"loss": 0.75})
        w.write_scalars(20, {"loss": 0.5})
        w.write_scalars(20, {"mean_iou": 0.375}, split="eval")
    # tensorboardX writes events from a background thread: all of them are on disk at close()
    # (not necessarily right after a write, which this test once assumed and failed on).
    scalars = tb_scalars(tmp_path / "tensorboard")
    assert scalars == {"train/loss": [(10, 0.75), (20, 0.5)], "eval/mean_iou": [(20, 0.375)]}


def test_resume_truncates_and_appends(tmp_path):
    w = MetricWriter(tmp_path, curves_on_close=False)
    for step in (10, 20, 30, 40):
        w.write_scalars(step, {"loss": 1.0 / step})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "spl')  # crash mid-write
    # the run restarts from its step-20 checkpoint
    w = MetricWriter(tmp_path, resume_step=20, curves_on_close=False)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20]
    w.write_scalars(30, {"loss": 0.5})
    assert w.truncate_after(25) == 1
    w.write_scalars(30, {"loss": 0.25})  # still appends to the rewritten file
    w.close()
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["scalars"]["loss"]) for r in recs] == [(10, 0.1), (20, 0.05), (30, 0.25)]
    # TensorBoard was told to purge the stale steps after 20
    purges = [e.step for e in read_events(tmp_path / "tensorboard") if e.session_log.status == 1]
    assert purges == [21]


def test_read_jsonl_rejects_corrupt_middle_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        read_jsonl(p)


def test_curves_png(tmp_path):
    w = MetricWriter(tmp_path, tensorboard=False)
    assert w.write_curves() is None  # nothing logged yet
    for step in range(0, 100, 10):
        w.write_scalars(step, {"loss": 1.0 / (step + 1), "lr": 0.1})
        if step % 30 == 0:
            w.write_scalars(step, {"loss": 2.0 / (step + 1), "mean_iou": step / 100}, split="eval")
    out = w.write_curves(tmp_path / "sub" / "c.png")
    w.close()  # draws <workdir>/curves.png too
    for path in (out, tmp_path / "curves.png"):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])  # IHDR
        assert width >= 600 and height >= 300  # three subplots side by side (loss, lr, mean_iou)
        assert len(data) > 20_000  # drawn lines, not an empty canvas


def test_inactive_writer_writes_nothing(tmp_path):
    with MetricWriter(tmp_path / "w", active=False) as w:
        w.write_scalars(1, {"loss": 1.0})
        assert w.truncate_after(0) == 0
    assert not (tmp_path / "w").exists()


def test_resuming_at_the_end_rewrites_nothing(tmp_path, monkeypatch):
    """Readers never write: a log with nothing to drop is left as it is (a read-only run works)."""
    w = MetricWriter(tmp_path, tensorboard=False, curves_on_close=False)
    for step in (1, 2, 3):
        w.write_scalars(step, {"loss": 1.0})
    w.close()
    before = folder_stats(tmp_path)

    def no_writes(*args, **kwargs):
        raise AssertionError("rewrote metrics.jsonl")

    monkeypatch.setattr(metric_writers, "atomic_write_text", no_writes)
    w = MetricWriter(tmp_path, resume_step=3, tensorboard=False, curves_on_close=False)
    assert w.truncate_after(3) == 0 and w.truncate_after(10) == 0
    w.close()
    assert folder_stats(tmp_path) == before
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


class _FullFile:
    """A file object on a full disk."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    flush = write

    def close(self):
        pass


def test_disk_full_names_the_log(tmp_path):
    w = MetricWriter(tmp_path, tensorboard=False, curves_on_close=False)
    w._file = _FullFile()
    with pytest.raises(DiskFullError) as info:
        w.write_scalars(1, {"loss": 1.0})
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path / "metrics.jsonl") in str(info.value)
    assert "no space left" in str(info.value)

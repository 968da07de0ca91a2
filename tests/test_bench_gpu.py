"""CPU smoke test of ``python -m experiments.bench_gpu`` (tiny shapes) and its time budget."""

import importlib.util
import json
import math

import pytest

from experiments import bench_gpu

pytestmark = pytest.mark.usefixtures("fast_compile")

TINY = [
    "--batch=2",
    "--height=32",
    "--width_px=32",
    "--network_width=0.0625",
    "--repeats=1",
    "--dtypes=float32",
    "--synthetic_config=tiny",
    "--synthetic_steps=3",
]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _run(tmp_path, data_dir, *flags):
    """(exit status, JSON report, Markdown report) of one in-process run."""
    out = tmp_path / "out"
    argv = [*TINY, f"--output_dir={out}", f"--data_dir={data_dir}", *flags]
    status = bench_gpu.main([*argv, f"--work_dir={tmp_path / 'work'}"])
    report = json.loads((out / bench_gpu.JSON_NAME).read_text())
    return status, report, (out / bench_gpu.MARKDOWN_NAME).read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_dir):
    return _run(tmp_path_factory.mktemp("bench_gpu"), data_dir)


def _times(record, suffixes=("_s",)):
    """Every number under a key ending in one of ``suffixes`` in ``record`` (nested)."""
    if isinstance(record, dict):
        for key, value in record.items():
            if isinstance(value, dict | list):
                yield from _times(value, suffixes)
            elif key.endswith(suffixes) and key != "budget_s":
                yield key, value
    elif isinstance(record, list):
        for value in record:
            yield from _times(value, suffixes)


def _assert_positive_times(record):
    times = list(_times(record))
    assert times
    for key, value in times:
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)


def test_every_section_reports_numbers(smoke):
    status, report, _ = smoke
    assert status == 0
    assert report["exit_status"] == 0
    assert report["header"]["jax"] and report["header"]["backend"] == "cpu"
    assert "experiments.bench_gpu" in report["header"]["command"]
    sections = report["sections"]
    assert list(sections) == list(bench_gpu.SECTIONS)
    for name in ("dconv", "train_step", "synthetic"):
        assert sections[name]["status"] == "ok", sections[name]
        _assert_positive_times(sections[name])
    dconv = sections["dconv"]
    assert len(dconv["rows"]) == 10  # every distinct depth-aware layer shape of DeepLab-VGG16
    assert all(r["ratio"] > 0 and isinstance(r["passed"], bool) for r in dconv["rows"])
    steps = sections["train_step"]
    assert [r["step"] for r in steps["rows"]] == ["student", "teacher"]
    assert all(r["images_per_s"] > 0 and r["compiled_peak_mib"] > 0 for r in steps["rows"])
    assert "compiled memory_analysis" in steps["memory_source"]  # CPU: no memory_stats
    synthetic = sections["synthetic"]
    assert synthetic["steps"] == 3 and 0 <= synthetic["mean_iou"] <= 1
    assert synthetic["steps_per_s"] > 0
    if HAS_TORCH:
        assert sections["peer"]["status"] == "ok"
        _assert_positive_times(sections["peer"])
    else:
        assert sections["peer"]["status"] == "skipped"
        assert sections["peer"]["reason"].startswith("torch not installed")


def test_markdown_has_the_tables(smoke):
    _, report, markdown = smoke
    assert report["header"]["command"] in markdown
    for header in (
        "| section | status | seconds | result |",
        "| layer(s) | shape (H×W, Cin→Cout) | plain ms | fast ms | ratio",
        "| step | compile (s) | step time (s, median) | images/s | ratio to student |",
        "| config | dataset | mode | width | crop | batch | steps | data build s",
        "teacher / student step time:",
    ):
        assert header in markdown
    assert ("| layer(s) | shape (H×W, Cin→Cout) | torch peer ms" in markdown) == HAS_TORCH


def test_zero_budget_skips_every_section(tmp_path, data_dir):
    status, report, markdown = _run(tmp_path, data_dir, "--budget_s=0")
    assert status == 0
    for name, record in report["sections"].items():
        assert record["status"] == "skipped" and record["reason"] == "time budget", name
        assert record["left_s"] <= 0
    assert markdown.count("skipped: time budget") >= 2 * len(bench_gpu.SECTIONS)


def test_a_failing_section_is_recorded_and_the_others_run(tmp_path, data_dir, monkeypatch):
    def broken(run, record, gate):
        raise RuntimeError("planted failure")

    monkeypatch.setitem(bench_gpu.SECTION_FUNCS, "dconv", broken)
    status, report, markdown = _run(tmp_path, data_dir, "--sections=dconv,peer")
    assert status == 1 and report["exit_status"] == 1
    dconv = report["sections"]["dconv"]
    assert dconv["status"] == "failed"
    assert dconv["error"] == "RuntimeError: planted failure"
    assert "planted failure" in dconv["traceback"]
    assert "**failed**: RuntimeError: planted failure" in markdown
    assert report["sections"]["peer"]["status"] == ("ok" if HAS_TORCH else "skipped")
    assert report["sections"]["synthetic"]["reason"] == "not selected (--sections)"


def test_peer_section_is_skipped_without_torch(tmp_path, data_dir, monkeypatch):
    def no_torch():
        raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr(bench_gpu, "_import_torch", no_torch)
    status, report, markdown = _run(tmp_path, data_dir, "--sections=peer")
    assert status == 0
    peer = report["sections"]["peer"]
    assert peer["status"] == "skipped"
    assert peer["reason"] == "torch not installed (ModuleNotFoundError: No module named 'torch')"
    assert "skipped: torch not installed" in markdown


def test_a_section_stops_starting_units_at_its_deadline():
    budget = bench_gpu.Budget(100.0)
    gate = budget.gate(1.0, 4.0)  # a quarter of what is left
    assert 24.0 < gate.deadline < 26.0
    assert gate.fits()
    gate.last_s = 30.0  # a unit as long as the last would overrun the deadline
    assert not gate.fits()
    assert budget.gate(1.0, 1.0).deadline > 99.0


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_peer_section_with_torch(tmp_path, data_dir):
    status, report, markdown = _run(tmp_path, data_dir, "--sections=peer")
    peer = report["sections"]["peer"]
    assert status == 0 and peer["status"] == "ok", peer
    assert peer["check"].startswith("PASS")
    assert len(peer["rows"]) == 10 and all(r["speedup"] > 0 for r in peer["rows"])
    assert "≥ 5×" in markdown

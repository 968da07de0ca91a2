"""CPU smoke test of ``python -m experiments.benchmarks.bench_gpu`` (tiny shapes) and its time
budget."""

import importlib.util
import json
import math

import pytest

from drd_jax.ops import depth_conv
from experiments.benchmarks import bench_gpu

pytestmark = pytest.mark.usefixtures("fast_compile")

TINY = [
    "--batch=2",
    "--height=16",
    "--width_px=16",
    "--network_width=0.0625",
    "--repeats=1",
    "--dtypes=bfloat16",  # the targets that matter most are in bfloat16
    "--implementations=fast,pallas",  # pallas: interpret mode on CPU, or a skip note
    "--peak_bf16_tflops=0.001",  # a made-up peak, so that the utilisation verdict is computed
    "--synthetic_config=tiny",
    "--synthetic_steps=3",
]
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_PALLAS = "pallas" in depth_conv.IMPLEMENTATIONS
IMPLS = ["fast", "pallas"] if HAS_PALLAS else ["fast"]
STEPS = ["student", *(f"teacher {i}" for i in IMPLS), "student+vtce"]


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
    assert "experiments.benchmarks.bench_gpu" in report["header"]["command"]
    sections = report["sections"]
    assert list(sections) == list(bench_gpu.SECTIONS)
    for name in ("dconv", "train_step", "synthetic"):
        assert sections[name]["status"] == "ok", sections[name]
        _assert_positive_times(sections[name])
    dconv = sections["dconv"]
    assert len(dconv["rows"]) == 10  # every distinct depth-aware layer shape of DeepLab-VGG16
    assert dconv["implementations"] == IMPLS and not dconv["errors"]
    for r in dconv["rows"]:
        assert r["dtype"] == "bfloat16" and list(r["ratios"]) == IMPLS
        assert [op["op"] for op in r["ops"]] == ["plain conv", *(f"D-Conv {i}" for i in IMPLS)]
        assert all(ratio > 0 for ratio in r["ratios"].values())
        assert r["best"] in IMPLS and r["ratio"] == min(r["ratios"].values())
        assert isinstance(r["passed"], bool) and r["passed"] == (r["ratio"] <= 1.3)
    steps = sections["train_step"]
    assert [r["step"] for r in steps["rows"]] == STEPS
    assert all(r["images_per_s"] > 0 and r["compiled_peak_mib"] > 0 for r in steps["rows"])
    assert steps["rows"][-1]["teacher_forward"] == "fast"
    (verdict,) = steps["verdicts"]
    assert list(verdict["ratios"]) == IMPLS and verdict["best"] in IMPLS
    assert verdict["passed"] == (verdict["ratio"] <= 1.3)
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
        "| layer(s) | shape (H×W, Cin→Cout) | plain ms | fast ms | fast ratio | ",
        "## Targets",
        "| target | measured | verdict |",
        "Projected NYUv2 Table 1 on this device",
        "| dtype | teacher implementation | BL | TN | SN | total | verdict |",
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


def test_pallas_rows_in_interpret_mode_or_a_skip_note(smoke):
    _, report, markdown = smoke
    dconv, steps = report["sections"]["dconv"], report["sections"]["train_step"]
    if HAS_PALLAS:
        assert all("pallas" in r["ratios"] for r in dconv["rows"])
        assert "teacher pallas" in [r["step"] for r in steps["rows"]]
        note = "`pallas` runs in Pallas interpret mode on a CPU"
        assert "D-Conv `pallas` vs plain conv" in markdown
    else:
        note = "`pallas`: skipped: not in drd_jax.ops.depth_conv.IMPLEMENTATIONS"
    for record in (dconv, steps):
        assert any(n.startswith(note) for n in record["notes"]), record["notes"]
    assert note in markdown


def test_targets_are_computed(smoke):
    _, report, markdown = smoke
    dconv, teacher, peer, utilisation, table1 = report["targets"]
    assert dconv["target"] == "D-Conv fwd+bwd ≤ 1.3× XLA's conv at every layer shape (bfloat16)"
    assert dconv["value"].startswith("fast ") and isinstance(dconv["passed"], bool)
    assert teacher["target"] == "teacher step ≤ 1.3× student's, bfloat16"
    assert teacher["passed"] == report["sections"]["train_step"]["verdicts"][0]["passed"]
    assert "fast " in teacher["value"]
    assert peer["passed"] is None or HAS_TORCH
    u = report["sections"]["train_step"]["utilisation"]
    assert u["peak_tflops"] == 0.001 and u["tflops"] > 0
    assert u["fraction"] == pytest.approx(u["tflops"] / 0.001)
    assert utilisation["passed"] == (u["fraction"] >= 0.4)
    assert utilisation["value"].endswith(f"= {u['fraction']:.1%}")
    projections = report["sections"]["train_step"]["table1"]
    assert [t["implementation"] for t in projections] == IMPLS
    for t in projections:
        assert t["hours"] > sum(t["run_hours"].values()) > 0  # plus the compile times
        assert t["steps_per_run"] == 79500 and t["bench_batch"] == 2 and not t["table1_shapes"]
    assert table1["passed"] is None and "not Table 1's shapes" in table1["value"]
    assert "| target | measured | verdict |" in markdown
    for t in report["targets"]:
        verdict = "n/a" if t["passed"] is None else ("PASS" if t["passed"] else "**FAIL**")
        assert f"| {t['target']} | {t['value']} | {verdict} |" in markdown
    assert "of the dense bfloat16 peak 0.001 TFLOP/s (target ≥ 40%)" in markdown


def test_implementations_missing_from_depth_conv_are_noted(monkeypatch):
    monkeypatch.setattr(depth_conv, "IMPLEMENTATIONS", ("fast", "reference"))
    impls, notes = bench_gpu.available_implementations(["fast", "pallas"])
    assert impls == ["fast"]
    assert notes == [
        "`pallas`: skipped: not in drd_jax.ops.depth_conv.IMPLEMENTATIONS "
        "('fast', 'reference') of this checkout"
    ]
    monkeypatch.setattr(depth_conv, "IMPLEMENTATIONS", ("fast", "pallas"))
    impls, notes = bench_gpu.available_implementations(["fast", "pallas"])
    assert impls == ["fast", "pallas"] and "interpret mode" in notes[0]


def test_flags():
    args = bench_gpu.parse_args([])
    assert args.dtypes == ["bfloat16", "float32"]
    assert args.implementations == ["fast", "fast_patches", "pallas"]
    assert args.peak_bf16_tflops == 0.0
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--implementations=fast,fastest"])
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--peak_bf16_tflops=-1"])


def test_a_failing_pallas_shape_is_recorded_and_timed_without_it(monkeypatch):
    def bench_shape(label, shape, dtype, repeats, impls):
        if "pallas" in impls or "reference" in impls:
            raise RuntimeError(f"no {impls[-1]} here")
        return [
            {"op": "plain conv", "bwd_s": 2.0},
            *({"op": f"D-Conv {i}", "bwd_s": 3.0} for i in impls),
        ]

    monkeypatch.setattr(bench_gpu.bench_dconv, "bench_shape", bench_shape)
    errors = []
    ops = bench_gpu._bench_shape("fc6", (1,) * 7, "float32", 1, ["fast", "pallas"], errors)
    assert [op["op"] for op in ops] == ["plain conv", "D-Conv fast"]
    assert errors == ["float32 fc6: `pallas` failed: RuntimeError: no pallas here"]
    with pytest.raises(RuntimeError, match="no reference here"):  # only Pallas gets a retry
        bench_gpu._bench_shape("fc6", (1,) * 7, "float32", 1, ["fast", "reference"], errors)


def _ops(plain, **impls):
    return [
        {"op": "plain conv", "bwd_s": plain},
        *({"op": f"D-Conv {i}", "bwd_s": t} for i, t in impls.items()),
    ]


def test_dconv_row_picks_the_best_implementation():
    row = bench_gpu.dconv_row(
        "bfloat16", "fc6", (2, 4, 4, 8, 8, 3, 12), 1, _ops(2.0, fast=3.0, pallas=2.4)
    )
    assert row["ratios"] == {"fast": 1.5, "pallas": pytest.approx(1.2)}
    assert row["passed_by"] == {"fast": False, "pallas": True}
    assert row["best"] == "pallas" and row["passed"] is True
    row = bench_gpu.dconv_row("float32", "fc6", (2, 4, 4, 8, 8, 3, 12), 1, _ops(2.0))
    assert row["best"] is None and row["passed"] is False and row["ratios"] == {}


def _step(step, step_s, dtype="bfloat16", compile_s=10.0, batch=8):
    return dict(
        dtype=dtype, step=step, step_s=step_s, compile_s=compile_s, ratio_to_student=step_s / 0.1
    )


def test_step_verdict_and_utilisation():
    rows = [
        _step("student", 0.1),
        _step("teacher fast", 0.2),
        _step("teacher pallas", 0.12),
        _step("student+vtce", 0.15),
    ]
    verdict = bench_gpu.step_verdict("bfloat16", rows, 5.0)
    assert verdict["ratios"] == {"fast": pytest.approx(2.0), "pallas": pytest.approx(1.2)}
    assert verdict["best"] == "pallas" and verdict["passed"] is True and verdict["unit_s"] == 5.0
    u = bench_gpu.student_utilisation(rows, flops=50e12, peak=989.0)
    assert u["tflops"] == pytest.approx(500.0) and u["fraction"] == pytest.approx(500 / 989)
    assert u["passed"] is True
    assert bench_gpu.student_utilisation(rows, flops=30e12, peak=989.0)["passed"] is False
    unknown = bench_gpu.student_utilisation(rows, flops=50e12, peak=None)
    assert unknown["fraction"] is None and unknown["passed"] is None
    assert bench_gpu.student_utilisation([_step("student", 0.1, "float32")], 1.0, 1.0) is None


def test_peak_by_device_kind():
    assert bench_gpu.peak_tflops("NVIDIA H200") == 989.0
    assert bench_gpu.peak_tflops("NVIDIA H200 NVL") == 835.5
    assert bench_gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_gpu.peak_tflops("cpu") is None
    assert bench_gpu.peak_tflops("cpu", override=12.5) == 12.5


def test_table1_projection_at_table1_shapes():
    args = bench_gpu.parse_args(["--batch=8"])  # width 1, 480×640: nyuv2.py's network and crop
    rows = [
        _step("student", 0.8),
        _step("teacher fast", 1.6),
        _step("teacher pallas", 0.96),
        _step("student+vtce", 1.2),
        _step("student", 9.9, "float32"),
    ]
    fast, pallas = bench_gpu.table1_projection(rows, args, "bfloat16")
    assert fast["implementation"] == "fast" and pallas["implementation"] == "pallas"
    # 79,500 images per run at step time / 8 seconds each, plus 3 compiles of 10 s.
    assert fast["run_hours"] == pytest.approx({"BL": 2.208333, "TN": 4.416667, "SN": 3.3125})
    assert fast["hours"] == pytest.approx(79500 * (0.8 + 1.6 + 1.2) / 8 / 3600 + 30 / 3600)
    assert pallas["hours"] == pytest.approx(79500 * (0.8 + 0.96 + 1.2) / 8 / 3600 + 30 / 3600)
    assert fast["table1_shapes"] and not fast["passed"]
    assert bench_gpu.table1_projection(rows[:3], args, "bfloat16") == []  # no SN step
    report = {"sections": {n: {"status": "ok"} for n in bench_gpu.SECTIONS}}
    report["sections"]["train_step"]["table1"] = [fast, pallas]
    table1 = bench_gpu.targets(report)[-1]
    assert table1["passed"] is False and "best bfloat16 pallas" in table1["value"]
    fast_enough = {**pallas, "hours": 1.9, "passed": True}
    report["sections"]["train_step"]["table1"] = [fast, fast_enough]
    assert bench_gpu.targets(report)[-1]["passed"] is True


def test_peer_against_each_implementation():
    dconv_row = bench_gpu.dconv_row("float32", "fc6", (1,) * 7, 1, _ops(1.0, fast=2.0, pallas=0.5))
    row = {"layers": "fc6", "peer_s": 3.0, "ours_s": 2.0, "speedup": 1.5}
    extra = bench_gpu.peer_vs_dconv(row, dconv_row)
    assert extra["dconv_speedups"] == {"fast": 1.5, "pallas": 6.0}
    assert extra["best"] == "pallas" and extra["best_passed"] is True
    assert bench_gpu.peer_vs_dconv(row, None) == {}
    table = bench_gpu.format_peer_vs_dconv([{**row, **extra}])
    assert "| layer(s) | torch / fast | torch / pallas | best | verdict |" in table
    assert "| fc6 | 1.50× | 6.00× | pallas | PASS |" in table


def test_conv_flops_counts_every_conv():
    layers = bench_gpu.bench_dconv.model_layer_shapes(2, 32, 32, 0.0625)
    forward = sum(
        2 * n * h * w * k * k * cin * cout for n, h, w, cin, cout, k, _ in layers.values()
    )
    n, h, w, _, fc, _, _ = layers["fc6"]
    forward += 2 * n * h * w * (fc * fc + fc * bench_gpu.CLASSES)  # fc7, fc8: 1×1
    assert bench_gpu.conv_flops(2, 32, 32, 0.0625) == 3 * forward


def test_dconv_and_peer_targets_need_every_shape():
    shape = (1,) * 7
    rows = [
        bench_gpu.dconv_row("bfloat16", "a", shape, 1, _ops(1.0, fast=1.2, pallas=2.0)),
        bench_gpu.dconv_row("bfloat16", "b", shape, 1, _ops(1.0, fast=1.2, pallas=0.5)),
        bench_gpu.dconv_row("float32", "a", shape, 1, _ops(1.0, fast=1.4, pallas=1.5)),
    ]
    report = {"header": {"settings": {"dtypes": ["bfloat16", "float32"]}}}
    report["sections"] = {n: {"status": "ok"} for n in bench_gpu.SECTIONS}
    report["sections"]["dconv"].update(rows=rows, skipped=[])
    bf16, f32, *_ = bench_gpu.targets(report)
    assert bf16["passed"] is True and bf16["value"] == (
        "fast 2/2 shapes, pallas 1/2 shapes; every shape by its best: 2/2; all shapes: fast"
    )
    assert f32["passed"] is False and "all shapes: none" in f32["value"]
    report["sections"]["dconv"]["skipped"] = ["bfloat16 c", "float32 b"]
    bf16, f32, *_ = bench_gpu.targets(report)
    assert bf16["passed"] is None and bf16["value"].endswith("1 shapes not measured (time budget)")
    assert f32["passed"] is False  # a shape that every implementation fails is a FAIL anyway
    report["sections"]["peer"].update(rows=[{"speedup": 6.0, "best_speedup": 7.0}], skipped=[])
    assert bench_gpu.targets(report)[3]["passed"] is True
    report["sections"]["peer"]["skipped"] = ["fc6"]
    assert bench_gpu.targets(report)[3]["passed"] is None
    report["sections"]["peer"]["rows"] = [{"speedup": 2.0}]
    assert bench_gpu.targets(report)[3]["passed"] is False

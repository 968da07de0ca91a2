"""Tests of experiments.reproduce / protocols / paper_results (tiny synthetic runs, CPU)."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import folder_contents
from PIL import Image

from drd_jax import runs as runs_lib
from experiments import paper_results, protocols, reproduce
from experiments.configs import synthetic

pytestmark = pytest.mark.usefixtures("fast_compile")


# -- protocols -----------------------------------------------------------------------------------


def rows(table, **kw):
    kw = {"alpha": 8.3, "beta": 0.9, **kw}
    return protocols.table_rows(table, **kw)


def test_table_rows_name_the_paper_rows_and_share_runs():
    t1, t3, t4 = rows("1"), rows("3"), rows("4")
    assert [r.label for r in t1] == ["BL", "TN", "SN"]
    assert [r.label for r in t3] == ["BL", "BL+VTCE", "BL+PS", "BL+PS+VTCE"]
    assert [r.run.key for r in t3] == ["bl", "bl_vtce", "bl_ps", "sn"]
    by_label = {r.label: r.run for r in t4}
    assert by_label["TN α=8.3"] is t1[1].run or by_label["TN α=8.3"].key == "tn"
    assert by_label["SN β=0.9"].key == "sn"
    assert by_label["TN α=0.1"].overrides["alpha"] == 0.1
    assert by_label["SN β=0.3"].overrides["beta"] == 0.3
    assert by_label["SN β=0.3"].teacher == "tn"
    # With another base α, 8.3 becomes a run of its own and the base α is not in the table.
    keys = [r.run.key for r in rows("4", alpha=5.0) if r.label.startswith("TN")]
    assert "tn_alpha8.3" in keys and "tn" not in keys


def test_the_ablation_rows_are_the_paper_settings():
    runs = {r.label: r.run.overrides for r in rows("3")}
    assert runs["BL"] == {"mode": "baseline", "init": "scratch"}
    assert runs["BL+VTCE"] == {"mode": "student", "init": "scratch", "vtce_weight": 1.0}
    assert runs["BL+PS"] == {"mode": "student", "init": "teacher", "vtce_weight": 0.0}
    assert runs["BL+PS+VTCE"] == {"mode": "student", "init": "teacher", "vtce_weight": 1.0}
    imagenet = {r.label: r.run for r in rows("1", imagenet=True)}
    assert imagenet["SN (ImageNet)"].teacher == "tn_imagenet"
    assert imagenet["TN (ImageNet)"].overrides == {"mode": "teacher", "init": "imagenet"}


def test_the_kd_table_has_every_method_with_and_without_parameter_sharing():
    kd = rows("kd")
    labels = [r.label for r in kd]
    assert labels[:4] == ["BL", "BL+PS", "BL+VTCE", "BL+PS+VTCE"]
    assert [r.run.key for r in kd[:4]] == ["bl", "bl_ps", "bl_vtce", "sn"]  # Table 3's runs
    by_label = {r.label: r.run for r in kd}
    for method in ("pixel", "pair", "holistic", "SKD", "KA", "affinity"):
        scratch, shared = by_label[f"BL+{method}"], by_label[f"BL+PS+{method}"]
        assert scratch.overrides["init"] == "scratch" and shared.overrides["init"] == "teacher"
        assert scratch.teacher == shared.teacher == "tn"
        assert scratch.overrides["vtce_weight"] == shared.overrides["vtce_weight"] == 0.0
    assert by_label["BL+pixel"].overrides == {
        "mode": "student",
        "init": "scratch",
        "vtce_weight": 0.0,
        "pixel_kd_weight": 10.0,
    }
    skd = by_label["BL+PS+SKD"].overrides
    assert (skd["pixel_kd_weight"], skd["pair_kd_weight"], skd["holistic_kd_weight"]) == (
        10.0,
        0.5,
        0.1,
    )
    ka = by_label["BL+KA"].overrides
    assert (ka["adaptation_weight"], ka["affinity_weight"]) == (50.0, 1.0)
    # A base config's own weight replaces the upstream one; methods can be picked.
    custom = rows("kd", kd_weights={"pixel_kd_weight": 2.0}, kd_methods=["pixel"])
    assert [r.label for r in custom][4:] == ["BL+pixel", "BL+PS+pixel"]
    assert custom[4].run.overrides["pixel_kd_weight"] == 2.0
    with pytest.raises(ValueError, match="distillation methods"):
        rows("kd", kd_methods=["CWD"])
    with pytest.raises(ValueError, match="--kd_methods"):
        reproduce.parse_kd_methods(["pixel", "cwd"])


def test_runs_in_order_puts_teachers_first_and_dedups():
    order = protocols.runs_in_order(rows("3") + rows("1") + rows("4"))
    keys = [r.key for r in order]
    assert len(keys) == len(set(keys))
    for i, run in enumerate(order):
        if run.teacher:
            assert keys.index(run.teacher) < i
    assert set(keys) >= {"bl", "tn", "sn", "bl_vtce", "bl_ps", "tn_alpha0.1", "sn_beta1"}
    # Table 3 and table kd show no teacher row, but their students need one: it is trained first.
    for table in ("3", "kd"):
        keys = [r.key for r in protocols.runs_in_order(rows(table))]
        assert keys[:2] == ["bl", "tn"] and keys.count("tn") == 1


def test_unknown_table_is_refused():
    with pytest.raises(ValueError, match="unknown table"):
        protocols.table_rows("2", alpha=8.3, beta=0.9)
    with pytest.raises(ValueError, match="--table"):
        reproduce.parse_tables("1,2")
    assert reproduce.parse_tables(" 3,1,3 ") == ["3", "1"]


def test_paper_figures_are_consistent_across_tables():
    p = paper_results.PAPER
    # The same experiment reported in two tables has the same numbers.
    assert p["1"]["SN"] == p["3"]["BL+PS+VTCE"]
    assert p["1"]["BL"] == p["3"]["BL"]
    assert p["1"]["TN"]["NYUv2"] == p["4"]["TN α=8.3"]["NYUv2"]
    assert p["1"]["SN"]["NYUv2"] == p["4"]["SN β=0.9"]["NYUv2"]
    labels = {r.label for t in protocols.TABLES for r in rows(t, imagenet=True)}
    for table, entries in p.items():
        assert set(entries) <= labels, table
    assert paper_results.paper_figures("3", "BL+VTCE") == {
        "NYUv2": {"mean_pixel_accuracy": 24.1, "mean_iou": 17.9},
        "SUN RGB-D": {"mean_pixel_accuracy": 32.8, "mean_iou": 23.5},
    }
    assert paper_results.paper_figures("4", "BL") == {}


# -- end to end ----------------------------------------------------------------------------------


def tiny(data_dir):
    c = synthetic.get_config("tiny")
    c.data_dir = data_dir
    return c


@pytest.fixture(scope="module")
def table1(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reproduce")
    summary = reproduce.reproduce(tiny(data_dir), workdir, ["1"], figure_images=2)
    return workdir, summary


def test_table1_writes_results_beside_the_paper(table1, capsys):
    workdir, summary = table1
    body = json.loads((workdir / "results.json").read_text())
    assert body["tables"] == json.loads(json.dumps(summary["tables"]))
    entries = body["tables"]["1"]
    assert [e["row"] for e in entries] == ["BL", "TN", "SN"]
    for e in entries:
        final = json.loads((workdir / "runs" / e["run"] / "final_metrics.json").read_text())
        assert e["ours"]["mean_iou"] == pytest.approx(100 * final["mean_iou"])
        assert e["ours"]["mean_pixel_accuracy"] == pytest.approx(100 * final["mean_pixel_accuracy"])
        assert e["params_fingerprint"] == final["params_fingerprint"]
        assert e["paper"] == paper_results.paper_figures("1", e["row"])
        assert not e["reused"]
    # The student ran with parameter sharing from this teacher, VTCE on.
    sn_config = json.loads((workdir / "runs" / "sn" / "config.json").read_text())["config"]
    assert sn_config["mode"] == "student" and sn_config["init"] == "teacher"
    assert pathlib.Path(sn_config["teacher_workdir"]) == workdir / "runs" / "tn"
    # Where PS starts: the teacher's params without depth, evaluated independently here.
    tn = runs_lib.load_run(workdir / "runs" / "tn")
    plain = runs_lib.evaluate_run(tn, depth_aware=False)
    assert body["ps_starting_point"]["mean_iou"] == pytest.approx(100 * plain["mean_iou"])
    start_iou = body["ps_starting_point"]["per_class_iou"]
    for name, value in zip(tn.class_names, plain["per_class_iou"], strict=True):
        assert start_iou[name] == (None if value is None else pytest.approx(100 * value))
    with_depth = runs_lib.evaluate_run(tn)
    tn_final = json.loads((workdir / "runs" / "tn" / "final_metrics.json").read_text())
    assert with_depth["confusion_matrix"] == tn_final["confusion_matrix"]
    md = (workdir / "results.md").read_text()
    assert "| SN | RGB |" in md and "| TN | RGB-D |" in md
    # Per-class IoU of every run and of the PS starting point.
    assert "## Per-class IoU" in md and "| ps_start | PS start" in md
    sn_iou = entries[2]["per_class_iou"]
    assert "| sn | SN | " + " | ".join(reproduce._cell(v) for v in sn_iou.values()) + " |" in md
    # The eval curve of every run ends with its final evaluation (the tiny runs evaluate only
    # at their last step, 4).
    assert set(body["eval_curves"]) == {"bl", "tn", "sn"}
    for e in entries:
        assert body["eval_curves"][e["run"]] == [[4, pytest.approx(e["ours"]["mean_iou"])]]
    assert "## Test mIoU during training" in md and "| run | step 4 |" in md
    assert "48.2" in md and "38.1" in md  # the paper's NYUv2 TN mPA and SN mIoU
    for name in ("fig4.png", "curves.png"):
        with Image.open(workdir / name) as im:
            assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200


def test_a_second_invocation_reuses_finished_runs_and_adds_table3(table1, data_dir):
    workdir, first = table1
    summary = reproduce.reproduce(tiny(data_dir), workdir, ["1", "3"], figure_images=0)
    runs = summary["runs"]
    assert runs["bl"]["reused"] and runs["tn"]["reused"] and runs["sn"]["reused"]
    assert not runs["bl_vtce"]["reused"] and not runs["bl_ps"]["reused"]
    t3 = {e["row"]: e for e in summary["tables"]["3"]}
    assert t3["BL+PS+VTCE"]["params_fingerprint"] == first["tables"]["1"][2]["params_fingerprint"]
    # BL+PS starts from the teacher and never sees VTCE; BL+VTCE starts from scratch.
    bl_ps = runs_lib.read_run_config(workdir / "runs" / "bl_ps")[0]
    assert bl_ps.init == "teacher" and bl_ps.vtce_weight == 0.0
    history = [
        json.loads(line)
        for line in (workdir / "runs" / "bl_vtce" / "metrics.jsonl").read_text().splitlines()
    ]
    vtce = [h["scalars"]["vtce_loss"] for h in history if h["split"] == "train"]
    assert vtce and all(np.isfinite(vtce)) and max(vtce) > 0
    # results.md says whether the student kept half of the teacher's gain over BL.
    miou = {k: e["ours"]["mean_iou"] for k, e in t3.items()}
    gain = 0.5 * (first["tables"]["1"][1]["ours"]["mean_iou"] - miou["BL"])
    md = (workdir / "results.md").read_text()
    kept = miou["BL+PS+VTCE"] - miou["BL"]
    assert f"SN − BL = {kept:.1f} against 0.5·(TN − BL) = {gain:.1f}" in md


def test_a_moved_copy_reuses_every_run(table1, data_dir, tmp_path):
    """``cp -a`` of an experiment elsewhere: its students name their teacher by params, not by
    the old absolute path, so nothing is trained again and nothing of the copy's runs changes."""
    workdir, first = table1
    copy = tmp_path / "moved"
    shutil.copytree(workdir, copy, symlinks=True)
    before = folder_contents(copy / "runs")
    summary = reproduce.reproduce(tiny(data_dir), copy, ["1"], figure_images=0)
    assert all(run["reused"] for run in summary["runs"].values()), summary["runs"]
    assert [e["params_fingerprint"] for e in summary["tables"]["1"]] == [
        e["params_fingerprint"] for e in first["tables"]["1"]
    ]
    assert folder_contents(copy / "runs") == before


def test_a_read_only_copy_reuses_every_run_and_writes_nothing(table1, data_dir, small_tmpfs):
    workdir, first = table1
    fs = small_tmpfs("64m")
    copy = fs / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    before = folder_contents(copy)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True, capture_output=True)
    summary = reproduce.reproduce(tiny(data_dir), copy, ["1"], figure_images=0)
    assert all(run["reused"] for run in summary["runs"].values())
    assert [e["ours"] for e in summary["tables"]["1"]] == [e["ours"] for e in first["tables"]["1"]]
    assert folder_contents(copy) == before


def test_a_student_of_another_teacher_is_refused(table1):
    workdir, _ = table1
    recorded = json.loads((workdir / "runs" / "sn" / "final_metrics.json").read_text())
    teacher = recorded[runs_lib.TEACHER_KEY]
    runs_lib.check_same_teacher(workdir, teacher, teacher)
    runs_lib.check_same_teacher(workdir, None, teacher)  # a run of an earlier version
    with pytest.raises(ValueError, match=r"config\.teacher_workdir: .*another teacher"):
        runs_lib.check_same_teacher(workdir, teacher, "0" * 64)


def test_a_changed_config_is_not_silently_reused(table1, data_dir):
    workdir, _ = table1
    config = tiny(data_dir)
    config.learning_rate = 5e-4  # every run's config differs from the stored ones
    with pytest.raises(ValueError, match="config"):
        reproduce.reproduce(config, workdir, ["1"], figure_images=0)


def test_the_kd_table_trains_the_methods_on_the_same_teacher(table1, data_dir):
    workdir, first = table1
    summary = reproduce.reproduce(
        tiny(data_dir), workdir, ["kd"], figure_images=0, kd_methods=["pixel"]
    )
    entries = summary["tables"]["kd"]
    assert [e["row"] for e in entries] == [
        "BL",
        "BL+PS",
        "BL+VTCE",
        "BL+PS+VTCE",
        "BL+pixel",
        "BL+PS+pixel",
    ]
    runs = summary["runs"]
    assert all(runs[k]["reused"] for k in ("bl", "tn", "sn", "bl_ps", "bl_vtce"))
    assert not runs["kd_pixel"]["reused"] and not runs["kd_pixel_ps"]["reused"]
    for key in ("kd_pixel", "kd_pixel_ps"):
        config = runs_lib.read_run_config(workdir / "runs" / key)[0]
        assert config.pixel_kd_weight == 10.0 and config.vtce_weight == 0.0
        assert pathlib.Path(config.teacher_workdir) == workdir / "runs" / "tn"
        history = [
            json.loads(line)
            for line in (workdir / "runs" / key / "metrics.jsonl").read_text().splitlines()
        ]
        kd = [h["scalars"]["pixel_kd_loss"] for h in history if h["split"] == "train"]
        assert kd and all(np.isfinite(kd)) and min(kd) > 0
    for e in entries:
        final = json.loads((workdir / "runs" / e["run"] / "final_metrics.json").read_text())
        assert e["ours"]["mean_iou"] == pytest.approx(100 * final["mean_iou"])
        assert e["paper"] == {}
    md = (workdir / "results.md").read_text()
    assert "## Distillation methods (table kd)" in md and "| BL+PS+pixel | RGB |" in md


def test_student_variants_retrain_sn_exactly_and_change_only_what_is_asked(table1):
    from experiments.fidelity import student_variants

    workdir, summary = table1
    sn = next(e for e in summary["tables"]["1"] if e["row"] == "SN")
    same = student_variants.parse_variant(f"same as SN:beta={summary['config']['beta']}")
    no_vtce = student_variants.parse_variant("no VTCE:vtce_weight=0")
    assert no_vtce == ("no VTCE", {"vtce_weight": 0})
    rows = student_variants.collect([workdir], [same, no_vtce])
    # Same config as SN (parameter sharing from runs/tn, same seed): the same result, bit for bit.
    assert rows["same as SN"][0]["mean_iou"] == pytest.approx(sn["ours"]["mean_iou"], abs=1e-9)
    config = json.loads((workdir / "variants" / "no_VTCE" / "config.json").read_text())["config"]
    sn_config = json.loads((workdir / "runs" / "sn" / "config.json").read_text())["config"]
    assert config["vtce_weight"] == 0.0
    assert {k: v for k, v in config.items() if k != "vtce_weight"} == {
        k: v for k, v in sn_config.items() if k != "vtce_weight"
    }
    md = student_variants.markdown(rows, [same, no_vtce])
    assert "| SN | – |" in md and "| no VTCE | vtce_weight=0 |" in md
    assert "| no VTCE | vtce_weight=0 | " + f"{rows['no VTCE'][0]['mean_iou']:.1f} | " in md
    with_ps = {"BL+PS": [{"mean_iou": 50.0, "per_class_iou": {"a": 1.0}}] * 2}
    with_ps["x"] = [{"mean_iou": 53.0, "per_class_iou": {"a": 1.0}}, dict(with_ps["BL+PS"][0])]
    with_ps["x"][1]["mean_iou"] = 49.0
    md = student_variants.markdown(with_ps, [])
    assert "| x | – | 51.0 ± 2.8 | +1.0 ± 2.8 | 53.0, 49.0 |" in md
    md = student_variants.markdown({"x": with_ps["x"]}, [])  # no BL+PS: no paired difference
    assert "| x | – | 51.0 ± 2.8 | – | 53.0, 49.0 |" in md
    with pytest.raises(ValueError, match="--variant"):
        student_variants.parse_variant("no label")
    with pytest.raises(ValueError, match="init=0.1"):  # a float for a string field
        student_variants.student_config(summary, workdir, {"init": 0.1})
    with pytest.raises(ValueError, match="no config field 'betta'"):
        student_variants.collect([workdir], [("typo", {"betta": 1.0})])


def test_feature_similarity_compares_every_conv_layer_with_the_teacher(table1):
    from experiments.fidelity import feature_similarity

    workdir, _ = table1
    result = feature_similarity.layer_similarity(workdir, num_images=2, max_positions=64)
    # Table 1's runs (and Table 3's when another test added them); PS start from TN's params.
    assert {"ps_start", "sn", "bl"} <= set(result) <= {k for k, _ in feature_similarity.COMPARED}
    tn = runs_lib.load_run(workdir / "runs" / "tn")
    for per_layer in result.values():
        assert list(per_layer) == list(tn.params)  # conv1_1 ... fc8, in forward order
        assert all(0.0 <= v <= 1.0 + 1e-9 for v in per_layer.values()), per_layer
    md = feature_similarity.markdown([result, result])
    assert "| PS start (TN params, plain) |" in md and "| run | conv1_1 |" in md


# -- checks before anything is built or written --------------------------------------------------


def test_a_bad_config_value_of_any_run_stops_before_the_first_run(data_dir, tmp_path, capsys):
    config = tiny(data_dir)
    config.scale_range = (0.0, 1.0)  # was refused only by the first run's input pipeline
    workdir = tmp_path / "experiment"
    with pytest.raises(ValueError, match=r"^config\.scale_range: "):
        reproduce.reproduce(config, workdir, ["1"], figure_images=0)
    assert "[1/" not in capsys.readouterr().out
    assert not workdir.exists()


@pytest.mark.parametrize(
    "tables, kwargs, message",
    [
        (["1"], {"figure_images": -1}, r"--figure_images must be an int >= 0 \(0 = no fig4.png\)"),
        (["1", "3"], {"kd_methods": ["pixel"]}, r"--kd_methods .*table kd only.*--table=1,3"),
    ],
)
def test_options_that_would_be_ignored_are_refused_first(
    data_dir, tmp_path, tables, kwargs, message
):
    workdir = tmp_path / "experiment"
    with pytest.raises(ValueError, match=message):
        reproduce.reproduce(tiny(data_dir), workdir, tables, **kwargs)
    assert not workdir.exists()


@pytest.mark.integration
def test_the_command_line_refuses_them_in_one_line(tmp_path):
    from helpers import run_command

    workdir = tmp_path / "experiment"
    command = [
        sys.executable,
        "-m",
        "experiments.reproduce",
        "--config=experiments/configs/synthetic.py:tiny",
        f"--workdir={workdir}",
    ]
    proc = run_command([*command, "--figure_images=-1"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --figure_images must be")
    proc = run_command([*command, "--table=1", "--kd_methods=pixel"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --kd_methods ")
    assert not workdir.exists()

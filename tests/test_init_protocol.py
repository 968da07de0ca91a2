"""The paper's 'Initialization' protocol with a stand-in for ImageNet, and the equal-budget control:
the stand-in's domain (synthetic_rgbd/pretrain), its command (experiments.fidelity
.standin_backbone) and the rows reproduce adds with --init_protocol=standin / --equal_budget."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from drd_jax import config as config_lib
from drd_jax import pretrained
from experiments import protocols, reproduce, seed_table
from experiments.configs import synthetic
from experiments.fidelity import standin_backbone
from tfds_builders.synthetic_rgbd import Builder, pretrain_scenes, scenes

pytestmark = pytest.mark.usefixtures("fast_compile")


def rows(table, **kw):
    return protocols.table_rows(table, **{"alpha": 8.3, "beta": 0.9, **kw})


# -- the stand-in's domain -----------------------------------------------------------------------


def test_the_pretrain_domain_shares_no_class_or_colour_with_the_target():
    assert not set(pretrain_scenes.CLASS_NAMES) & set(scenes.CLASS_NAMES)
    assert pretrain_scenes.CLASS_NAMES[pretrain_scenes.BACKDROP - 1] == "backdrop"
    assert pretrain_scenes.NUM_CLASSES == len(pretrain_scenes.CLASS_NAMES) == 6
    # Every palette colour is far from every target colour (RGB, 0..255).
    distance = np.linalg.norm(pretrain_scenes.PALETTE[:, None] - scenes.PALETTE[None], axis=-1)
    assert distance.min() >= pretrain_scenes.MIN_PALETTE_DISTANCE >= 60.0
    # Scenes hold the pretrain classes only (backdrop and shapes; no void, no target label).
    labels = set()
    for index in range(4):
        ex = pretrain_scenes.make_example(1, "train", index, 48, 64)
        assert ex["image"].shape == (48, 64, 3) and ex["image"].dtype == np.uint8
        assert ex["depth"].shape == (48, 64) and ex["depth"].min() > 0.5
        labels |= set(np.unique(ex["label"]).tolist())
    assert pretrain_scenes.BACKDROP in labels and len(labels) > 2
    assert labels <= set(range(1, pretrain_scenes.NUM_CLASSES + 1))
    same = pretrain_scenes.make_example(1, "train", 2, 48, 64)
    assert (
        same["image"].tobytes()
        == pretrain_scenes.make_example(1, "train", 2, 48, 64)["image"].tobytes()
    )


def test_no_shape_is_a_target_silhouette():
    """The target's silhouettes are convex (rectangle: box, pole; ellipse: ball; triangle:
    cone); every pretrain shape is not: the midpoint of two of its pixels can lie outside it."""
    yy, xx = np.mgrid[-20:21, -20:21].astype(np.float32)
    rng = np.random.default_rng(0)
    for cls in pretrain_scenes.SHAPE_CLASSES:
        mask = pretrain_scenes.shape_mask(rng, cls, xx, yy, 16.0)
        assert 0.05 < mask.mean() < 0.6, cls
        points = np.argwhere(mask)
        pairs = rng.integers(len(points), size=(2000, 2))
        middle = (points[pairs[:, 0]] + points[pairs[:, 1]]) // 2
        assert not mask[middle[:, 0], middle[:, 1]].all(), pretrain_scenes.CLASS_NAMES[cls - 1]
    with pytest.raises(ValueError, match="no shape"):
        pretrain_scenes.shape_mask(rng, pretrain_scenes.BACKDROP, xx, yy, 16.0)


def test_the_pretrain_configs_are_tabletop_and_the_others_unchanged(tmp_path):
    configs = Builder.builder_configs
    for name in ("pretrain", "pretrain_tiny"):
        assert configs[name].domain == "tabletop"
        assert configs[name].class_names == pretrain_scenes.CLASS_NAMES
    assert (configs["pretrain"].height, configs["pretrain"].width) == (120, 160)
    for name in ("default", "uncalibrated", "tiny", "calib_a", "calib_f"):
        assert configs[name].domain == "room" and configs[name].class_names == scenes.CLASS_NAMES
    builder = Builder(config="pretrain_tiny", data_dir=str(tmp_path))
    builder.download_and_prepare(file_format="array_record")
    assert builder.info.metadata["class_names"] == list(pretrain_scenes.CLASS_NAMES)
    source = builder.as_data_source(split="train")
    expected = pretrain_scenes.make_example(1, "train", 3, 48, 64)
    for key in ("image", "depth", "label"):
        assert source[3][key].tobytes() == expected[key].tobytes()


# -- the stand-in's config -----------------------------------------------------------------------


def test_one_standin_serves_every_seed_and_budget_of_a_network():
    demo = synthetic.get_config("demo")
    long = synthetic.get_config("demo")
    long.update(num_train_steps=1920, eval_every_steps=480, checkpoint_every_steps=480, seed=2)
    wider = synthetic.get_config("demo")
    wider.width = 0.25
    path = standin_backbone.weights_path(standin_backbone.standin_config(demo), "/x")
    assert path == standin_backbone.weights_path(standin_backbone.standin_config(long), "/x")
    assert path != standin_backbone.weights_path(standin_backbone.standin_config(wider), "/x")
    assert path.name.startswith("standin_vgg16_") and path.suffix == ".npz"
    config = standin_backbone.standin_config(long)
    config_lib.validate_config(config)
    assert (config.dataset, config.mode, config.init, config.seed) == (
        "synthetic_rgbd/pretrain",
        "baseline",
        "scratch",
        0,
    )
    assert config.num_train_steps == 1920 == 4 * demo.num_train_steps  # the long budget
    assert (config.width, config.batch_size, config.learning_rate) == (0.125, 8, 1e-3)
    tiny = standin_backbone.standin_config(synthetic.get_config("tiny"))
    assert tiny.dataset == "synthetic_rgbd/pretrain_tiny" and tiny.width == 1 / 16
    for dataset in ("nyuv2", "synthetic_rgbd/pretrain"):
        with pytest.raises(ValueError, match="stand-in backbone is for synthetic_rgbd"):
            standin_backbone.recipe_for(dataset)


# -- the rows ------------------------------------------------------------------------------------


def test_without_the_flags_the_tables_and_their_runs_are_unchanged():
    assert [(r.label, r.run.key, dict(r.run.overrides), r.group) for r in rows("1")] == [
        ("BL", "bl", {"mode": "baseline", "init": "scratch"}, "No Initialization"),
        ("TN", "tn", {"mode": "teacher", "init": "scratch"}, "No Initialization"),
        (
            "SN",
            "sn",
            {"mode": "student", "init": "teacher", "vtce_weight": 1.0},
            "No Initialization",
        ),
    ]
    assert [(r.label, r.run.key, r.group) for r in rows("3")] == [
        ("BL", "bl", ""),
        ("BL+VTCE", "bl_vtce", ""),
        ("BL+PS", "bl_ps", ""),
        ("BL+PS+VTCE", "sn", ""),
    ]
    assert all(r.paper_label == "" for t in protocols.TABLES for r in rows(t, imagenet=True))


def test_the_standin_rows_start_where_the_paper_protocol_says():
    path = "/data/standin/standin_vgg16_abc.npz"
    t1 = rows("1", standin=path)
    t3 = rows("3", standin=path, equal_budget=True, num_train_steps=480)
    assert [r.label for r in t1] == [
        "BL",
        "TN",
        "SN",
        "BL (stand-in)",
        "TN (stand-in)",
        "SN (stand-in)",
    ]
    assert [r.label for r in t3] == [
        "BL",
        "BL+VTCE",
        "BL+PS",
        "BL+PS+VTCE",
        "BL (TN+SN steps)",
        "BL (stand-in)",
        "BL+VTCE (stand-in)",
        "BL+PS (stand-in)",
        "BL+PS+VTCE (stand-in)",
        "BL (TN+SN steps, stand-in)",
    ]
    runs = {r.run.key: r.run for r in t1 + t3}
    p = {"pretrained_path": path}
    assert runs["bl_standin"].overrides == {"mode": "baseline", "init": "imagenet", **p}
    assert runs["tn_standin"].overrides == {"mode": "teacher", "init": "imagenet", **p}
    assert runs["sn_standin"].overrides == {
        "mode": "student",
        "init": "teacher",
        "vtce_weight": 1.0,
        **p,
    }
    assert runs["bl_vtce_standin"].overrides == {
        "mode": "student",
        "init": "imagenet",
        "vtce_weight": 1.0,
        **p,
    }
    assert runs["bl_ps_standin"].overrides == {
        "mode": "student",
        "init": "teacher",
        "vtce_weight": 0.0,
        **p,
    }
    for key in ("sn_standin", "bl_vtce_standin", "bl_ps_standin"):
        assert runs[key].teacher == "tn_standin" and runs[key].teacher_run == runs["tn_standin"]
    # The 'No Initialization' runs are the same runs as without the flag.
    for key in ("bl", "tn", "sn", "bl_vtce", "bl_ps"):
        assert "pretrained_path" not in runs[key].overrides
        assert runs[key] == {r.run.key: r.run for r in rows("1") + rows("3")}[key]
    by_label = {r.label: r for r in t1 + t3}
    assert by_label["TN (stand-in)"].paper_label == "TN (ImageNet)"
    assert by_label["SN (stand-in)"].group == protocols.STANDIN_GROUP
    order = [r.key for r in protocols.runs_in_order(t1 + t3)]
    assert order.index("tn_standin") < order.index("sn_standin")
    assert len(order) == len(set(order)) == 12


def test_the_equal_budget_bl_trains_for_the_teachers_steps_plus_the_students(tmp_path):
    base = synthetic.get_config("demo")
    t3 = rows("3", standin="/x.npz", equal_budget=True, num_train_steps=base.num_train_steps)
    table_runs = {r.run.key: r.run for r in t3}
    steps = {
        key: reproduce.run_config(base, run, tmp_path).num_train_steps
        for key, run in table_runs.items()
    }
    for suffix in ("", protocols.STANDIN_SUFFIX):
        teacher = table_runs[f"sn{suffix}"].teacher_run
        teacher_steps = reproduce.run_config(base, teacher, tmp_path).num_train_steps
        equal = steps[f"{protocols.EQUAL_BUDGET_KEY}{suffix}"]
        assert equal == teacher_steps + steps[f"sn{suffix}"] == 960
    config = reproduce.run_config(base, table_runs[protocols.EQUAL_BUDGET_KEY], tmp_path)
    assert (config.mode, config.init, config.pretrained_path) == ("baseline", "scratch", "")
    config = reproduce.run_config(base, table_runs["bl_equal_steps_standin"], tmp_path)
    assert (config.init, config.pretrained_path) == ("imagenet", "/x.npz")
    with pytest.raises(ValueError, match="num_train_steps"):
        rows("3", equal_budget=True)


def test_the_flags_are_refused_where_they_would_change_nothing():
    with pytest.raises(ValueError, match="--init_protocol=standin .*--table=4"):
        reproduce.check_options(["4"], figure_images=0, kd_methods=None, init_protocol="standin")
    with pytest.raises(ValueError, match="--equal_budget .*--table=1"):
        reproduce.check_options(["1"], figure_images=0, kd_methods=None, equal_budget=True)
    with pytest.raises(ValueError, match="--init_protocol must be"):
        reproduce.check_options(["1"], figure_images=0, kd_methods=None, init_protocol="imagenet")
    config = synthetic.get_config("demo")
    config.pretrained_path = "/weights/vgg16.h5"
    with pytest.raises(ValueError, match="stands in for ImageNet weights"):
        reproduce.check_standin_base(config)
    config = synthetic.get_config("demo")
    config.dataset = "nyuv2"
    with pytest.raises(ValueError, match="use ImageNet VGG16 weights"):
        reproduce.check_standin_base(config)


def test_the_verdicts_read_each_protocol_under_its_own_rows():
    def entry(key, miou):
        return {"row": key, "input": "RGB", "run": key, "ours": {"mean_iou": miou}}

    keys = {"bl": 40.0, "tn": 70.0, "sn": 50.0, "bl_ps": 54.0, "bl_equal_steps": 60.0}
    body = {
        "tables": {
            "1": [entry("bl", 40.0), entry("bl_imagenet", 1.0), entry("bl_standin", 41.0)],
            "3": [entry(k, v) for k, v in keys.items()]
            + [entry(f"{k}_standin", v + 1.0) for k, v in keys.items()],
        },
        "ps_starting_point": {"mean_iou": 14.0},
        "ps_starting_point_standin": {"mean_iou": 20.0},
    }
    standin = protocols.protocol_view(body, "standin")
    assert [e["run"] for e in standin["tables"]["1"]] == ["bl"]
    assert standin["tables"]["1"][0]["ours"]["mean_iou"] == 41.0
    assert standin["ps_starting_point"] == {"mean_iou": 20.0}
    scratch = protocols.protocol_view(body, "scratch")
    assert [e["run"] for e in scratch["tables"]["1"]] == ["bl"]  # no ImageNet row
    assert scratch["ps_starting_point"] == {"mean_iou": 14.0}
    lines = reproduce.equal_budget_lines(body)
    assert (
        "Equal budget ('No Initialization'): BL trained for TN's + SN's steps reaches 60.0 "
        in (lines[1])
    )
    assert lines[1].endswith("BL+PS 54.0 (-6.0), BL+PS+VTCE 50.0 (-10.0).")
    assert lines[3].startswith("Equal budget (stand-in): BL trained for TN's + SN's steps")
    assert "reaches 61.0 mIoU; BL+PS 55.0 (-6.0)" in lines[3]
    # The paper's target, read under the stand-in rows (SN − BL = 10 against 15).
    (target,) = [line for line in seed_table.paper_target([standin]) if line]
    assert target.startswith("Target (mean over 1 seed(s)): SN − BL = 10.0 against 0.5·(TN")
    with pytest.raises(ValueError, match="protocol"):
        protocols.protocol_view(body, "imagenet")


def test_the_seed_table_summarises_both_protocols_over_seeds():
    def entry(key, miou):
        ours = {"mean_iou": miou, "mean_pixel_accuracy": miou + 10.0}
        return {"row": key, "input": "RGB", "run": key, "ours": ours}

    def body(seed, shift):
        keys = {"bl": 40.0, "tn": 70.0, "sn": 50.0, "bl_ps": 54.0, "bl_equal_steps": 60.0}
        keys = {k: v + shift for k, v in keys.items()}
        standin = {f"{k}_standin": v + 2.0 + seed for k, v in keys.items()}
        return {
            "config": {"seed": seed},
            "tables": {"3": [entry(k, v) for k, v in {**keys, **standin}.items()]},
            "standin": {"path": "/x/standin_vgg16_0.npz"},
            "ps_starting_point": {"mean_iou": 14.0, "mean_pixel_accuracy": 30.0},
            "ps_starting_point_standin": {"mean_iou": 20.0 + seed, "mean_pixel_accuracy": 40.0},
        }

    results = [body(0, 0.0), body(1, 1.0), body(2, 2.0)]
    lines = seed_table.standin_summary(results)
    assert "under the stand-in (TN (stand-in)'s parameters, plain convs, RGB): mIoU 21.0 ± 1.0" in (
        "".join(lines)
    )
    # BL (stand-in) − BL per seed: +2, +3, +4 (the stand-in rows are 2 + seed above).
    (criterion,) = [line for line in lines if "criterion 3" in line]
    assert criterion.endswith("+3.0 (+2.0, +3.0, +4.0): met.")
    (target,) = [line for line in lines if line.startswith("Target")]
    assert target.startswith("Target, 'Initialization' with the stand-in (mean over 3 seed(s))")
    equal = seed_table.equal_budget_summary(results)
    assert [line.split(":")[0] for line in equal if line] == [
        "Equal budget ('No Initialization')",
        "Equal budget (stand-in)",
    ]
    assert "steps 61.0 ± 1.0 mIoU; BL+PS − it -6.0 ± 0.0, BL+PS+VTCE − it -10.0 ± 0.0." in equal[1]
    assert seed_table.standin_summary([{"tables": {}}]) == []  # no stand-in rows, no summary
    assert seed_table.seed_table(results, ["a", "b", "c"]).count("Equal budget") == 2


# -- the command and reproduce, end to end (tiny) ------------------------------------------------


@pytest.fixture(scope="module")
def standin_data(tmp_path_factory):
    """A data dir of this module's own (the stand-in is cached in it) and the stand-in that
    ``python -m experiments.fidelity.standin_backbone`` writes there for the tiny config."""
    from helpers import TINY_CONFIG, run_command

    data_dir = tmp_path_factory.mktemp("standin_data")
    output = data_dir / reproduce.STANDIN_DIR
    command = [
        sys.executable,
        "-m",
        "experiments.fidelity.standin_backbone",
        TINY_CONFIG,
        f"--config.data_dir={data_dir}",
        f"--output={output}",
    ]
    proc = run_command(command, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (npz,) = output.glob("standin_vgg16_*.npz")
    assert f"stand-in backbone {npz}: BL trunk after 4 steps on synthetic_rgbd/pretrain_tiny" in (
        proc.stdout
    )
    return data_dir, npz


def test_the_command_writes_the_trunk_as_vgg16_weights(standin_data):
    data_dir, npz = standin_data
    base = synthetic.get_config("tiny")
    base.data_dir = str(data_dir)
    config = standin_backbone.standin_config(base)
    assert npz == standin_backbone.weights_path(config, npz.parent)
    layers = pretrained.load_vgg16_params(npz)
    assert list(layers) == list(pretrained.VGG16_CONV_NAMES)  # the trunk only, as ImageNet
    pretrained.check_vgg16_file(npz, width=base.width)
    record = json.loads(npz.with_suffix(".json").read_text())
    assert record["dataset"] == "synthetic_rgbd/pretrain_tiny" and record["num_train_steps"] == 4
    assert record["class_names"] == list(pretrain_scenes.CLASS_NAMES)
    assert record["config_fingerprint"] == config_lib.fingerprint(config)
    assert set(record["metrics"]["per_class_iou"]) == set(pretrain_scenes.CLASS_NAMES)
    # The weights are the stand-in run's last params.
    from drd_jax import runs

    run = runs.load_run(npz.with_suffix(""), checkpoint="latest")
    assert run.step == 4
    for name in pretrained.VGG16_CONV_NAMES:
        np.testing.assert_array_equal(layers[name]["kernel"], run.params[name]["kernel"])
    # A second call reuses the file.
    before = npz.read_bytes()
    again = standin_backbone.build(base, npz.parent)
    assert again["reused"] and again["path"] == str(npz) and npz.read_bytes() == before


def test_init_imagenet_with_the_standin_starts_from_its_trunk(standin_data):
    from drd_jax import state

    data_dir, npz = standin_data
    config = synthetic.get_config("tiny")
    config.update(
        data_dir=str(data_dir), mode="baseline", init="imagenet", pretrained_path=str(npz)
    )
    config_lib.validate_config(config)
    num_classes = len(scenes.CLASS_NAMES)
    rng = jax.random.PRNGKey(0)
    loaded = state.create_train_state(config, rng, num_classes=num_classes).params
    config.update(init="scratch", pretrained_path="")
    scratch = state.create_train_state(config, rng, num_classes=num_classes).params
    layers = pretrained.load_vgg16_params(npz)
    for name in pretrained.VGG16_CONV_NAMES:
        np.testing.assert_array_equal(np.asarray(loaded[name]["kernel"]), layers[name]["kernel"])
        assert not np.array_equal(np.asarray(scratch[name]["kernel"]), layers[name]["kernel"])
    for name in ("fc6", "fc7", "fc8"):  # as with ImageNet weights: not in the file
        np.testing.assert_array_equal(np.asarray(loaded[name]["kernel"]), scratch[name]["kernel"])


def test_reproduce_adds_the_initialization_half_of_table1(standin_data, tmp_path):
    data_dir, npz = standin_data
    config = synthetic.get_config("tiny")
    config.data_dir = str(data_dir)
    workdir = tmp_path / "experiment"
    summary = reproduce.reproduce(config, workdir, ["1"], figure_images=0, init_protocol="standin")
    entries = {e["row"]: e for e in summary["tables"]["1"]}
    assert list(entries) == [
        "BL",
        "TN",
        "SN",
        "BL (stand-in)",
        "TN (stand-in)",
        "SN (stand-in)",
    ]
    assert summary["standin"]["reused"] and summary["standin"]["path"] == str(npz)
    for key, init in (("bl", "scratch"), ("tn", "scratch"), ("bl_standin", "imagenet")):
        recorded = json.loads((workdir / "runs" / key / "config.json").read_text())["config"]
        assert recorded["init"] == init
        assert recorded["pretrained_path"] == ("" if init == "scratch" else str(npz))
    sn = json.loads((workdir / "runs" / "sn_standin" / "config.json").read_text())["config"]
    assert sn["init"] == "teacher"
    assert pathlib.Path(sn["teacher_workdir"]) == workdir / "runs" / "tn_standin"
    assert entries["TN (stand-in)"]["paper"]["NYUv2"]["mean_iou"] == 39.1  # the ImageNet row's
    assert entries["TN (stand-in)"]["init"] == "imagenet"
    start = summary["ps_starting_point_standin"]
    assert set(start["per_class_iou"]) == set(scenes.CLASS_NAMES)
    md = (workdir / "results.md").read_text()
    assert "| TN (stand-in) | RGB-D |" in md and "| ps_start_standin |" in md
    assert f"start from `{npz.name}`" in md
    body = json.loads((workdir / "results.json").read_text())
    assert body["standin"]["dataset"] == "synthetic_rgbd/pretrain_tiny"
    assert "standin" in body["seconds"]

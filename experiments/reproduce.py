r"""Reproduce the paper's tables: train the runs a table needs, then put ours beside the paper's.

    python -m experiments.reproduce --config=experiments/configs/nyuv2.py --workdir=/runs/nyu \
        --table=1
    python -m experiments.reproduce --config=experiments/configs/synthetic.py:demo \
        --workdir=results/demo --table=1,3          # what `make demo` runs
    python -m experiments.reproduce --config=... --workdir=... --table=4 --config.width=0.5
    python -m experiments.reproduce --config=experiments/configs/synthetic.py:demo \
        --workdir=results/demo --table=kd           # the other distillation methods
    python -m experiments.reproduce --config=experiments/configs/synthetic.py:demo \
        --workdir=results/demo --table=1,3 --init_protocol=standin   # + the 'Initialization' half

``--table``: ``1`` (BL / TN / SN; with ``--config.pretrained_path=<VGG16 weights>`` also the
ImageNet-initialised rows), ``3`` (BL, BL+VTCE, BL+PS, BL+PS+VTCE), ``4`` (α and β sweeps),
``kd`` (the seed papers' distillation methods next to VTCE: pixel-wise, pair-wise, holistic and
all three (SKD), knowledge adaptation (KA: adaptation + affinity) and affinity alone, each with
parameter sharing off and on, on the same teacher), or a comma-separated list. The runs (see
``experiments/protocols.py``) are trained one after another in ``<workdir>/runs/<key>/`` with
``drd_jax.train.train_and_evaluate``, teachers first; rows that are the same experiment share one
run. A run whose ``final_metrics.json`` matches its config is reused,
an interrupted one resumes, so rerunning the same command after a crash finishes the job.
The base config's own ``mode``/``init``/``teacher_workdir`` are replaced per run; ``--help``
with a ``--config`` lists every field with its value there, its meaning and allowed values.

``--init_protocol=standin`` (synthetic_rgbd only) adds the paper's 'Initialization' protocol
with a stand-in for ImageNet (FIDELITY.md, "The 'Initialization' protocol"): it first builds, or
reuses, the stand-in backbone in ``<data_dir>/standin/``
(``experiments.fidelity.standin_backbone``: a BL trunk trained on RGB alone on
``synthetic_rgbd/pretrain``, another domain), then Table 1 adds BL, TN and SN (stand-in) and
Table 3 BL, BL+VTCE, BL+PS and BL+PS+VTCE (stand-in): BL, TN and BL+VTCE start from the stand-in,
SN and BL+PS from TN (stand-in); their run keys end in ``_standin``. It also turns on
``--equal_budget``: Table 3's ``BL (TN+SN steps)``, BL trained for the teacher's steps plus the
student's (2 × ``num_train_steps``), under each protocol. Without the flags nothing changes.

Writes, atomically, into ``<workdir>``:

* ``results.json``: per table, one entry per row (mPA, mIoU, pixel accuracy, per-class IoU, the
  paper's figures for NYUv2 / SUN RGB-D where the paper has that row, the run's key, wall time);
* ``results.md``: the same as Markdown tables (printed at the end), with every run's test mIoU at
  each of its evaluations (``config.eval_every_steps`` and the end; ``eval_curves`` in the JSON);
  with the stand-in, its record (``standin`` in the JSON), the PS start from TN (stand-in)
  (``ps_starting_point_standin``) and the target verdict under that protocol too;
* ``fig4.png``: Table 1's runs on the first ``--figure_images`` test images (RGB, depth, GT, BL,
  TN, SN, legend; ``--figure_images=0``: no figure);
* ``curves.png``: training loss and test mIoU of every run.

A finished run is reused, checked against its final checkpoint (``runs.finished_run``); a student
is matched to its teacher by the teacher's params, not its path, so a moved or copied experiment
reuses every run. On a read-only ``<workdir>`` whose runs have all finished, the results are
printed and nothing is written.

``--multihost`` (with ``--coordinator_address``, ``--num_processes``, ``--process_id``, or
auto-detected, and ``--coordinator_timeout``; ``experiments/multihost.py``; ``--help`` lists
them): every process runs this command as one job on shared storage. Process 0 builds the
dataset, each run is trained by all processes together, the PS-start evaluation is shared out,
and process 0 alone writes the results and figures.

Every run's config is checked before anything is built or trained: a bad flag or config value is
one line (``error: config.<field>: ...``) with exit status 2 (``experiments/cli.py``); so are
``--kd_methods`` without table kd (it would be ignored) and a negative ``--figure_images``.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from drd_jax.errors import ConfigError
from experiments import cli, multihost

FLAGS = flags.FLAGS

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FIGURE = "fig4.png"
CURVES = "curves.png"
METRICS = (("mean_pixel_accuracy", "mPA"), ("mean_iou", "mIoU"), ("pixel_accuracy", "PA"))
INIT_PROTOCOLS = ("none", "standin")
STANDIN_DIR = "standin"  # under the data dir: the stand-in backbones (standin_backbone)


def parse_tables(value: str) -> list[str]:
    """``'1,3'`` -> ``['1', '3']``; raises ``ValueError`` naming ``--table`` otherwise."""
    from experiments.protocols import TABLES

    tables = [t.strip() for t in str(value).split(",") if t.strip()]
    bad = [t for t in tables if t not in TABLES]
    if not tables or bad:
        raise ConfigError(f"--table: expected one or more of {', '.join(TABLES)}, got {value!r}")
    return list(dict.fromkeys(tables))


def parse_kd_methods(methods: list[str] | None) -> list[str] | None:
    """Checks ``--kd_methods`` (None = all); raises ``ValueError`` naming the flag."""
    from experiments.protocols import check_kd_methods

    if methods is None:
        return None
    try:
        return check_kd_methods(methods)
    except ValueError as e:
        raise ConfigError(f"--kd_methods: {e}") from e


def check_options(
    tables: list[str],
    *,
    figure_images: int,
    kd_methods,
    init_protocol: str = "none",
    equal_budget: bool = False,
) -> None:
    """``--figure_images`` is an int >= 0 (0 = no ``fig4.png``), ``--kd_methods`` is given only
    with table kd, ``--init_protocol=standin`` only with table 1 or 3 and ``--equal_budget`` only
    with table 3 (the tables they change); ``ValueError`` naming the flag otherwise."""
    if isinstance(figure_images, bool) or not isinstance(figure_images, int) or figure_images < 0:
        raise ConfigError(
            f"--figure_images must be an int >= 0 (0 = no {FIGURE}), got {figure_images!r}"
        )
    if kd_methods is not None and "kd" not in tables:
        raise ConfigError(
            f"--kd_methods chooses the rows of table kd only, but --table={','.join(tables)}; "
            "add kd to --table or drop --kd_methods"
        )
    if init_protocol not in INIT_PROTOCOLS:
        raise ConfigError(f"--init_protocol must be one of {INIT_PROTOCOLS}, got {init_protocol!r}")
    if init_protocol == "standin" and not {"1", "3"} & set(tables):
        raise ConfigError(
            f"--init_protocol=standin adds rows to tables 1 and 3 only, but "
            f"--table={','.join(tables)}; add 1 or 3 to --table or drop --init_protocol"
        )
    if equal_budget and "3" not in tables:
        raise ConfigError(
            f"--equal_budget adds a row to table 3 only, but --table={','.join(tables)}; add 3 "
            "to --table or drop --equal_budget"
        )


def check_standin_base(config) -> None:
    """``--init_protocol=standin`` needs a base config without ``pretrained_path`` (the stand-in
    replaces real ImageNet weights; both would be two 'Initialization' protocols at once) on
    synthetic_rgbd's room scenes (``standin_backbone.recipe_for``); ``ValueError`` otherwise."""
    from experiments.fidelity import standin_backbone

    if config.pretrained_path:
        raise ConfigError(
            "--init_protocol=standin stands in for ImageNet weights, but config.pretrained_path="
            f"{config.pretrained_path!r} gives real ones; drop one of them"
        )
    standin_backbone.recipe_for(config.dataset)


def validation_config(config, standin_path: str):
    """``config`` as :func:`drd_jax.config.validate_config` can check it before the stand-in
    ``standin_path`` exists: a run that would read it is checked as if from scratch (its file is
    checked once it is written)."""
    if config.init != "imagenet" or config.pretrained_path != standin_path:
        return config
    if pathlib.Path(standin_path).is_file():
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    config.init, config.pretrained_path = "scratch", ""
    return config


def run_config(base: ml_collections.ConfigDict, run, runs_dir: pathlib.Path):
    """The base config with ``run``'s overrides (and its teacher's workdir)."""
    config = ml_collections.ConfigDict(base.to_dict())
    for field, value in run.overrides.items():
        config[field] = value
    config.teacher_workdir = str(runs_dir / run.teacher) if run.teacher else ""
    return config


def train_or_reuse(config, workdir: pathlib.Path) -> tuple[dict, float, bool]:
    """``(final_metrics, seconds, reused)``; reuses a finished run with the same config
    (``runs.finished_run``: its final metrics, checked against its latest checkpoint)."""
    from drd_jax import runs, train

    done = runs.finished_run(workdir, config)
    if done is not None:
        logging.info("reusing %s", workdir)
        return done, 0.0, True
    start = time.perf_counter()
    result = train.train_and_evaluate(config, workdir)
    if "stopped_at_step" in result:
        raise ConfigError(
            f"{workdir} stopped at step {result['stopped_at_step']} (config.stop_after_steps); "
            "rerun without it to finish the tables"
        )
    return result, time.perf_counter() - start, False


def percent(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 100.0 * x


def per_class_percent(per_class: dict) -> dict[str, float | None]:
    """``{class: fraction}`` -> ``{class: %}`` (None stays None)."""
    return {k: percent(v) for k, v in per_class.items()}


def summarize(rows, results: dict, timing: dict) -> dict:
    """The ``results.json`` body for ``rows`` given each run's final metrics and timing
    (``paper``: the figures of the paper's row it stands for, ``row.paper_label``, e.g. the
    ImageNet rows for the stand-in's)."""
    from experiments.paper_results import paper_figures

    tables: dict[str, list] = {}
    for row in rows:
        m = results[row.run.key]
        tables.setdefault(row.table, []).append(
            {
                "row": row.label,
                "group": row.group,
                "input": row.run.input,
                "run": row.run.key,
                "mode": row.run.overrides["mode"],
                "init": row.run.overrides["init"],
                "ours": {k: percent(m.get(k)) for k, _ in METRICS},
                "per_class_iou": per_class_percent(m["per_class_iou"]),
                "paper": paper_figures(row.table, row.paper_label or row.label),
                "params_fingerprint": m["params_fingerprint"],
                "train_seconds": timing[row.run.key]["seconds"],
                "reused": timing[row.run.key]["reused"],
            }
        )
    return {"tables": tables, "runs": timing}


def eval_curves(run_dirs) -> dict[str, list[list[float]]]:
    """Test mIoU (%) at each evaluation of each run (``{key: [[step, miou], ...]}``), read from
    the runs' ``metrics.jsonl`` (``run_dirs``: key -> workdir)."""
    from drd_jax.metric_writers import read_jsonl

    curves = {}
    for key, workdir in run_dirs.items():
        records = read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")
        curves[key] = [
            [r["step"], percent(r["scalars"]["mean_iou"])] for r in records if r["split"] == "eval"
        ]
    return curves


def _cell(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def markdown(summary: dict, *, dataset: str, steps: int, width: float) -> str:
    """``results.md``: one Markdown table per paper table, ours beside the paper's."""
    from experiments import protocols
    from experiments.seed_table import paper_target, per_class_table

    out = [
        f"# drd-jax results: {dataset}",
        "",
        f"Ours: single-scale, full-resolution test split of `{dataset}`; {steps} training steps "
        f"per run, width {width:g}. Paper: the published figures (%), NYUv2 and SUN RGB-D, "
        "full-width DeepLab-VGG16; they are only comparable to ours on those datasets.",
    ]
    for table, entries in summary["tables"].items():
        paper_sets = sorted({d for e in entries for d in e["paper"]})
        head = ["row", "input", "mPA", "mIoU", "PA"]
        for d in paper_sets:
            head += [f"paper mPA ({d})", f"paper mIoU ({d})"]
        out += [
            "",
            f"## Table {table}" if table != "kd" else "## Distillation methods (table kd)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for e in entries:
            cells = [e["row"], e["input"]] + [_cell(e["ours"][k]) for k, _ in METRICS]
            for d in paper_sets:
                p = e["paper"].get(d, {})
                cells += [_cell(p.get("mean_pixel_accuracy")), _cell(p.get("mean_iou"))]
            out.append("| " + " | ".join(cells) + " |")
    if "ps_starting_point" in summary:
        start = summary["ps_starting_point"]
        out += [
            "",
            "Where parameter sharing starts (TN's parameters with plain convolutions, RGB only, "
            f"before any student training): mPA {_cell(start['mean_pixel_accuracy'])}, "
            f"mIoU {_cell(start['mean_iou'])}, PA {_cell(start['pixel_accuracy'])}.",
        ]
    out += standin_lines(summary)
    start_label = "PS start (TN's params, plain convs, RGB)"
    out += per_class_table([summary], heading="## Per-class IoU", start_label=start_label)
    start = summary.get("ps_starting_point_standin")
    if out[-1].startswith("| ") and start and "per_class_iou" in start:
        cells = " | ".join(_cell(v) for v in start["per_class_iou"].values())
        out.append(f"| ps_start_standin | PS start (TN (stand-in)'s params) | {cells} |")
    out += paper_target([summary])  # does the student keep the teacher's advantage?
    if "standin" in summary:  # and under the 'Initialization' protocol with the stand-in
        target = paper_target([protocols.protocol_view(summary, "standin")])
        out += [
            line.replace("Target (", "Target, 'Initialization' with the stand-in (", 1)
            for line in target
        ]
    out += equal_budget_lines(summary)
    curves = summary.get("eval_curves", {})
    steps = sorted({step for curve in curves.values() for step, _ in curve})
    if steps:
        out += ["", "## Test mIoU during training", ""]
        out += ["| run | " + " | ".join(f"step {s}" for s in steps) + " |"]
        out += ["|" + "---|" * (len(steps) + 1)]
        for key, curve in curves.items():
            at = dict((step, value) for step, value in curve)
            out.append(f"| {key} | " + " | ".join(_cell(at.get(s)) for s in steps) + " |")
    out += ["", "Run times (s; 0 = reused from an earlier invocation):", ""]
    out += [f"- `{k}`: {v['seconds']:.0f}" for k, v in summary["runs"].items()]
    return "\n".join(out) + "\n"


def standin_lines(summary: dict) -> list[str]:
    """What the stand-in rows start from, and where their parameter sharing starts."""
    record = summary.get("standin")
    if not record:
        return []
    m = record["metrics"]
    out = [
        "",
        "Rows '(stand-in)': the paper's 'Initialization' protocol with a stand-in for ImageNet. "
        f"BL, TN and BL+VTCE (stand-in) start from `{pathlib.Path(record['path']).name}`, the 13 "
        f"trunk convolutions of a BL trained on RGB alone for {record['num_train_steps']} steps "
        f"on `{record['dataset']}` (another domain; mIoU {_cell(m['mean_iou'])} on its own test "
        "split); SN and BL+PS (stand-in) start from TN (stand-in). The paper's figures beside "
        "Table 1's stand-in rows are its ImageNet rows.",
    ]
    start = summary.get("ps_starting_point_standin")
    if start:
        out += [
            "",
            "Where parameter sharing starts under it (TN (stand-in)'s parameters with plain convs, "
            f"RGB only): mPA {_cell(start['mean_pixel_accuracy'])}, mIoU "
            f"{_cell(start['mean_iou'])}, PA {_cell(start['pixel_accuracy'])}.",
        ]
    return out


def equal_budget_lines(summary: dict) -> list[str]:
    """BL+PS and SN against BL trained for TN's + SN's steps, under each protocol shown: what
    parameter sharing buys beyond the extra training."""
    from experiments import protocols
    from experiments.seed_table import runs_by_key

    out = []
    for protocol, name in (("scratch", "'No Initialization'"), ("standin", "stand-in")):
        runs = runs_by_key(protocols.protocol_view(summary, protocol))
        keys = (protocols.EQUAL_BUDGET_KEY, "bl_ps", "sn")
        miou = {k: runs[k]["ours"]["mean_iou"] for k in keys if k in runs}
        if len(miou) < len(keys) or None in miou.values():
            continue
        equal, ps, sn = (miou[k] for k in keys)
        out += [
            "",
            f"Equal budget ({name}): BL trained for TN's + SN's steps reaches {equal:.1f} mIoU; "
            f"BL+PS {ps:.1f} ({ps - equal:+.1f}), BL+PS+VTCE {sn:.1f} ({sn - equal:+.1f}).",
        ]
    return out


def ps_start(run, data_dir: str) -> dict:
    """Where parameter sharing starts: ``run``'s (a teacher's) params with plain convs on RGB,
    evaluated on its test split (mPA, mIoU, PA and per-class IoU in %; every process of a
    multi-process job evaluates its shard)."""
    from drd_jax import runs

    m = runs.evaluate_run(run, depth_aware=False, data_dir=data_dir)
    start = {k: percent(m[k]) for k, _ in METRICS}
    start["per_class_iou"] = per_class_percent(
        dict(zip(run.class_names, m["per_class_iou"], strict=True))
    )
    return start


def reproduce(
    config: ml_collections.ConfigDict,
    workdir,
    tables: list[str],
    *,
    figure_images: int = 4,
    kd_methods: list[str] | None = None,
    init_protocol: str = "none",
    equal_budget: bool = False,
) -> dict:
    """Trains (or reuses) every run of ``tables`` and writes the results; returns the summary.

    ``kd_methods``: table kd's methods (``protocols.KD_METHODS`` keys; default all; only with
    table kd). ``figure_images``: test images in ``fig4.png`` (Table 1 only; 0 = no figure).
    ``init_protocol='standin'``: also the 'Initialization' rows with the stand-in backbone
    (built or reused in ``<data_dir>/standin/`` first; implies ``equal_budget``).
    ``equal_budget``: Table 3's ``BL (TN+SN steps)`` under each protocol shown.
    Raises ``ValueError`` before anything is built or written for a bad option
    (:func:`check_options`, :func:`check_standin_base`) or a bad config value of any run of
    ``tables`` (``drd_jax.config.validate_config``, ``config.<field>: ...``).
    """
    import jax

    from drd_jax import config as config_lib
    from drd_jax import input_pipeline, runs
    from drd_jax.files import atomic_write_text
    from drd_jax.parallel import main_process_first, sync_processes
    from experiments import protocols

    check_options(
        tables,
        figure_images=figure_images,
        kd_methods=kd_methods,
        init_protocol=init_protocol,
        equal_budget=equal_budget,
    )
    workdir = pathlib.Path(workdir).expanduser().absolute()
    runs_dir = workdir / "runs"
    data_dir = config_lib.resolve_data_dir(config)
    standin_path, standin_dir = "", None
    if init_protocol == "standin":
        from experiments.fidelity import standin_backbone

        check_standin_base(config)
        equal_budget = True
        standin_dir = pathlib.Path(data_dir).absolute() / STANDIN_DIR
        standin_config = standin_backbone.standin_config(config)
        standin_path = str(standin_backbone.weights_path(standin_config, standin_dir))
    rows = [
        row
        for t in tables
        for row in protocols.table_rows(
            t,
            alpha=float(config.alpha),
            beta=float(config.beta),
            vtce_weight=float(config.vtce_weight),
            imagenet=bool(config.pretrained_path),
            kd_weights={k: float(config[k]) for k in protocols.UPSTREAM_KD_WEIGHTS},
            kd_methods=kd_methods,
            standin=standin_path,
            equal_budget=equal_budget,
            num_train_steps=int(config.num_train_steps),
        )
    ]
    started = time.perf_counter()
    order = protocols.runs_in_order(rows)
    for run in order:  # every run's config, before the (long) data preparation and training
        config_lib.validate_config(
            validation_config(run_config(config, run, runs_dir), standin_path)
        )
    if standin_path:
        config_lib.validate_config(standin_config)
    # Build the dataset first (synthetic_rgbd is generated here; real datasets must be built),
    # on one process of a multi-process job.
    main_process_first(
        lambda: input_pipeline.load_data_source(
            config.dataset, "train", data_dir=data_dir, prepare=True
        ),
        "prepare the dataset",
    )
    data_seconds = time.perf_counter() - started
    standin_record = None
    if standin_path:
        print("[stand-in] the stand-in backbone (built once per data dir)", flush=True)
        standin_record = standin_backbone.build(config, standin_dir)
        print(standin_backbone.describe(standin_record), flush=True)
        for run in order:  # now that the stand-in is there, its readers' configs in full
            config_lib.validate_config(run_config(config, run, runs_dir))
    results, timing = {}, {}
    for i, run in enumerate(order, 1):
        print(f"[{i}/{len(order)}] {run.key}: {dict(run.overrides)}", flush=True)
        cfg = run_config(config, run, runs_dir)
        results[run.key], seconds, reused = train_or_reuse(cfg, runs_dir / run.key)
        timing[run.key] = {"seconds": round(seconds, 1), "reused": reused}

    summary = summarize(rows, results, timing)
    summary.update(dataset=config.dataset, config=config.to_dict(), tables_requested=tables)
    summary["eval_curves"] = eval_curves({r.key: runs_dir / r.key for r in order})
    if standin_record is not None:
        summary["standin"] = {k: v for k, v in standin_record.items() if k != "config"}
    loaded: dict = {}  # run key -> load_run(...), each checkpoint restored once

    def run_params(key: str):
        if key not in loaded:
            loaded[key] = runs.load_run(runs_dir / key)
        return loaded[key]

    if any(r.run.key == "sn" for r in rows):
        # Where parameter sharing starts: the teacher's params with plain convs, RGB only
        # (evaluated by every process of a multi-process job, each on its shard).
        summary["ps_starting_point"] = ps_start(run_params("tn"), data_dir)
    standin_sn = f"sn{protocols.STANDIN_SUFFIX}"
    if any(r.run.key == standin_sn for r in rows):
        teacher = run_params(f"tn{protocols.STANDIN_SUFFIX}")
        summary["ps_starting_point_standin"] = ps_start(teacher, data_dir)
    # Table 1's figure: each prediction column names what that network sees at test time.
    # Every process restores the runs (as orbax expects of a job); process 0 draws them.
    shown = {}
    if "1" in tables and figure_images > 0:
        columns = {"BL (RGB)": "bl", "TN (RGB-D)": "tn", "SN (RGB)": "sn"}
        shown = {name: run_params(key) for name, key in columns.items()}
    summary["seconds"] = {
        "data": round(data_seconds, 1),
        "runs": round(sum(t["seconds"] for t in timing.values()), 1),
    }
    if standin_record is not None:
        summary["seconds"]["standin"] = standin_record.get("seconds", 0.0)
    if jax.process_index() == 0 and not _writable(workdir):
        # A read-only copy of a finished experiment: every run was reused; show, do not write.
        logging.warning(
            "%s is not writable: its runs were reused, the results are printed and not written",
            workdir,
        )
        print(
            markdown(
                summary, dataset=config.dataset, steps=config.num_train_steps, width=config.width
            )
        )
    elif jax.process_index() == 0:  # one process writes the results and figures
        run_dirs = {r.key: runs_dir / r.key for r in order}
        _write_results(summary, config, workdir, run_dirs, shown, figure_images, data_dir)
        summary["seconds"]["total"] = round(time.perf_counter() - started, 1)
        text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
        atomic_write_text(workdir / RESULTS_JSON, text)
    sync_processes("results written")
    return summary


def _writable(workdir: pathlib.Path) -> bool:
    """Whether the results can be written into ``workdir`` (``files.check_writable_dir``)."""
    from drd_jax.files import UnusableDirectoryError, check_writable_dir

    try:
        check_writable_dir(workdir, what="--workdir")
    except UnusableDirectoryError:
        return False
    return True


def _write_results(summary, config, workdir, run_dirs, shown, figure_images, data_dir) -> None:
    """Writes ``results.md`` (and prints it), ``curves.png`` and, given ``shown`` runs,
    ``fig4.png`` into ``workdir``, each atomically; adds ``summary["seconds"]["figures"]``."""
    from drd_jax import input_pipeline
    from drd_jax.files import atomic_write_text
    from experiments import figures

    figures_started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    md = markdown(summary, dataset=config.dataset, steps=config.num_train_steps, width=config.width)
    atomic_write_text(workdir / RESULTS_MD, md)
    figures.curves_figure(workdir / CURVES, run_dirs)
    if shown:
        source = input_pipeline.load_data_source(config.dataset, "test", data_dir=data_dir)
        figures.qualitative_figure(
            workdir / FIGURE,
            shown,
            source,
            num_images=figure_images,
            depth_title="Depth (TN's input)",
        )
    summary["seconds"]["figures"] = round(time.perf_counter() - figures_started, 1)
    print(md)


def define_flags() -> None:
    """The command line (defined only when run as a script: other scripts import this module)."""
    flags.DEFINE_string("workdir", None, "Directory of the experiment (runs/, results).")
    flags.DEFINE_string(
        "table",
        "1",
        "Table(s): 1, 3, 4 (the paper's), kd (other distillation methods), or e.g. 1,3.",
    )
    flags.DEFINE_list(
        "kd_methods",
        None,
        "Table kd: only these methods (of pixel, pair, holistic, SKD, KA, affinity); default all. "
        "Refused without kd in --table.",
    )
    flags.DEFINE_enum(
        "init_protocol",
        "none",
        list(INIT_PROTOCOLS),
        "none: the paper's 'No Initialization' rows (and, with config.pretrained_path, its "
        "ImageNet rows of Table 1); standin (synthetic_rgbd): also its 'Initialization' rows of "
        "Tables 1 and 3 from a stand-in for ImageNet, built or reused in <data_dir>/standin/ "
        "(experiments.fidelity.standin_backbone), and --equal_budget.",
    )
    flags.DEFINE_bool(
        "equal_budget",
        False,
        "Table 3: also BL (TN+SN steps), BL trained for the teacher's steps plus the student's "
        "(2 x config.num_train_steps), under each protocol shown. Refused without 3 in --table.",
    )
    flags.DEFINE_integer(
        "figure_images",
        4,
        "Test images shown in fig4.png (Table 1's figure); 0 = no fig4.png; must be >= 0.",
    )
    flags.DEFINE_string(
        "compilation_cache",
        "auto",
        "JAX persistent compilation cache: 'auto' = <workdir>/jax_cache, '' = off, or a directory. "
        "Runs that compile the same step (e.g. SN and BL+VTCE; BL and BL+PS) then compile it once.",
    )
    config_flags.DEFINE_config_file("config", None, "Base training config file.", lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])
    multihost.define_flags()
    flags.adopt_module_key_flags(multihost)  # --help lists the --multihost flags too


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        tables = parse_tables(FLAGS.table)
        parse_kd_methods(FLAGS.kd_methods)
        check_options(
            tables,
            figure_images=FLAGS.figure_images,
            kd_methods=FLAGS.kd_methods,
            init_protocol=FLAGS.init_protocol,
            equal_budget=FLAGS.equal_budget,
        )
        multihost.initialize()  # before anything touches JAX
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    cache = FLAGS.compilation_cache
    if cache:
        import jax

        if cache == "auto":
            cache = str(pathlib.Path(FLAGS.workdir).expanduser().absolute() / "jax_cache")
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    reproduce(
        FLAGS.config,
        FLAGS.workdir,
        tables,
        figure_images=FLAGS.figure_images,
        kd_methods=FLAGS.kd_methods,
        init_protocol=FLAGS.init_protocol,
        equal_budget=FLAGS.equal_budget,
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)

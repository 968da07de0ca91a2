r"""Reproduce the paper's tables: train the runs a table needs, then put ours beside the paper's.

    python -m experiments.reproduce --config=experiments/configs/nyuv2.py --workdir=/runs/nyu \
        --table=1
    python -m experiments.reproduce --config=experiments/configs/synthetic.py:demo \
        --workdir=results/demo --table=1,3          # what `make demo` runs
    python -m experiments.reproduce --config=... --workdir=... --table=4 --config.width=0.5
    python -m experiments.reproduce --config=experiments/configs/synthetic.py:demo \
        --workdir=results/demo --table=kd           # the other distillation methods

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

Writes, atomically, into ``<workdir>``:

* ``results.json``: per table, one entry per row (mPA, mIoU, pixel accuracy, per-class IoU, the
  paper's figures for NYUv2 / SUN RGB-D where the paper has that row, the run's key, wall time);
* ``results.md``: the same as Markdown tables (printed at the end), with every run's test mIoU at
  each of its evaluations (``config.eval_every_steps`` and the end; ``eval_curves`` in the JSON);
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


def check_options(tables: list[str], *, figure_images: int, kd_methods) -> None:
    """``--figure_images`` is an int >= 0 (0 = no ``fig4.png``) and ``--kd_methods`` is given only
    with table kd (the only table it changes); ``ValueError`` naming the flag otherwise."""
    if isinstance(figure_images, bool) or not isinstance(figure_images, int) or figure_images < 0:
        raise ConfigError(
            f"--figure_images must be an int >= 0 (0 = no {FIGURE}), got {figure_images!r}"
        )
    if kd_methods is not None and "kd" not in tables:
        raise ConfigError(
            f"--kd_methods chooses the rows of table kd only, but --table={','.join(tables)}; "
            "add kd to --table or drop --kd_methods"
        )


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
    """The ``results.json`` body for ``rows`` given each run's final metrics and timing."""
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
                "paper": paper_figures(row.table, row.label),
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
    start_label = "PS start (TN's params, plain convs, RGB)"
    out += per_class_table([summary], heading="## Per-class IoU", start_label=start_label)
    out += paper_target([summary])  # does the student keep the teacher's advantage?
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


def reproduce(
    config: ml_collections.ConfigDict,
    workdir,
    tables: list[str],
    *,
    figure_images: int = 4,
    kd_methods: list[str] | None = None,
) -> dict:
    """Trains (or reuses) every run of ``tables`` and writes the results; returns the summary.

    ``kd_methods``: table kd's methods (``protocols.KD_METHODS`` keys; default all; only with
    table kd). ``figure_images``: test images in ``fig4.png`` (Table 1 only; 0 = no figure).
    Raises ``ValueError`` before anything is built or written for a bad option
    (:func:`check_options`) or a bad config value of any run of ``tables``
    (``drd_jax.config.validate_config``, ``config.<field>: ...``).
    """
    import jax

    from drd_jax import config as config_lib
    from drd_jax import input_pipeline, runs
    from drd_jax.files import atomic_write_text
    from drd_jax.parallel import main_process_first, sync_processes
    from experiments import protocols

    check_options(tables, figure_images=figure_images, kd_methods=kd_methods)
    workdir = pathlib.Path(workdir).expanduser().absolute()
    runs_dir = workdir / "runs"
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
        )
    ]
    started = time.perf_counter()
    order = protocols.runs_in_order(rows)
    for run in order:  # every run's config, before the (long) data preparation and training
        config_lib.validate_config(run_config(config, run, runs_dir))
    data_dir = config_lib.resolve_data_dir(config)
    # Build the dataset first (synthetic_rgbd is generated here; real datasets must be built),
    # on one process of a multi-process job.
    main_process_first(
        lambda: input_pipeline.load_data_source(
            config.dataset, "train", data_dir=data_dir, prepare=True
        ),
        "prepare the dataset",
    )
    data_seconds = time.perf_counter() - started
    results, timing = {}, {}
    for i, run in enumerate(order, 1):
        print(f"[{i}/{len(order)}] {run.key}: {dict(run.overrides)}", flush=True)
        cfg = run_config(config, run, runs_dir)
        results[run.key], seconds, reused = train_or_reuse(cfg, runs_dir / run.key)
        timing[run.key] = {"seconds": round(seconds, 1), "reused": reused}

    summary = summarize(rows, results, timing)
    summary.update(dataset=config.dataset, config=config.to_dict(), tables_requested=tables)
    summary["eval_curves"] = eval_curves({r.key: runs_dir / r.key for r in order})
    loaded: dict = {}  # run key -> load_run(...), each checkpoint restored once

    def run_params(key: str):
        if key not in loaded:
            loaded[key] = runs.load_run(runs_dir / key)
        return loaded[key]

    if any(r.run.key == "sn" for r in rows):
        # Where parameter sharing starts: the teacher's params with plain convs, RGB only
        # (evaluated by every process of a multi-process job, each on its shard).
        m = runs.evaluate_run(run_params("tn"), depth_aware=False, data_dir=data_dir)
        summary["ps_starting_point"] = {k: percent(m[k]) for k, _ in METRICS}
        per_class = dict(zip(run_params("tn").class_names, m["per_class_iou"], strict=True))
        summary["ps_starting_point"]["per_class_iou"] = per_class_percent(per_class)
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
        check_options(tables, figure_images=FLAGS.figure_images, kd_methods=FLAGS.kd_methods)
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
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)

r"""Mean ± sd over seeds of ``experiments.reproduce`` results: one table per paper table, and the
test mIoU during training.

    for s in 0 1 2; do
      python -m experiments.reproduce --config=experiments/configs/synthetic.py:demo \
          --workdir=/tmp/r800/seed$s --table=1,3 --config.seed=$s --config.num_train_steps=800 \
          --config.eval_every_steps=200
    done
    python -m experiments.seed_table /tmp/r800/seed0 /tmp/r800/seed1 /tmp/r800/seed2

Each argument is a reproduce workdir (its ``results.json``); they must hold the same tables and
rows. The sd is the sample standard deviation (n − 1); with one workdir only the values are shown.
Prints Markdown; ``--output=<file>`` also writes it (atomically).
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys

from absl import app, flags

from drd_jax.errors import CheckpointError, ConfigError, MissingFileError

FLAGS = flags.FLAGS

METRICS = (("mean_iou", "mIoU"), ("mean_pixel_accuracy", "mPA"))


def read_results(workdir: str | pathlib.Path) -> dict:
    """``<workdir>/results.json``, with an error naming the file when it is missing or broken."""
    path = pathlib.Path(workdir) / "results.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(
            f"{path}: not found; run experiments.reproduce with --workdir={workdir} first"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def mean_sd(values: list[float]) -> str:
    """``'24.6 ± 1.3'`` (sample sd), or the value alone for one seed; '–' for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def seed_table(results: list[dict], labels: list[str]) -> str:
    """The Markdown summary of several ``results.json`` bodies (one per seed)."""
    first = results[0]
    seeds = [r.get("config", {}).get("seed") for r in results]
    for label, body in zip(labels, results, strict=True):
        if body["tables"].keys() != first["tables"].keys():
            raise ConfigError(f"{label}: tables {list(body['tables'])} differ from {labels[0]}'s")
    out = [
        f"{len(results)} seed(s) {seeds}: mean ± sd (sample) over seeds.",
    ]
    for table, entries in first["tables"].items():
        out += ["", f"### Table {table}", "", "| row | input | mIoU | mPA | per seed (mIoU) |"]
        out += ["|---|---|---|---|---|"]
        for i, entry in enumerate(entries):
            rows = [body["tables"][table][i] for body in results]
            if any(r["row"] != entry["row"] for r in rows):
                raise ConfigError(f"table {table}: rows differ between the workdirs")
            cells = [mean_sd([r["ours"][k] for r in rows]) for k, _ in METRICS]
            per_seed = ", ".join(f"{r['ours']['mean_iou']:.1f}" for r in rows)
            out.append(f"| {entry['row']} | {entry['input']} | {' | '.join(cells)} | {per_seed} |")
    out += _ps_start_and_per_class(results)
    out += paper_target(results)
    out += standin_summary(results)
    out += equal_budget_summary(results)
    curves = [body.get("eval_curves", {}) for body in results]
    if curves[0]:
        steps = sorted({s for c in curves for curve in c.values() for s, _ in curve})
        out += ["", "### Test mIoU during training", ""]
        out += ["| run | " + " | ".join(f"step {s}" for s in steps) + " |"]
        out += ["|" + "---|" * (len(steps) + 1)]
        for key in curves[0]:
            at = [dict((s, v) for s, v in c.get(key, [])) for c in curves]
            out.append(f"| {key} | " + " | ".join(mean_sd([a.get(s) for a in at]) for s in steps))
            out[-1] += " |"
    return "\n".join(out) + "\n"


def runs_by_key(body: dict) -> dict[str, dict]:
    """Run key -> its first entry in a ``results.json`` body's tables (a run shared by rows
    appears once)."""
    runs: dict[str, dict] = {}
    for entries in body["tables"].values():
        for e in entries:
            runs.setdefault(e["run"], e)
    return runs


def _ps_start_and_per_class(results: list[dict]) -> list[str]:
    """Mean ± sd of the PS starting point and of every run's per-class IoU."""
    out: list[str] = []
    starts = [body.get("ps_starting_point") for body in results]
    if all(starts):
        cells = [mean_sd([s[k] for s in starts]) for k, _ in METRICS]
        out += ["", f"PS starting point (TN's parameters, plain convs, RGB): mIoU {cells[0]}, "]
        out[-1] += f"mPA {cells[1]}."
    return out + per_class_table(results)


def per_class_table(
    results: list[dict], *, heading: str = "### Per-class IoU", start_label: str = "PS start"
) -> list[str]:
    """Per-class IoU (mean ± sd over ``results``) of every distinct run, and of the PS starting
    point where recorded; [] for results written before per-class IoU was recorded."""
    runs = [runs_by_key(body) for body in results]
    if not all("per_class_iou" in e for r in runs for e in r.values()):
        return []
    rows = {key: [r[key]["per_class_iou"] for r in runs] for key in runs[0]}
    labels = {key: entry["row"] for key, entry in runs[0].items()}
    starts = [body.get("ps_starting_point") for body in results]
    if all(s and "per_class_iou" in s for s in starts):
        rows["ps_start"] = [s["per_class_iou"] for s in starts]
        labels["ps_start"] = start_label
    if not rows:
        return []
    classes = list(next(iter(rows.values()))[0])
    out = ["", heading, "", "| run | row | " + " | ".join(classes) + " |"]
    out += ["|" + "---|" * (len(classes) + 2)]
    for key, per_seed in rows.items():
        cells = " | ".join(mean_sd([iou.get(c) for iou in per_seed]) for c in classes)
        out.append(f"| {key} | {labels[key]} | {cells} |")
    return out


def paper_target(results: list[dict]) -> list[str]:
    """The target of FIDELITY.md on the seed means: SN − BL ≥ 0.5·(TN − BL) and BL < BL+PS ≤ SN."""
    runs = [runs_by_key(body) for body in results]
    need = ("bl", "tn", "sn", "bl_ps")
    if not all(k in runs[0] for k in need):
        return []
    mean = {k: statistics.mean(r[k]["ours"]["mean_iou"] for r in runs) for k in need}
    kept = mean["sn"] - mean["bl"]
    half_gain = 0.5 * (mean["tn"] - mean["bl"])
    order = mean["bl"] < mean["bl_ps"] <= mean["sn"]
    return [
        "",
        f"Target (mean over {len(results)} seed(s)): SN − BL = {kept:.1f} against "
        f"0.5·(TN − BL) = {half_gain:.1f}: "
        f"{'met' if kept >= half_gain else 'not met'}; BL < BL+PS ≤ BL+PS+VTCE "
        f"({mean['bl']:.1f} / {mean['bl_ps']:.1f} / {mean['sn']:.1f}): "
        f"{'holds' if order else 'does not hold'}.",
    ]


def _miou(body: dict, key: str) -> float | None:
    entry = runs_by_key(body).get(key)
    return None if entry is None else entry["ours"]["mean_iou"]


def standin_summary(results: list[dict]) -> list[str]:
    """Under the 'Initialization' protocol with the stand-in (``--init_protocol=standin``): the PS
    start, FIDELITY.md's criterion 3 for the stand-in (BL (stand-in) − BL > 0 as the mean of the
    per-seed differences) and the target verdict on the seed means; [] without stand-in rows."""
    from experiments import protocols

    if not all("standin" in body for body in results):
        return []
    views = [protocols.protocol_view(body, "standin") for body in results]
    out: list[str] = []
    starts = [view.get("ps_starting_point") for view in views]
    if all(starts):
        cells = [mean_sd([s[k] for s in starts]) for k, _ in METRICS]
        out += ["", "PS starting point under the stand-in (TN (stand-in)'s parameters, plain "]
        out[-1] += f"convs, RGB): mIoU {cells[0]}, mPA {cells[1]}."
    gains = [_miou(b, "bl" + protocols.STANDIN_SUFFIX) for b in results]
    scratch = [_miou(b, "bl") for b in results]
    if None not in gains and None not in scratch:
        diffs = [g - b for g, b in zip(gains, scratch, strict=True)]
        mean = statistics.mean(diffs)
        per_seed = ", ".join(f"{d:+.1f}" for d in diffs)
        out += [
            "",
            f"The stand-in's criterion 3, BL (stand-in) − BL > 0 (mean of the per-seed "
            f"differences): {mean:+.1f} ({per_seed}): {'met' if mean > 0 else 'not met'}.",
        ]
    label = "Target, 'Initialization' with the stand-in ("
    out += [line.replace("Target (", label, 1) for line in paper_target(views)]
    return out


def equal_budget_summary(results: list[dict]) -> list[str]:
    """BL+PS and SN against BL trained for TN's + SN's steps (mean ± sd over seeds of the
    differences), under each protocol the results hold."""
    from experiments import protocols

    out: list[str] = []
    for protocol, name in (("scratch", "'No Initialization'"), ("standin", "stand-in")):
        views = [protocols.protocol_view(body, protocol) for body in results]
        keys = (protocols.EQUAL_BUDGET_KEY, "bl_ps", "sn")
        values = {k: [_miou(v, k) for v in views] for k in keys}
        if any(None in vs for vs in values.values()):
            continue
        equal, ps, sn = (values[k] for k in keys)
        ps_gain = [a - b for a, b in zip(ps, equal, strict=True)]
        sn_gain = [a - b for a, b in zip(sn, equal, strict=True)]
        out += [
            "",
            f"Equal budget ({name}): BL trained for TN's + SN's steps {mean_sd(equal)} mIoU; "
            f"BL+PS − it {mean_sd(ps_gain)}, BL+PS+VTCE − it {mean_sd(sn_gain)}.",
        ]
    return out


def workdir_arguments(argv: list[str]) -> list[pathlib.Path]:
    """The positional arguments of a command line: reproduce workdirs (at least one)."""
    if len(argv) < 2:
        raise app.UsageError("give one or more experiments.reproduce workdirs")
    return [pathlib.Path(w).expanduser().absolute() for w in argv[1:]]


def print_and_write(md: str, output: str | None) -> None:
    """Prints ``md``; with ``output``, also writes it there (atomically)."""
    print(md)
    if output:
        from drd_jax.files import atomic_write_text

        atomic_write_text(pathlib.Path(output), md)


def main(argv):
    workdirs = workdir_arguments(argv)
    try:
        md = seed_table([read_results(w) for w in workdirs], [str(w) for w in argv[1:]])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_and_write(md, FLAGS.output)
    return 0


if __name__ == "__main__":
    flags.DEFINE_string("output", None, "Also write the Markdown here.")
    app.run(main)

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

FLAGS = flags.FLAGS

METRICS = (("mean_iou", "mIoU"), ("mean_pixel_accuracy", "mPA"))


def read_results(workdir: str | pathlib.Path) -> dict:
    """``<workdir>/results.json``, with an error naming the file when it is missing or broken."""
    path = pathlib.Path(workdir) / "results.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: not found; run experiments.reproduce with --workdir={workdir} first"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


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
            raise ValueError(f"{label}: tables {list(body['tables'])} differ from {labels[0]}'s")
    out = [
        f"{len(results)} seed(s) {seeds}: mean ± sd (sample) over seeds.",
    ]
    for table, entries in first["tables"].items():
        out += ["", f"### Table {table}", "", "| row | input | mIoU | mPA | per seed (mIoU) |"]
        out += ["|---|---|---|---|---|"]
        for i, entry in enumerate(entries):
            rows = [body["tables"][table][i] for body in results]
            if any(r["row"] != entry["row"] for r in rows):
                raise ValueError(f"table {table}: rows differ between the workdirs")
            cells = [mean_sd([r["ours"][k] for r in rows]) for k, _ in METRICS]
            per_seed = ", ".join(f"{r['ours']['mean_iou']:.1f}" for r in rows)
            out.append(f"| {entry['row']} | {entry['input']} | {' | '.join(cells)} | {per_seed} |")
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


def main(argv):
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("give one or more experiments.reproduce workdirs")
    try:
        md = seed_table([read_results(w) for w in workdirs], workdirs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(md)
    if FLAGS.output:
        from drd_jax.files import atomic_write_text

        atomic_write_text(pathlib.Path(FLAGS.output), md)
    return 0


if __name__ == "__main__":
    flags.DEFINE_string("output", None, "Also write the Markdown here.")
    app.run(main)

r"""More students on the teachers of finished ``experiments.reproduce`` runs: what moves SN.

    python -m experiments.fidelity.student_variants \
        /tmp/demo/seed0 /tmp/demo/seed1 /tmp/demo/seed2 \
        --variant='VTCE at T = 1:beta=0.0' \
        --variant='VTCE × 0.1:vtce_weight=0.1' \
        --variant='pixel KD instead of VTCE:vtce_weight=0.0;pixel_kd_weight=10.0'

Each positional argument is a reproduce workdir that holds Table 1 or 3 (its ``results.json`` and
``runs/tn``). For each workdir and each ``--variant`` (``label:field=value;field=value``), a
student is trained as the workdir's SN run is (the same base config and seed, parameter sharing
from that workdir's teacher ``runs/tn``, CE + VTCE) with the variant's config fields changed, in
``<workdir>/variants/<slug>/``; a finished run with the same config is reused. ``--scratch``
trains the variants from scratch instead (no parameter sharing: next to BL+VTCE).

Prints, and with ``--output`` writes, a Markdown table: BL, BL+PS, BL+VTCE and SN of the workdirs
for reference, then every variant; mIoU mean ± sd over the workdirs (the seeds), the difference to
BL+PS paired by seed (mean ± sd of the per-seed differences: the same teacher on both sides), per
seed, and per-class IoU.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import ml_collections
from absl import app, flags

from drd_jax.errors import CheckpointError, ConfigError

FLAGS = flags.FLAGS

REFERENCE_RUNS = (("bl", "BL"), ("bl_ps", "BL+PS"), ("bl_vtce", "BL+VTCE"), ("sn", "SN"))


def parse_variant(text: str) -> tuple[str, dict]:
    """``'label:beta=0.0;vtce_weight=0.5'`` -> ``('label', {'beta': 0.0, 'vtce_weight': 0.5})``."""
    from experiments.fidelity.calibrate_synthetic import parse_overrides

    label, sep, body = text.partition(":")
    items = [item.strip() for item in body.split(";") if item.strip()]
    if not sep or not label.strip() or not items:
        raise ConfigError(f"--variant: expected 'label:field=value[;field=value...]', got {text!r}")
    try:
        return label.strip(), parse_overrides(items)
    except ValueError as e:
        raise ConfigError(f"--variant {text!r}: {e}") from None


def slug(label: str) -> str:
    """A directory name for a variant label."""
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", label).strip("_") or "variant"


def student_config(
    results: dict, workdir: pathlib.Path, overrides: dict, *, scratch: bool = False
) -> ml_collections.ConfigDict:
    """The workdir's SN config (its base config, PS from ``runs/tn``) with ``overrides``."""
    from experiments.fidelity.calibrate_synthetic import apply_overrides

    config = ml_collections.ConfigDict(results["config"])
    config.mode = "student"
    config.init = "scratch" if scratch else "teacher"
    config.teacher_workdir = str(workdir / "runs" / "tn")
    return apply_overrides(config, overrides, flag="--variant")


def collect(workdirs: list[pathlib.Path], variants: list[tuple[str, dict]], *, scratch=False):
    """Trains (or reuses) every variant on every workdir; returns ``{label: [entry per seed]}``
    where an entry is ``{"mean_iou": %, "per_class_iou": {name: %}}``."""
    from experiments.reproduce import per_class_percent, percent, train_or_reuse
    from experiments.seed_table import read_results, runs_by_key

    rows: dict[str, list[dict]] = {}
    for workdir in workdirs:
        results = read_results(workdir)
        runs = runs_by_key(results)
        if not (workdir / "runs" / "tn").is_dir():
            raise CheckpointError(
                f"{workdir}: no teacher run (runs/tn); reproduce Table 1 or 3 there"
            )
        for key, label in REFERENCE_RUNS:
            if key in runs:
                entry = {"mean_iou": runs[key]["ours"]["mean_iou"]}
                entry["per_class_iou"] = runs[key].get("per_class_iou", {})
                rows.setdefault(label, []).append(entry)
        for label, overrides in variants:
            config = student_config(results, workdir, overrides, scratch=scratch)
            run_dir = workdir / "variants" / (("scratch_" if scratch else "") + slug(label))
            print(f"{run_dir}: {overrides}", flush=True)
            final, _, _ = train_or_reuse(config, run_dir)
            rows.setdefault(label, []).append(
                {
                    "mean_iou": percent(final["mean_iou"]),
                    "per_class_iou": per_class_percent(final["per_class_iou"]),
                }
            )
    return rows


def markdown(rows: dict[str, list[dict]], variants: list[tuple[str, dict]]) -> str:
    """Mean ± sd over seeds of every row, with each variant's config change."""
    from experiments.seed_table import mean_sd

    changes = dict(variants)
    classes = next(list(r[0]["per_class_iou"]) for r in rows.values() if r[0]["per_class_iou"])
    # Paired by seed: each row minus BL+PS of the same workdir (the same teacher).
    reference = [e["mean_iou"] for e in rows.get("BL+PS", [])]
    head = ["row", "change", "mIoU", "Δ to BL+PS (paired)", "per seed", *classes]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, entries in rows.items():
        change = ", ".join(f"{k}={v}" for k, v in changes.get(label, {}).items()) or "–"
        per_seed = ", ".join(f"{e['mean_iou']:.1f}" for e in entries)
        cells = [mean_sd([e["per_class_iou"].get(c) for e in entries]) for c in classes]
        miou = mean_sd([e["mean_iou"] for e in entries])
        delta = "–"
        if len(reference) == len(entries) and label != "BL+PS":
            delta = mean_sd([e["mean_iou"] - r for e, r in zip(entries, reference, strict=True)])
            delta = delta if delta.startswith("-") else "+" + delta
        out.append(
            f"| {label} | {change} | {miou} | {delta} | {per_seed} | " + " | ".join(cells) + " |"
        )
    return "\n".join(out) + "\n"


def main(argv):
    from experiments.seed_table import print_and_write, workdir_arguments

    workdirs = workdir_arguments(argv)
    try:
        variants = [parse_variant(v) for v in FLAGS.variant or []]
        rows = collect(workdirs, variants, scratch=FLAGS.scratch)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_and_write(markdown(rows, variants), FLAGS.output)
    if FLAGS.output:
        from drd_jax.files import atomic_write_text

        rows_json = json.dumps(rows, indent=1) + "\n"
        atomic_write_text(pathlib.Path(FLAGS.output).with_suffix(".json"), rows_json)
    return 0


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_multi_string("variant", None, "label:field=value[;field=value...] (repeatable).")
    flags.DEFINE_bool("scratch", False, "Train the variants without parameter sharing.")
    flags.DEFINE_string("output", None, "Also write the Markdown here (and the rows as .json).")


if __name__ == "__main__":
    from experiments import quiet_orbax

    define_flags()
    quiet_orbax.install()  # a tool's log: no orbax lines per save
    app.run(main)

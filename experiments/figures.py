"""Figures of `experiments.reproduce`: the paper's Fig. 4 (qualitative results) and curves.

* :func:`qualitative_figure`: one row per test image, columns RGB, depth, ground truth and the
  predictions of the given runs (BL, TN, SN in Fig. 4), with a class-colour legend underneath.
* :func:`curves_figure`: the training loss of every run against the step, and each run's
  evaluation mIoU points, from their ``metrics.jsonl`` files.

matplotlib (Agg backend) only; no display needed.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np

from drd_jax import input_pipeline
from drd_jax.errors import ConfigError
from drd_jax.files import atomic_write_bytes
from drd_jax.metric_writers import read_jsonl
from drd_jax.runs import RunCheckpoint
from drd_jax.visualize import class_palette, colorize_depth, colorize_labels

__all__ = ["curves_figure", "predict_labels", "qualitative_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: pathlib.Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def predict_labels(run: RunCheckpoint, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """0-based class ids ``(N, H, W)`` of an eval batch (depth used only by a teacher run)."""
    return run.predictor()(batch["image"], batch["depth"])


def qualitative_figure(
    path: str | os.PathLike,
    runs: Mapping[str, RunCheckpoint],
    test_source,
    *,
    num_images: int = 4,
    depth_title: str = "Depth",
) -> pathlib.Path:
    """Writes the Fig. 4 style PNG for the first ``num_images`` test images; returns its path.

    Args:
      path: the PNG to write (atomically).
      runs: column title -> a run read back with ``drd_jax.runs.load_run`` (e.g. BL, TN, SN).
      test_source: the test split's data source (``input_pipeline.load_data_source``).
      num_images: rows (the first test images), an int >= 1 (``ValueError`` otherwise).
      depth_title: the depth column's title (e.g. which runs see it).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ConfigError(f"num_images must be an int >= 1, got {num_images!r}")
    plt = _pyplot()
    first = next(iter(runs.values()))
    class_names = first.class_names
    palette = class_palette(len(class_names))
    ds = input_pipeline.create_eval_dataset(
        test_source,
        num_classes=len(class_names),
        batch_size=1,
        include_raw_image=True,
        num_threads=0,
    )
    n = min(num_images, len(ds))
    columns = ["RGB", depth_title, "GT", *runs]
    fig, axes = plt.subplots(
        n, len(columns), figsize=(1.9 * len(columns), 1.6 * n + 0.9), squeeze=False
    )
    for i in range(n):
        batch = ds[i]
        label = batch["label"][0]
        panels = [
            batch["raw_image"][0],
            colorize_depth(batch["depth"][0]),
            colorize_labels(label, palette),
        ]
        for run in runs.values():
            pred = predict_labels(run, batch)[0]
            pred = np.where(label == 255, 255, pred)  # void stays black, as in the GT
            panels.append(colorize_labels(pred, palette))
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=palette[k] / 255.0) for k in range(len(class_names))
    ]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="black"))
    fig.legend(
        handles,
        [*class_names, "void"],
        loc="lower center",
        ncol=min(len(handles), 7),
        fontsize=7,
        frameon=False,
    )
    fig.subplots_adjust(bottom=0.5 / (1.6 * n + 0.9), wspace=0.04, hspace=0.06)
    path = pathlib.Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def curves_figure(path: str | os.PathLike, run_dirs: Mapping[str, pathlib.Path]) -> pathlib.Path:
    """Training loss and eval mIoU of several runs (label -> workdir) in one PNG."""
    plt = _pyplot()
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, workdir in run_dirs.items():
        records = read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")
        train = [(r["step"], r["scalars"]["loss"]) for r in records if r["split"] == "train"]
        evals = [(r["step"], r["scalars"]["mean_iou"]) for r in records if r["split"] == "eval"]
        if train:
            (line,) = ax_loss.plot(*zip(*train, strict=True), label=label)
            if evals:
                steps, values = zip(*evals, strict=True)
                ax_miou.plot(
                    steps, 100 * np.asarray(values), "o-", color=line.get_color(), label=label
                )
    ax_loss.set(xlabel="step", ylabel="training loss (CE [+ VTCE])", title="loss")
    ax_miou.set(xlabel="step", ylabel="mIoU (%)", title="test mIoU")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(path)
    _save(fig, path)
    plt.close(fig)
    return path

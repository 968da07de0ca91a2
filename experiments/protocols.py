"""The runs behind the paper's tables, as config overrides of one base config.

Every table row is a :class:`Run`: a mode/init/loss setting applied to the base config (the dataset,
model width, schedule...). Rows that are the same experiment share one run: Table 1's SN is
Table 3's BL+PS+VTCE and Table 4's "SN β=0.9" (when the base config's β is 0.9), Table 1's TN is
"TN α=8.3". Runs are named by a short key (their directory under ``<workdir>/runs/``).

=================  =========  ========  =============  ====================================
row                mode       init      loss           teacher
=================  =========  ========  =============  ====================================
BL                 baseline   scratch   CE             -
TN                 teacher    scratch   CE (RGB-D)     -
SN = BL+PS+VTCE    student    teacher   CE + VTCE      TN (parameter sharing + distillation)
BL+VTCE            student    scratch   CE + VTCE      TN
BL+PS              student    teacher   CE             TN (parameter sharing only)
* (ImageNet)       as above   imagenet  as above       TN (ImageNet) for SN (ImageNet)
TN α=a             teacher    scratch   CE (RGB-D)     -, with config.alpha = a
SN β=b             student    teacher   CE + VTCE      TN, with config.beta = b
=================  =========  ========  =============  ====================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ALPHAS", "BETAS", "TABLES", "Row", "Run", "runs_in_order", "table_rows"]

TABLES = ("1", "3", "4")
ALPHAS = (0.1, 7.0, 8.3, 10.0, 15.0)  # paper Table 4
BETAS = (1.0, 0.9, 0.5, 0.3, 0.1)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: ``overrides`` of the base config; ``teacher`` is another run's key."""

    key: str
    overrides: Mapping[str, Any]
    teacher: str | None = None

    @property
    def input(self) -> str:
        return "RGB-D" if self.overrides["mode"] == "teacher" else "RGB"


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row: its label in the paper's table and the run that fills it."""

    table: str
    label: str
    run: Run
    group: str = ""  # e.g. Table 1's 'No Initialization' / 'Initialization'


def _number(x: float) -> str:
    return f"{x:g}"


def _runs(alpha: float, beta: float, vtce_weight: float) -> dict[str, Run]:
    vtce = float(vtce_weight) or 1.0  # the base config's VTCE weight (0 in a base would mean BL+PS)
    runs = [
        Run("bl", {"mode": "baseline", "init": "scratch"}),
        Run("tn", {"mode": "teacher", "init": "scratch"}),
        Run("sn", {"mode": "student", "init": "teacher", "vtce_weight": vtce}, "tn"),
        Run("bl_vtce", {"mode": "student", "init": "scratch", "vtce_weight": vtce}, "tn"),
        Run("bl_ps", {"mode": "student", "init": "teacher", "vtce_weight": 0.0}, "tn"),
        Run("bl_imagenet", {"mode": "baseline", "init": "imagenet"}),
        Run("tn_imagenet", {"mode": "teacher", "init": "imagenet"}),
        Run(
            "sn_imagenet",
            {"mode": "student", "init": "teacher", "vtce_weight": vtce},
            "tn_imagenet",
        ),
    ]
    for a in ALPHAS:
        if a != alpha:
            runs.append(
                Run(f"tn_alpha{_number(a)}", {"mode": "teacher", "init": "scratch", "alpha": a})
            )
    for b in BETAS:
        if b != beta:
            runs.append(
                Run(
                    f"sn_beta{_number(b)}",
                    {"mode": "student", "init": "teacher", "vtce_weight": vtce, "beta": b},
                    "tn",
                )
            )
    return {r.key: r for r in runs}


def table_rows(
    table: str, *, alpha: float, beta: float, vtce_weight: float = 1.0, imagenet: bool = False
) -> list[Row]:
    """The rows of paper table ``table`` ('1', '3' or '4') for a base config's α, β, VTCE weight.

    Table 1 has the ImageNet-initialised rows only with ``imagenet=True`` (VGG16 weights given).
    """
    runs = _runs(alpha, beta, vtce_weight)
    tn_alpha = {a: runs["tn" if a == alpha else f"tn_alpha{_number(a)}"] for a in ALPHAS}
    sn_beta = {b: runs["sn" if b == beta else f"sn_beta{_number(b)}"] for b in BETAS}
    if table == "1":
        rows = [
            Row("1", name, runs[key], "No Initialization")
            for name, key in (("BL", "bl"), ("TN", "tn"), ("SN", "sn"))
        ]
        if imagenet:
            rows += [
                Row("1", f"{name} (ImageNet)", runs[key], "Initialization")
                for name, key in (
                    ("BL", "bl_imagenet"),
                    ("TN", "tn_imagenet"),
                    ("SN", "sn_imagenet"),
                )
            ]
        return rows
    if table == "3":
        return [
            Row("3", name, runs[key])
            for name, key in (
                ("BL", "bl"),
                ("BL+VTCE", "bl_vtce"),
                ("BL+PS", "bl_ps"),
                ("BL+PS+VTCE", "sn"),
            )
        ]
    if table == "4":
        return [Row("4", f"TN α={_number(a)}", tn_alpha[a], "α (teacher)") for a in ALPHAS] + [
            Row("4", f"SN β={_number(b)}", sn_beta[b], "β (student)") for b in BETAS
        ]
    raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")


def runs_in_order(rows: Iterable[Row]) -> list[Run]:
    """The distinct runs of ``rows``, every teacher before its students (first-seen order)."""
    runs: dict[str, Run] = {}
    for row in rows:
        runs.setdefault(row.run.key, row.run)
    # Teachers are never students, so one pass suffices: runs without a teacher first.
    return [r for r in runs.values() if r.teacher is None] + [
        r for r in runs.values() if r.teacher is not None
    ]

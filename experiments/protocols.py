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
* (stand-in)       as above   imagenet  as above       TN (stand-in) for SN, BL+PS and
                                                       BL+VTCE (stand-in)
BL (TN+SN steps)   baseline   scratch   CE             -, for 2 × num_train_steps steps
TN α=a             teacher    scratch   CE (RGB-D)     -, with config.alpha = a
SN β=b             student    teacher   CE + VTCE      TN, with config.beta = b
BL+m, BL+PS+m      student    scratch,  CE + method m  TN (table 'kd': the other distillation
                              teacher                  methods; see KD_METHODS)
=================  =========  ========  =============  ====================================

The stand-in rows (``standin``: a VGG16 ``.npz`` of ``experiments.fidelity.standin_backbone``) are
the paper's 'Initialization' protocol with the stand-in for ImageNet: BL, TN and BL+VTCE start
from it (``init='imagenet'``), SN and BL+PS from their teacher TN (stand-in); every one of these
runs records the stand-in's ``pretrained_path``, and their keys end in :data:`STANDIN_SUFFIX`.
The equal-budget control ``BL (TN+SN steps)`` (``equal_budget``) trains BL for the teacher's
steps plus the student's (its schedule over 2 × ``num_train_steps``), under each protocol shown.

Table ``kd`` puts the seed papers' distillation methods next to VTCE on the same teacher, each
with parameter sharing off (``BL+m``) and on (``BL+PS+m``); ``BL``, ``BL+PS``, ``BL+VTCE`` and
``BL+PS+VTCE`` are Table 3's runs. A method's weights are the base config's where they are > 0,
else the upstream ones (``UPSTREAM_KD_WEIGHTS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from drd_jax.errors import ConfigError

__all__ = [
    "ALPHAS",
    "BETAS",
    "KD_METHODS",
    "STANDIN_SUFFIX",
    "TABLES",
    "UPSTREAM_KD_WEIGHTS",
    "Row",
    "Run",
    "check_kd_methods",
    "protocol_view",
    "runs_in_order",
    "table_rows",
]

TABLES = ("1", "3", "4", "kd")
# Loss weights of the seed papers' code: Structured KD (pixel 10, pair 0.5, holistic 0.1) and a
# public Knowledge Adaptation port (adaptation 50); affinity 1.
UPSTREAM_KD_WEIGHTS = {
    "pixel_kd_weight": 10.0,
    "pair_kd_weight": 0.5,
    "holistic_kd_weight": 0.1,
    "adaptation_weight": 50.0,
    "affinity_weight": 1.0,
}
# Table 'kd': method label -> the weight fields it switches on (run key: kd_<label lower>).
KD_METHODS = {
    "pixel": ("pixel_kd_weight",),
    "pair": ("pair_kd_weight",),
    "holistic": ("holistic_kd_weight",),
    "SKD": ("pixel_kd_weight", "pair_kd_weight", "holistic_kd_weight"),
    "KA": ("adaptation_weight", "affinity_weight"),
    "affinity": ("affinity_weight",),
}
ALPHAS = (0.1, 7.0, 8.3, 10.0, 15.0)  # paper Table 4
BETAS = (1.0, 0.9, 0.5, 0.3, 0.1)
STANDIN_SUFFIX = "_standin"  # run keys of the 'Initialization' protocol with the stand-in
STANDIN_GROUP = "Initialization (stand-in)"
EQUAL_BUDGET_KEY = "bl_equal_steps"  # BL (TN+SN steps)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: ``overrides`` of the base config; ``teacher`` is another run's key
    (``teacher_run`` that run, so a table whose rows do not include the teacher still trains it).
    """

    key: str
    overrides: Mapping[str, Any]
    teacher: str | None = None
    teacher_run: Run | None = dataclasses.field(default=None, compare=False, repr=False)

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
    paper_label: str = ""  # the paper's row it stands for, when not ``label``


def _number(x: float) -> str:
    return f"{x:g}"


def _runs(
    alpha: float,
    beta: float,
    vtce_weight: float,
    kd_weights: Mapping[str, float],
    standin: str = "",
    num_train_steps: int = 0,
) -> dict[str, Run]:
    vtce = float(vtce_weight) or 1.0  # the base config's VTCE weight (0 in a base would mean BL+PS)
    weights = {k: float(kd_weights.get(k) or v) for k, v in UPSTREAM_KD_WEIGHTS.items()}
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
    if num_train_steps:
        equal = {"num_train_steps": 2 * num_train_steps}
        runs.append(Run(EQUAL_BUDGET_KEY, {"mode": "baseline", "init": "scratch", **equal}))
    if standin:
        p = {"pretrained_path": standin}
        tn = f"tn{STANDIN_SUFFIX}"
        runs += [
            Run(f"bl{STANDIN_SUFFIX}", {"mode": "baseline", "init": "imagenet", **p}),
            Run(tn, {"mode": "teacher", "init": "imagenet", **p}),
            Run(
                f"sn{STANDIN_SUFFIX}",
                {"mode": "student", "init": "teacher", "vtce_weight": vtce, **p},
                tn,
            ),
            Run(
                f"bl_vtce{STANDIN_SUFFIX}",
                {"mode": "student", "init": "imagenet", "vtce_weight": vtce, **p},
                tn,
            ),
            Run(
                f"bl_ps{STANDIN_SUFFIX}",
                {"mode": "student", "init": "teacher", "vtce_weight": 0.0, **p},
                tn,
            ),
        ]
        if num_train_steps:
            overrides = {"mode": "baseline", "init": "imagenet", **p, **equal}
            runs.append(Run(f"{EQUAL_BUDGET_KEY}{STANDIN_SUFFIX}", overrides))
    for method, fields in KD_METHODS.items():
        for init, suffix in (("scratch", ""), ("teacher", "_ps")):
            overrides = {"mode": "student", "init": init, "vtce_weight": 0.0}
            overrides.update({f: weights[f] for f in fields})
            runs.append(Run(f"kd_{method.lower()}{suffix}", overrides, "tn"))
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
    by_key = {r.key: r for r in runs}
    return {
        r.key: dataclasses.replace(r, teacher_run=by_key[r.teacher]) if r.teacher else r
        for r in runs
    }


def check_kd_methods(methods: Iterable[str] | None) -> list[str]:
    """``methods`` as a list (None = every ``KD_METHODS`` key); ``ValueError`` on an unknown or
    empty choice."""
    methods = list(KD_METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in KD_METHODS]
    if unknown or not methods:
        raise ConfigError(
            f"unknown distillation methods {unknown or methods}; expected some of "
            f"{list(KD_METHODS)}"
        )
    return methods


def table_rows(
    table: str,
    *,
    alpha: float,
    beta: float,
    vtce_weight: float = 1.0,
    imagenet: bool = False,
    kd_weights: Mapping[str, float] | None = None,
    kd_methods: Iterable[str] | None = None,
    standin: str = "",
    equal_budget: bool = False,
    num_train_steps: int = 0,
) -> list[Row]:
    """The rows of table ``table`` ('1', '3', '4' or 'kd') for a base config's α, β, weights.

    Table 1 has the ImageNet-initialised rows only with ``imagenet=True`` (VGG16 weights given).
    ``kd_weights``: the base config's ``UPSTREAM_KD_WEIGHTS`` fields (0 or missing = upstream).
    ``kd_methods``: the ``KD_METHODS`` in table 'kd' (default all; VTCE and CE are always there).
    ``standin``: the stand-in backbone's ``.npz`` (non-empty: Tables 1 and 3 add the
    'Initialization' protocol's rows with it, labelled '… (stand-in)').
    ``equal_budget``: Table 3 adds ``BL (TN+SN steps)``, BL for 2 × ``num_train_steps`` (the base
    config's, > 0), under each protocol it shows.
    """
    if equal_budget and not (isinstance(num_train_steps, int) and num_train_steps > 0):
        raise ConfigError(f"equal_budget needs num_train_steps > 0, got {num_train_steps!r}")
    steps = num_train_steps if equal_budget else 0
    runs = _runs(alpha, beta, vtce_weight, kd_weights or {}, standin, steps)
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
        if standin:
            rows += [
                Row(
                    "1",
                    f"{name} (stand-in)",
                    runs[f"{key}{STANDIN_SUFFIX}"],
                    STANDIN_GROUP,
                    paper_label=f"{name} (ImageNet)",
                )
                for name, key in (("BL", "bl"), ("TN", "tn"), ("SN", "sn"))
            ]
        return rows
    if table == "3":
        names = (("BL", "bl"), ("BL+VTCE", "bl_vtce"), ("BL+PS", "bl_ps"), ("BL+PS+VTCE", "sn"))
        if equal_budget:
            names += (("BL (TN+SN steps)", EQUAL_BUDGET_KEY),)
        rows = [Row("3", name, runs[key]) for name, key in names]
        if standin:
            rows += [
                Row("3", _standin_label(name), runs[f"{key}{STANDIN_SUFFIX}"], STANDIN_GROUP)
                for name, key in names
            ]
        return rows
    if table == "4":
        return [Row("4", f"TN α={_number(a)}", tn_alpha[a], "α (teacher)") for a in ALPHAS] + [
            Row("4", f"SN β={_number(b)}", sn_beta[b], "β (student)") for b in BETAS
        ]
    if table == "kd":
        rows = [
            Row("kd", name, runs[key], group)
            for name, key, group in (
                ("BL", "bl", "CE"),
                ("BL+PS", "bl_ps", "CE"),
                ("BL+VTCE", "bl_vtce", "VTCE"),
                ("BL+PS+VTCE", "sn", "VTCE"),
            )
        ]
        for method in check_kd_methods(kd_methods):
            key = f"kd_{method.lower()}"
            rows += [
                Row("kd", f"BL+{method}", runs[key], method),
                Row("kd", f"BL+PS+{method}", runs[f"{key}_ps"], method),
            ]
        return rows
    raise ConfigError(f"unknown table {table!r}; expected one of {TABLES}")


def _standin_label(name: str) -> str:
    """'BL' -> 'BL (stand-in)'; 'BL (TN+SN steps)' -> 'BL (TN+SN steps, stand-in)'."""
    return f"{name[:-1]}, stand-in)" if name.endswith(")") else f"{name} (stand-in)"


def protocol_view(body: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    """A ``results.json`` body (``experiments.reproduce``) reduced to one protocol's rows, under
    the 'No Initialization' run keys, so that what reads those keys (the target verdict, the
    equal-budget comparison) reads either protocol.

    ``protocol``: 'scratch' (the rows of runs without :data:`STANDIN_SUFFIX`; the body's own
    ``ps_starting_point``) or 'standin' (those with it, the suffix dropped;
    ``ps_starting_point_standin`` as ``ps_starting_point``). ImageNet rows are in neither.
    """
    if protocol not in ("scratch", "standin"):
        raise ConfigError(f"protocol must be 'scratch' or 'standin', got {protocol!r}")
    standin = protocol == "standin"
    tables = {}
    for table, entries in body.get("tables", {}).items():
        kept = []
        for entry in entries:
            key = entry["run"]
            if key.endswith("_imagenet") or key.endswith(STANDIN_SUFFIX) != standin:
                continue
            kept.append({**entry, "run": key.removesuffix(STANDIN_SUFFIX)})
        if kept:
            tables[table] = kept
    view = {k: v for k, v in body.items() if k not in ("tables", "ps_starting_point")}
    view["tables"] = tables
    start = body.get("ps_starting_point_standin" if standin else "ps_starting_point")
    if start is not None:
        view["ps_starting_point"] = start
    return view


def runs_in_order(rows: Iterable[Row]) -> list[Run]:
    """The distinct runs of ``rows`` and their teachers (also when no row shows the teacher, as in
    Table 3), every teacher before its students (first-seen order)."""
    runs: dict[str, Run] = {}
    for row in rows:
        if row.run.teacher_run is not None:
            runs.setdefault(row.run.teacher, row.run.teacher_run)
        runs.setdefault(row.run.key, row.run)
    # Teachers are never students, so one pass suffices: runs without a teacher first.
    return [r for r in runs.values() if r.teacher is None] + [
        r for r in runs.values() if r.teacher is not None
    ]

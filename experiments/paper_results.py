"""The paper's published figures (mPA / mIoU in %), keyed by table, run and dataset.

Source: the paper (Fang et al., ICASSP 2022; CITATION.cff), Tables 1, 3 and 4. The text
extraction of Table 1 we read drops the SUN RGB-D "No Initialization" BL mIoU and garbles its TN
mIoU; both are taken from the paper's poster: BL 22.9 (also Table 3's BL row) and TN 30.8. Table 4
was reported on NYUv2 only.
"""

from __future__ import annotations

__all__ = ["PAPER", "paper_figures"]

NYU = "NYUv2"
SUN = "SUN RGB-D"

# {table: {run name: {dataset: (mPA, mIoU)}}}; run names as in experiments.protocols.
PAPER: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "1": {
        "BL": {NYU: (22.8, 15.2), SUN: (31.6, 22.9)},
        "TN": {NYU: (48.2, 32.3), SUN: (40.4, 30.8)},
        "SN": {NYU: (51.0, 38.1), SUN: (39.3, 28.5)},
        "BL (ImageNet)": {NYU: (35.0, 24.6), SUN: (39.8, 31.7)},
        "TN (ImageNet)": {NYU: (51.6, 39.1), SUN: (50.8, 41.0)},
        "SN (ImageNet)": {NYU: (51.0, 38.2), SUN: (48.9, 39.5)},
    },
    "3": {
        "BL": {NYU: (22.8, 15.2), SUN: (31.6, 22.9)},
        "BL+VTCE": {NYU: (24.1, 17.9), SUN: (32.8, 23.5)},
        "BL+PS": {NYU: (49.1, 37.0), SUN: (38.1, 26.4)},
        "BL+PS+VTCE": {NYU: (51.0, 38.1), SUN: (39.3, 28.5)},
    },
    "4": {
        "TN α=0.1": {NYU: (42.8, 28.7)},
        "TN α=7": {NYU: (45.4, 30.0)},
        "TN α=8.3": {NYU: (48.2, 32.3)},
        "TN α=10": {NYU: (46.3, 30.8)},
        "TN α=15": {NYU: (42.6, 28.5)},
        "SN β=1": {NYU: (50.5, 37.5)},
        "SN β=0.9": {NYU: (51.0, 38.1)},
        "SN β=0.5": {NYU: (49.5, 37.7)},
        "SN β=0.3": {NYU: (49.2, 37.1)},
        "SN β=0.1": {NYU: (48.7, 36.5)},
    },
}


def paper_figures(table: str, run: str) -> dict[str, dict[str, float]]:
    """``{dataset: {"mean_pixel_accuracy": %, "mean_iou": %}}`` of a row; {} if not in the paper."""
    rows = PAPER.get(str(table), {})
    return {
        dataset: {"mean_pixel_accuracy": mpa, "mean_iou": miou}
        for dataset, (mpa, miou) in rows.get(run, {}).items()
    }

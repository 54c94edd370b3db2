"""How two modes compare over repeated runs: the ratio of their medians, its spread, and whether it means anything.

A comparison runs its modes interleaved (A B A B ...), so slow drifts of the host (another VM, thermal limits)
fall on both alike.  Per message size it reports:

- each mode's median busbw over the repeats;
- the ratio of the medians (mode / reference), and its spread: the smallest and largest ratio of one
  repeat's pair (repeat i of the mode against repeat i of the reference);
- a 95 % percentile-bootstrap interval of the ratio of medians (Efron & Tibshirani, "An Introduction to the
  Bootstrap", 1993, ch. 13): the repeats are resampled as pairs, with replacement, ``RESAMPLES`` times with
  a fixed seed, so the same measurements always give the same interval;
- a verdict: ``faster`` when the interval lies above 1, ``slower`` when below, else ``no significant
  difference``; a single repeat gives no interval and the verdict ``one run``.

With three repeats the bootstrap sees at most 27 distinct resamples: the interval is then close to the
range of the ratios it could form, wide on purpose.  Repeat more for a narrower one.
"""

import numpy as np

RESAMPLES = 10_000
SEED = 20261202
CONFIDENCE = 0.95


def ratio_summary(reference: list[float], other: list[float]) -> dict:
    """``other`` against ``reference`` (one value per repeat, paired by index): the ratio of the medians, the
    range of the paired ratios, the bootstrap interval and the verdict (see the module docstring)."""
    ref, oth = np.asarray(reference, dtype=float), np.asarray(other, dtype=float)
    if ref.shape != oth.shape or ref.size == 0:
        raise ValueError(f"need paired repeats, got {ref.size} and {oth.size}")
    ratio = _ratio(np.median(oth), np.median(ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        paired = np.where(ref > 0, oth / ref, np.nan)
    summary = {"ratio": ratio, "ratio_min": float(np.nanmin(paired)) if np.isfinite(paired).any() else np.nan,
               "ratio_max": float(np.nanmax(paired)) if np.isfinite(paired).any() else np.nan,
               "ci_low": np.nan, "ci_high": np.nan, "verdict": "one run"}
    if ref.size < 2:
        return summary
    picks = np.random.default_rng(SEED).integers(0, ref.size, size=(RESAMPLES, ref.size))
    ref_medians, oth_medians = np.median(ref[picks], axis=1), np.median(oth[picks], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(ref_medians > 0, oth_medians / ref_medians, np.nan)
    if not np.isfinite(ratios).any():
        return dict(summary, verdict="no ratio")  # a reference of zeros
    low, high = np.nanpercentile(ratios, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    verdict = "faster" if low > 1 else "slower" if high < 1 else "no significant difference"
    return dict(summary, ci_low=float(low), ci_high=float(high), verdict=verdict)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")

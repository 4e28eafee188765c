"""Importance weights and what is known about them: log 0 as the files hold it, the per-policy diagnostics (ESS,
extremes, the clone check) and the thresholds every reader of them judges by. Phase 2 computes them once; the summary,
the report and the analysis verdict read them."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

# log 0 as cje-eval can read it: the most negative finite double (cje refuses non-finite log-probs and skips the whole
# row, every policy's). exp(LOG_ZERO - any log-prob) is exactly 0.0, so the weight is exactly 0; the row's metadata
# gives the reason (zero_probability_reasons).
LOG_ZERO = -sys.float_info.max
CLONE_ERROR_NATS = 5.0  # |log clone - log logging policy| beyond this is an error, not noise
EXTREME_LOG_WEIGHT = math.log(10)  # weights above 10 or below 0.1 count as extreme
# cje-eval's gates for importance weights (cje.diagnostics.gates): below ESS_GOOD a policy fails its ship gate, below
# ESS_WARNING it is critical.
ESS_GOOD, ESS_WARNING = 0.30, 0.10
TOP_FRACTION = 0.01  # the heaviest responses whose share of the total weight is reported


@dataclass
class WeightDiagnostics:
    policy: str
    n: int
    null_logprobs: int
    median_weight: float | None
    ess_fraction: float | None
    max_log_weight: float | None
    extreme_weights: int
    clone_check: str | None = None  # PASS/FAIL, for clones of the logging policy only
    clone_tolerance: float | None = None  # the |log-ratio| a clone may show: 0 (exact), or a hosted endpoint's noise
    clone_errors: list[str] = field(default_factory=list)
    top_share: float | None = None  # share of the total weight held by the heaviest TOP_FRACTION of responses
    log_mean_weight: float | None = None  # log of the mean raw weight; about 0 when the target covers P0's responses


def weight_diagnostics(policy: str, log_ratios: list[float | None]) -> WeightDiagnostics:
    known = np.array([r for r in log_ratios if r is not None], dtype=np.float64)
    nulls = len(log_ratios) - len(known)
    if len(known) == 0:
        return WeightDiagnostics(policy, 0, nulls, None, None, None, 0)
    scaled = np.exp(known - known.max())  # ESS is scale-free; this keeps huge log-weights finite
    return WeightDiagnostics(
        policy=policy,
        n=len(known),
        null_logprobs=nulls,
        # halved, two weights of exactly 0 (LOG_ZERO) average without overflowing: the median weight is 0 all the same
        median_weight=float(np.exp(np.median(np.maximum(known, LOG_ZERO / 2)))),
        ess_fraction=float(scaled.sum() ** 2 / (len(known) * (scaled ** 2).sum())),
        max_log_weight=float(known.max()),
        extreme_weights=int((np.abs(known) > EXTREME_LOG_WEIGHT).sum()),
        top_share=float(np.sort(scaled)[::-1][: max(1, math.ceil(TOP_FRACTION * len(scaled)))].sum() / scaled.sum()),
        log_mean_weight=float(known.max() + np.log(scaled.mean())),
    )


def clone_check(diagnostics: WeightDiagnostics, log_ratios: dict[str, float | None], tolerance: float = 0.0) -> None:
    """PASS when every log-ratio is 0, or within `tolerance`: the noise an endpoint showed scoring one text twice
    (the preflight), since a hosted API need not give one text the same log-prob in two calls."""
    diagnostics.clone_errors = [
        f"{pid}: log-ratio {ratio:+.3f}" for pid, ratio in log_ratios.items() if ratio is not None and abs(ratio) > CLONE_ERROR_NATS
    ]
    within = all(ratio is not None and abs(ratio) <= tolerance for ratio in log_ratios.values())
    diagnostics.clone_check = "PASS" if within and log_ratios else "FAIL"
    diagnostics.clone_tolerance = tolerance


def usable_logprob(record: dict | None, max_width: float) -> tuple[float | None, str | None]:
    """A teacher-forced log-prob as Phase 2 uses it, or None with the reason: a certified interval wider than
    max_certified_width gives no value."""
    if record is None:
        return None, None
    if record.get("zero_probability"):
        return LOG_ZERO, None
    if record.get("logprob_low") is not None and record["logprob_high"] - record["logprob_low"] > max_width:
        width = record["logprob_high"] - record["logprob_low"]
        return None, (f"teacher_force: its certified interval is {width:.3g} nats wide (top-k={record['top_k']}), over "
                      f"max_certified_width {max_width:g}: serve the policy where more alternatives per token are listed, "
                      "or where the echo follows its temperature")
    return record["logprob"], None


def scored_log_ratio(row: dict, policy: str) -> float | None:
    """A logged row's log-ratio of `policy` as scored: the midpoints of certified intervals too wide to be used count
    (the clone check checks the scoring path, which is the same for rows Phase 2 cannot use)."""
    intervals = row["metadata"].get("certified_logprob_intervals", {})

    def as_scored(name: str, value: float | None) -> float | None:
        return sum(intervals[name]) / 2 if value is None and name in intervals else value

    logging_policy = next((name for name in intervals if name not in row["target_policy_logprobs"]), None)
    base = as_scored(logging_policy, row["base_policy_logprob"])
    target = as_scored(policy, row["target_policy_logprobs"].get(policy))
    return None if base is None or target is None else target - base


def bounds(record: dict) -> tuple[float, float]:
    """A teacher-forced log-prob's certified bounds; an exact one is its own."""
    if record.get("zero_probability"):
        return LOG_ZERO, LOG_ZERO
    if record.get("logprob_low") is None:
        return record["logprob"], record["logprob"]
    return record["logprob_low"], record["logprob_high"]

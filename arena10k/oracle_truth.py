"""How right each estimator is on a run's own data: each target policy's on-policy value from the oracle labels of its
own responses (the validation slice), against the estimates, and how the error grows as oracle labels are taken away
(the coverage ablation, the CJE paper's central comparison).

The truth of a policy is the mean oracle label of its labelled responses, with a normal 95% interval. It is itself an
estimate: with fewer than MIN_TRUTH_LABELS labels it cannot say whether an estimator is right, and everything built on
it says so instead of judging; with more, its own uncertainty still enters the agreement check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

Z_95 = 1.959963984540054
# Below this many labels the truth's normal interval is not to be trusted (oracle labels are bounded and often lumpy:
# a few digits of one judge), and its half-width is typically over 0.1 on a 0-1 scale, wider than the differences
# between policies that an estimator is checked on.
MIN_TRUTH_LABELS = 30


def on_policy_value(labels: Iterable[float]) -> dict:
    """The mean oracle label of a policy's own responses, its 95% interval, how many labels, and whether it can judge
    an estimator (`judged`, with the reason where it cannot)."""
    values = [float(v) for v in labels]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci_low": None, "ci_high": None, "judged": False,
                "reason": "no oracle label of its own responses (oracle.validation_fraction)"}
    mean = sum(values) / n
    half = Z_95 * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.inf
    judged = n >= MIN_TRUTH_LABELS
    return {"n": n, "mean": mean, "ci_low": mean - half if n > 1 else None, "ci_high": mean + half if n > 1 else None,
            "judged": judged,
            "reason": None if judged else f"{n} oracle labels of its own responses, {MIN_TRUTH_LABELS} needed to judge an "
                                          "estimator (oracle.validation_fraction, or more prompts)"}


def against_truth(row: dict, truth: dict) -> dict:
    """One estimate against its policy's truth: the error, whether the estimator's 95% interval covers the truth, and
    whether the two agree within their joint 95% margin (which counts the truth's own uncertainty). The last two are
    None where the truth cannot judge."""
    if truth["mean"] is None or not all(math.isfinite(row[k]) for k in ("estimate", "ci_low", "ci_high", "standard_error")):
        return {"error": None, "covers": None, "agrees": None}
    error = row["estimate"] - truth["mean"]
    if not truth["judged"]:
        return {"error": error, "covers": None, "agrees": None}
    truth_se = (truth["ci_high"] - truth["mean"]) / Z_95
    return {"error": error, "covers": row["ci_low"] <= truth["mean"] <= row["ci_high"],
            "agrees": abs(error) <= Z_95 * math.hypot(row["standard_error"], truth_se)}


def summary(policies: dict[str, dict], truths: dict[str, dict]) -> dict:
    """One estimator's estimates (cje's rows by policy) against the truths: the root mean squared error over the
    policies with a truth, and how many of the policies whose truth can judge its interval covers."""
    checks = {p: against_truth(row, truths[p]) for p, row in policies.items() if p in truths}
    errors = [c["error"] for c in checks.values() if c["error"] is not None]
    judged = [c for c in checks.values() if c["covers"] is not None]
    return {"policies": checks, "rmse": math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else None,
            "errors": len(errors), "judged": len(judged), "covered": sum(c["covers"] for c in judged)}

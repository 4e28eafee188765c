"""What a CJE dataset's files say before any estimate: per target policy its importance-weight diagnostics (with the
clone check of the logging policy's clones), per judge variant how spread its scores are.

Stage 6 computes them once, from the files it has just written, into dataset_info.json; the summary, the analysis
verdict and the report read them from there. The report computes them the same way for a dataset of another origin.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from arena10k.cje_dataset import Rows
from arena10k.weights import WeightDiagnostics, clone_check, scored_log_ratio, weight_diagnostics

# A judge that gives one score to more than this share of responses cannot tell them apart (the report and the
# analysis verdict say so).
ONE_SCORE_SHARE = 0.9


@dataclass(frozen=True)
class JudgeSpread:
    """How one judge variant's scores of every response in the files (logged and fresh draws) are spread."""

    responses: int
    distinct: int
    commonest: float | None
    commonest_share: float | None

    @property
    def tells_apart(self) -> bool:
        """Whether the judge separates responses at all: no one score for more than ONE_SCORE_SHARE of them."""
        return self.commonest_share is not None and self.commonest_share <= ONE_SCORE_SHARE


@dataclass
class Diagnostics:
    weights: dict[str, WeightDiagnostics]  # target policy -> its weights' diagnostics
    judge: dict[str, JudgeSpread]  # judge variant -> its scores' spread

    def to_info(self) -> dict:
        return {"weights": {p: asdict(d) for p, d in self.weights.items()},
                "judge": {v: asdict(s) for v, s in self.judge.items()}}

    @classmethod
    def from_info(cls, info: dict) -> Diagnostics:
        """Read back from dataset_info.json."""
        return cls({p: WeightDiagnostics(**d) for p, d in info["weights"].items()},
                   {v: JudgeSpread(**s) for v, s in info["judge"].items()})


def log_ratios(logged: list[dict], policy: str) -> dict[str, float | None]:
    """Per logged row (prompt id), the log importance weight of `policy`; None where a log-prob is null."""
    ratios = {}
    for row in logged:
        base, target = row["base_policy_logprob"], row["target_policy_logprobs"].get(policy)
        ratios[row["prompt_id"]] = None if base is None or target is None else target - base
    return ratios


def judge_spread(scores: list[float]) -> JudgeSpread:
    counts = Counter(round(score, 6) for score in scores)
    if not counts:
        return JudgeSpread(0, 0, None, None)
    value, count = counts.most_common(1)[0]
    return JudgeSpread(len(scores), len(counts), value, count / len(scores))


def compute(variants: dict[str, Rows], targets: tuple[str, ...], clones: tuple[str, ...], tolerance: dict[str, float]
            ) -> Diagnostics:
    """The diagnostics of a dataset's files (judge variant -> rows; the log-probs are the same in every variant) for
    these target policies. `tolerance`: per clone, the |log-ratio| its endpoint's measured noise allows (0 where scoring
    is exact)."""
    logged = next(iter(variants.values())).logged
    weights = {}
    for policy in targets:
        weights[policy] = weight_diagnostics(policy, list(log_ratios(logged, policy).values()))
        if policy in clones:
            clone_check(weights[policy], {row["prompt_id"]: scored_log_ratio(row, policy) for row in logged},
                        tolerance.get(policy, 0.0))
    judge = {variant: judge_spread([row["judge_score"] for row in [*rows.logged, *(r for f in rows.fresh.values() for r in f)]])
             for variant, rows in variants.items()}
    return Diagnostics(weights, judge)

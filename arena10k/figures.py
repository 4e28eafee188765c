"""The diagnostics report's figures.

Drawn on matplotlib Figure objects without pyplot, so no display and no global state is involved, and saved
without the "Software" PNG metadata, so that the same data gives the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from arena10k.weights import EXTREME_LOG_WEIGHT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_METADATA = {"Software": None}
DPI = 100
COLORS = ("tab:blue", "tab:orange", "tab:purple")


def _figure(**options) -> Figure:
    # matplotlib takes over half a second to import: only a command that draws figures pays it.
    from matplotlib.figure import Figure

    return Figure(**options)


def _plain_numbers():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:g}")


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    return path


def _grid(count: int, width: float = 4.2, height: float = 3.0) -> tuple[Figure, list]:
    columns = min(count, 2)
    rows = math.ceil(count / columns)
    figure = _figure(figsize=(width * columns, height * rows), layout="tight")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def log_weight_histograms(path: Path, log_ratios: dict[str, np.ndarray], titles: dict[str, str]) -> Path:
    """One panel per policy: where its log importance weights lie, against the band of ordinary weights."""
    figure, axes = _grid(len(log_ratios), height=3.2)
    for ax, (policy, values) in zip(axes, log_ratios.items()):
        ax.axvspan(-EXTREME_LOG_WEIGHT, EXTREME_LOG_WEIGHT, color="tab:green", alpha=0.15, label="0.1 < w < 10", zorder=0)
        ax.axvline(0, color="tab:green", linewidth=1, zorder=0)
        ax.hist(values, bins=min(40, max(10, len(values) // 4)), color="tab:blue", zorder=2)
        ax.set_title(titles[policy], fontsize=9)
        ax.set_xlabel("log w = log p_target - log p_P0 (nats)", fontsize=8)
        ax.set_ylabel("responses", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    figure.suptitle("Log importance weights of P0's responses, per target policy", fontsize=10)
    return _save(figure, path)


def weight_concentration(path: Path, log_ratios: dict[str, np.ndarray]) -> Path:
    """How much of each policy's total weight its heaviest responses carry; equal weights give the diagonal."""
    figure = _figure(figsize=(6.4, 4.2), layout="tight")
    ax = figure.subplots()
    for policy, values in log_ratios.items():
        weights = np.sort(np.exp(values - values.max()))[::-1]
        share = np.cumsum(weights) / weights.sum()
        ax.plot(np.arange(1, len(weights) + 1) / len(weights) * 100, share * 100, marker=".", markersize=3, label=policy)
    smallest = 100 / max(len(v) for v in log_ratios.values())
    equal = np.geomspace(smallest, 100, 50)
    ax.plot(equal, equal, color="grey", linestyle=":", label="equal weights")
    ax.set_xscale("log")  # the heaviest few responses are where weights go wrong
    ax.xaxis.set_major_formatter(_plain_numbers())
    ax.set_xlabel("heaviest responses (% of all, heaviest first, log scale)")
    ax.set_ylabel("share of total weight (%)")
    ax.set_title("Weight concentration", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def clone_log_ratios(path: Path, policy: str, ratios: np.ndarray, verdict: str) -> Path:
    figure = _figure(figsize=(6.4, 3.4), layout="tight")
    ax = figure.subplots()
    spread = float(np.abs(ratios).max()) if len(ratios) and np.abs(ratios).max() > 0 else 1.0
    ax.hist(ratios, bins=41, range=(-spread * 1.05, spread * 1.05), color="tab:green" if verdict.startswith("PASS") else "tab:red")
    ax.set_xlabel(f"log p_{policy} - log p_P0 of P0's response (nats); must be exactly 0")
    ax.set_ylabel("responses")
    ax.set_title(verdict, fontsize=9)
    return _save(figure, path)


def judge_scores(path: Path, scores: dict[str, dict[str, np.ndarray]], reweighted: dict[str, dict[str, float]]) -> Path:
    """Box plots of judge scores per policy, a box per variant; a cross marks what P0's reweighted responses say."""
    policies = list(dict.fromkeys(p for variant in scores for p in [*scores[variant], *reweighted[variant]]))
    figure = _figure(figsize=(max(7.0, 0.8 * len(policies) * len(scores) + 3), 4.2), layout="tight")
    ax = figure.subplots()
    width = 0.8 / len(scores)
    for index, (variant, by_policy) in enumerate(scores.items()):
        color = COLORS[index % len(COLORS)]
        offset = (index - (len(scores) - 1) / 2) * width
        if not by_policy:
            continue  # no response of this variant was judged: nothing to draw
        box = ax.boxplot(list(by_policy.values()), positions=[policies.index(p) + offset for p in by_policy], widths=width * 0.85,
                         patch_artist=True, showmeans=True, medianprops={"color": "black"},
                         meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"})
        for patch in box["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        ax.plot([], [], color=color, linewidth=8, alpha=0.6, label=f"{variant}: own responses")
        for policy, value in reweighted[variant].items():
            ax.plot(policies.index(policy) + offset, value, marker="x", color=color, markersize=11, markeredgewidth=2.5, zorder=5)
        if reweighted[variant]:
            ax.plot([], [], marker="x", color=color, markeredgewidth=2.5, linestyle="none", label=f"{variant}: P0 reweighted")
    ax.plot([], [], marker="D", color="black", markerfacecolor="white", linestyle="none", label="mean")
    ax.set_xticks(range(len(policies)), policies)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("judge score (0-1)")
    ax.set_title("Judge scores per policy", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(figure, path)


def judge_uncertainty(path: Path, uncertainty: dict[str, tuple[np.ndarray, np.ndarray]], guessing_sd: float) -> Path:
    figure = _figure(figsize=(6.4, 4.2), layout="tight")
    ax = figure.subplots()
    for policy, (means, deviations) in uncertainty.items():
        ax.scatter(means, deviations, s=12, alpha=0.7, label=policy)
    ax.axhline(guessing_sd, color="grey", linestyle=":", label="a judge guessing uniformly")
    ax.set_xlabel("judge score: mean of the score distribution")
    ax.set_ylabel("standard deviation of the score distribution")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(0, max(guessing_sd, max(float(d.max()) for _, d in uncertainty.values())) * 1.1)
    ax.set_title("Judge uncertainty against score", fontsize=10)
    ax.legend(fontsize=7)
    return _save(figure, path)


def judge_vs_oracle(path: Path, pairs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], titles: dict[str, str]) -> Path:
    """A panel per judge variant: judge score against oracle label on the labelled responses, per policy."""
    figure, axes = _grid(len(pairs), width=4.6, height=4.4)
    for ax, (variant, by_policy) in zip(axes, pairs.items()):
        # Deterministic scores are digits: a small seeded horizontal jitter keeps equal scores apart.
        jitter = np.random.default_rng(0)
        for policy, (judge, oracle) in by_policy.items():
            ax.scatter(judge + jitter.uniform(-0.012, 0.012, len(judge)), oracle, s=14, alpha=0.7, label=f"{policy} ({len(judge)})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="judge = oracle")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("judge score")
        ax.set_ylabel("oracle label")
        ax.set_title(titles[variant], fontsize=9)
        ax.legend(fontsize=7)
    return _save(figure, path)


def estimates(path: Path, variants: dict[str, dict[str, dict]]) -> Path:
    """A panel per judge variant: each policy's estimate and 95% interval under each estimator, drawn as cje returned
    them: an estimate outside its own interval is a red cross (the verdict's notes say what it means), a missing end
    or estimate (NaN) is left out."""
    figure, axes = _grid(len(variants), width=5.2, height=3.8)
    for ax, (variant, by_estimator) in zip(axes, variants.items()):
        policies = list(dict.fromkeys(p for rows in by_estimator.values() for p in rows))
        width = 0.7 / max(len(by_estimator), 1)
        flagged = False
        for index, (estimator, rows) in enumerate(by_estimator.items()):
            offset = (index - (len(by_estimator) - 1) / 2) * width
            color = COLORS[index % len(COLORS)]
            for number, (policy, row) in enumerate(rows.items()):
                x, value, low, high = policies.index(policy) + offset, row["estimate"], row["ci_low"], row["ci_high"]
                if math.isfinite(low) and math.isfinite(high):
                    ax.vlines(x, low, high, color=color)
                    ax.hlines([low, high], x - 0.04, x + 0.04, color=color)
                if math.isfinite(value):
                    outside = not (low <= value <= high)
                    flagged |= outside
                    ax.plot(x, value, "X" if outside else "o", color="tab:red" if outside else color,
                            label=estimator if number == 0 else None)
        if flagged:
            ax.plot([], [], "X", color="tab:red", label="estimate outside its own interval")
        ax.set_xticks(range(len(policies)), policies, fontsize=8, rotation=20)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("estimated value (0-1)")
        ax.set_title(f"{variant} judge score: estimates, 95% intervals", fontsize=9)
        ax.legend(fontsize=7)
    return _save(figure, path)


def oracle_ablation(path: Path, curves: dict[str, dict[str, list[tuple[float, float | None, bool]]]]) -> Path:
    """A panel per judge variant: each estimator's RMSE against the oracle's truth over the share of oracle labels it
    was given. A hollow marker: no policy's truth has labels enough to judge it, so the error is as uncertain as the
    truth. A share where it failed or gave no number has no point (the report's table says why)."""
    figure, axes = _grid(len(curves), width=5.2, height=3.6)
    for ax, (variant, by_estimator) in zip(axes, curves.items()):
        for index, (estimator, points) in enumerate(by_estimator.items()):
            color = COLORS[index % len(COLORS)]
            drawn = [(share, rmse, judged) for share, rmse, judged in points if rmse is not None]
            ax.plot([share for share, _, _ in drawn], [rmse for _, rmse, _ in drawn], color=color, label=estimator)
            for share, rmse, judged in drawn:
                ax.plot(share, rmse, "o", color=color, markerfacecolor=color if judged else "white")
        shares = sorted({share for points in by_estimator.values() for share, _, _ in points})
        ax.set_xscale("log")
        ax.set_xticks(shares, [f"{share:.0%}" for share in shares], fontsize=8)
        ax.minorticks_off()
        ax.set_xlim(shares[0] / 1.3, shares[-1] * 1.3)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("share of the logged responses' oracle labels")
        ax.set_ylabel("RMSE against the oracle truth")
        ax.set_title(f"{variant} judge score: coverage ablation", fontsize=9)
        ax.legend(fontsize=7)
    return _save(figure, path)

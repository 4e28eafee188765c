"""A run's report: `phase2/report.md` with PNG figures, readable on GitHub and offline, written once at the end of a
run that ran stage 6 or 7 (`write_for_run`), from the Phase 2 files, their diagnostics (diagnostics.py, as stage 6
computed them) and the estimates.

It answers what a researcher must settle before trusting off-policy estimates: can the importance weights
be used (ESS, extreme and concentrated weights, nulls), does each clone of the logging policy reproduce it exactly, does the judge
separate the policies and agree with the oracle, what failed and what the run cost.

Its input has the shape of a CJE dataset, logged rows plus fresh draws per policy, so the same report reads
our Phase 2 files and any dataset cje-eval loads, such as the shared reference sample (which has no fresh
draws and names its policies differently). Facts about the run (coverage, retries, tokens, configuration)
are added when there is a run. The report holds no date, so the same data gives the same files.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from importlib import metadata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from arena10k import cje_dataset, figures
from arena10k.batches import Batch, Ledger
from arena10k.cje_dataset import Rows
from arena10k.checkpoint import dumps, load_states, may_try, write_atomic
from arena10k.config import ExperimentConfig
from arena10k.errors import Arena10kError
from arena10k.forecast import usage, usage_table
from arena10k.oracle_truth import MIN_TRUTH_LABELS
from arena10k.providers.local import instruction_sets
from arena10k.stages.analyze import current_estimates
from arena10k.stages.base import Plan
from arena10k.stages.phase2 import VARIANTS, certified_table, file_stamp, partial
from arena10k.stages.registry import STAGES
from arena10k.diagnostics import Diagnostics, compute as compute_diagnostics, log_ratios
from arena10k.weights import CLONE_ERROR_NATS, ESS_GOOD, ESS_WARNING, LOG_ZERO, WeightDiagnostics
from arena10k.tokens import LARGE_FIELDS, Usage
from arena10k.workspace import Workspace

WEAK_CORRELATION = 0.5
DISAGREEMENT = 0.1  # on the 0-1 judge scale, between reweighted P0 responses and the policy's own
UNIFORM_SD = float(np.std(np.arange(10) / 9))  # the spread of a judge that guesses a digit uniformly
FLAT_SHARE = 0.8  # distributions with a median spread above this share of UNIFORM_SD are close to guessing
PACKAGES = ("arena10k", "matplotlib", "llama_cpp_python", "pydantic", "datasets")


@dataclass
class RunFacts:
    config: ExperimentConfig
    info: dict  # dataset_info.json
    retried: dict[str, int]  # checkpoint -> items that needed more than one attempt
    retryable: dict[str, int]  # checkpoint -> failed items that the next run tries again
    attempts: dict[str, int]  # checkpoint -> attempts, failed ones included
    usage: dict[tuple[str, str], Usage]
    batches: list[Batch]  # sent to providers' Batch APIs (batches.jsonl), oldest first


@dataclass
class ReportInput:
    title: str
    source: str
    base_policy: str
    variants: dict[str, Rows]  # judge-score variant -> rows; log-probs are the same in every variant
    diagnostics: Diagnostics
    clones: tuple[str, ...] = ()  # targets that sample exactly as the base policy: their weights must be 1
    run: RunFacts | None = None


@dataclass
class PolicyWeights:
    ratios: dict[str, float | None]  # prompt_id -> log importance weight, None when a log-prob is null
    diagnostics: WeightDiagnostics

    @property
    def known(self) -> np.ndarray:
        return np.array([r for r in self.ratios.values() if r is not None], dtype=np.float64)


# ---------------------------------------------------------------- input


def cje_dataset_input(path: Path, clones: tuple[str, ...] = ()) -> ReportInput:
    variants = {"judge_score": cje_dataset.read(path)}
    return ReportInput(title=path.stem, source=str(path), base_policy="base", variants=variants,
                       diagnostics=compute_diagnostics(variants, variants["judge_score"].target_policies(), clones, {}),
                       clones=clones)


def phase2_input(phase2_dir: Path, config: ExperimentConfig | None = None, plan: Plan = STAGES) -> ReportInput:
    """Our Phase 2 files, with the run's checkpoints when they are beside them. Prices come from `config`
    (default: the configuration in dataset_info.json, which records no prices)."""
    info_path = phase2_dir / "dataset_info.json"
    if not info_path.is_file():
        raise Arena10kError(f"No {info_path}: run stage 6 (phase2) first.")
    info = json.loads(info_path.read_text())
    variants = {variant: cje_dataset.read(phase2_dir / variant / "logged.jsonl", tuple(info["target_policies"]))
                for variant in VARIANTS}
    config = config or ExperimentConfig.model_validate(info["config"])
    workspace = Workspace(phase2_dir.parent)
    run = None
    if workspace.prompts_path.exists():
        states = {name: load_states(workspace.checkpoint_path(name), drop=LARGE_FIELDS)[0] for name in plan.checkpoints}
        run = RunFacts(
            config, info,
            retried={name: sum(s.attempts > 1 and s.record is not None for s in st.values()) for name, st in states.items()},
            retryable={name: sum(may_try(s, config.max_attempts) for s in st.values()) for name, st in states.items()},
            attempts={name: sum(s.attempts for s in st.values()) for name, st in states.items()},
            usage=usage(config, workspace.load_prompts(), states, plan),
            batches=list(Ledger(workspace.batches_path).batches.values()),
        )
    return ReportInput(info["experiment"], str(phase2_dir), info["logging_policy"], variants, Diagnostics.from_info(info),
                       tuple(info["clones"]), run)


# ---------------------------------------------------------------- numbers


def reweighted_scores(logged: list[dict], weights: dict[str, PolicyWeights]) -> dict[str, float]:
    """Each target's mean judge score as P0's responses reweighted to it say (self-normalised IPS)."""
    scores = {}
    for policy, w in weights.items():
        pairs = [(w.ratios[row["prompt_id"]], row["judge_score"]) for row in logged if w.ratios[row["prompt_id"]] is not None]
        if pairs:
            ratios, values = np.array(pairs, dtype=np.float64).T
            scaled = np.exp(ratios - ratios.max())
            scores[policy] = float((scaled * values).sum() / scaled.sum())
    return scores


def clone_verdict(policy: str, weights: PolicyWeights) -> str:
    d = weights.diagnostics
    known = weights.known
    if d.clone_check == "PASS" and d.clone_tolerance:
        return (f"PASS: all {d.n} log-ratios of {policy} to the logging policy are within the endpoint's measured noise "
                f"(largest |log-ratio| {np.abs(known).max():.3g} nats, {d.clone_tolerance:.3g} allowed)")
    if d.clone_check == "PASS":
        return f"PASS: all {d.n} log-ratios of {policy} to the logging policy are exactly 0"
    problems = []
    if d.n == 0:
        problems.append("no log-ratio could be computed")
    if d.null_logprobs:
        problems.append(f"{d.null_logprobs} null log-probs")
    differing = int((known != 0).sum())
    if differing:
        problems.append(f"{differing} of {d.n} log-ratios differ from 0 (largest |log-ratio| {np.abs(known).max():.3g} nats)")
    if d.clone_errors:
        problems.append(f"{len(d.clone_errors)} beyond the {CLONE_ERROR_NATS:g}-nat error threshold")
    return f"FAIL: {'; '.join(problems)}"


def correlations(judge: np.ndarray, oracle: np.ndarray) -> tuple[float | None, float | None]:
    """Pearson and Spearman correlation; None when either side is constant or there are fewer than 3 pairs."""
    if len(judge) < 3 or np.ptp(judge) == 0 or np.ptp(oracle) == 0:
        return None, None
    return float(np.corrcoef(judge, oracle)[0, 1]), float(np.corrcoef(_ranks(judge), _ranks(oracle))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (judge scores are digits, so ties are the rule)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, groups, sizes = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(groups, weights=ranks) / sizes)[groups]


def _own_scores(rows: Rows, base_policy: str) -> dict[str, np.ndarray]:
    """Judge scores of each policy's own responses: the logged ones for P0, fresh draws for the others."""
    return {policy: np.array([r["judge_score"] for r in policy_rows], dtype=np.float64)
            for policy, policy_rows in {base_policy: rows.logged, **rows.fresh}.items() if policy_rows}


def _oracle_pairs(rows: Rows, base_policy: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    pairs = {}
    for policy, policy_rows in {base_policy: rows.logged, **rows.fresh}.items():
        labelled = [(r["judge_score"], r["oracle_label"]) for r in policy_rows if r.get("oracle_label") is not None]
        if labelled:
            judge, oracle = np.array(labelled, dtype=np.float64).T
            pairs[policy] = (judge, oracle)
    return pairs


def _pooled(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([j for j, _ in pairs.values()]), np.concatenate([o for _, o in pairs.values()])


@dataclass
class ReportNumbers:
    weights: dict[str, PolicyWeights]
    scores: dict[str, dict[str, np.ndarray]]  # variant -> policy -> judge scores of its own responses
    reweighted: dict[str, dict[str, float]]  # variant -> target -> mean score of P0's responses reweighted to it
    oracle: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # variant -> policy -> (judge, oracle) on labelled rows
    uncertainty: dict[str, tuple[np.ndarray, np.ndarray]]  # policy -> (mean, sd) of the judge's score distributions


def numbers(report: ReportInput) -> ReportNumbers:
    first = next(iter(report.variants.values()))
    weights = {policy: PolicyWeights(log_ratios(first.logged, policy), d) for policy, d in report.diagnostics.weights.items()}
    uncertainty = {}
    for rows in report.variants.values():  # the variant whose scores are distribution means carries their variance
        if rows.logged and rows.logged[0].get("metadata", {}).get("judge_variance") is not None:
            uncertainty = {policy: (np.array([r["judge_score"] for r in policy_rows], dtype=np.float64),
                                    np.sqrt([r["metadata"]["judge_variance"] for r in policy_rows]))
                           for policy, policy_rows in {report.base_policy: rows.logged, **rows.fresh}.items() if policy_rows}
    return ReportNumbers(
        weights,
        scores={v: _own_scores(rows, report.base_policy) for v, rows in report.variants.items()},
        reweighted={v: {p: s for p, s in reweighted_scores(rows.logged, weights).items() if p not in report.clones}
                    for v, rows in report.variants.items()},
        oracle={v: _oracle_pairs(rows, report.base_policy) for v, rows in report.variants.items()},
        uncertainty=uncertainty,
    )


# ---------------------------------------------------------------- report


class Figures:
    """The figures a report's sections show: each section names its figures and the data to draw, and write_report
    draws them, once the text is assembled."""

    def __init__(self) -> None:
        self.wanted: dict[str, tuple[Callable[..., Path], tuple]] = {}

    def add(self, name: str, draw: Callable[..., Path], *data) -> None:
        """Asks for figures/`name`, drawn by `draw(path, *data)`."""
        self.wanted[name] = (draw, data)

    def draw(self, directory: Path) -> None:
        for name, (draw, data) in self.wanted.items():
            draw(directory / name, *data)


def write_report(report: ReportInput, out_dir: Path, estimates: dict | None = None) -> Path:
    """Writes out_dir/report.md and out_dir/figures/*.png, with the analyze stage's estimates when given; returns
    the path of report.md."""
    analysis = numbers(report)
    wanted = Figures()
    sections = [
        _overview(report, analysis),
        _estimates_section(estimates, wanted) if estimates else [],
        _weights_section(report, analysis.weights, wanted),
        _clone_section(analysis.weights, wanted),
        _judge_section(report, analysis, wanted),
        _oracle_section(analysis, wanted),
        _run_section(report.run) if report.run else [],
        _versions_section(report.run),
    ]
    wanted.draw(out_dir / "figures")
    path = out_dir / "report.md"
    path.write_text("\n".join(line for section in sections for line in section) + "\n", encoding="utf-8")
    return path


def write_for_run(config: ExperimentConfig, workspace: Workspace, plan: Plan = STAGES) -> Path | None:
    """The run's report, from its Phase 2 files and the estimates made of them, written once at the end of a run that
    ran stage 6 or 7; unless nothing it reads changed since it was written. None when there are no Phase 2 files."""
    info_path, estimates_path = workspace.phase2_dir / "dataset_info.json", workspace.analysis_dir / "estimates.json"
    if not info_path.is_file():
        return None
    inputs_path, path = workspace.phase2_dir / "report_inputs.json", workspace.phase2_dir / "report.md"
    inputs = json.loads(dumps({"dataset_info": file_stamp(info_path), "estimates": file_stamp(estimates_path),
                               "config": config.model_dump(mode="json")}))
    if path.exists() and inputs_path.exists() and json.loads(inputs_path.read_text()) == inputs:
        return path
    write_report(phase2_input(workspace.phase2_dir, config, plan), workspace.phase2_dir, current_estimates(workspace))
    write_atomic(inputs_path, dumps(inputs) + "\n")
    return path


def _overview(report: ReportInput, analysis: ReportNumbers) -> list[str]:
    first = next(iter(report.variants.values()))
    fresh = ", ".join(f"{p} {len(rows)}" for p, rows in first.fresh.items()) or "none"
    labelled = len(_pooled(next(iter(analysis.oracle.values())))[0]) if next(iter(analysis.oracle.values())) else 0
    lines = [f"# Phase 2 diagnostics: {report.title}", "",
             f"Source: `{report.source}`. {len(first.logged)} logged responses of {report.base_policy}; "
             f"fresh draws: {fresh}; {labelled} oracle labels.", "", "## What to act on", ""]
    findings = _weight_findings(analysis.weights) + _judge_findings(report, analysis) + _run_findings(report.run)
    lines += [f"- {finding}" for finding in findings] or ["- Nothing stands out: weights, clone check and judge look usable."]
    return lines + [""]


def _weight_findings(weights: dict[str, PolicyWeights]) -> list[str]:
    findings = []
    for policy, w in weights.items():
        d = w.diagnostics
        if d.clone_check is not None:
            if d.clone_check != "PASS":
                advice = ("Teacher forcing does not reproduce the logging policy's own log-probs, so every importance weight carries an "
                          "error of this size: fix the scoring path before trusting any off-policy estimate."
                          if (w.known != 0).any() else "Its nulls leave those responses unchecked (see Nulls by reason).")
                findings.append(f"**{policy} fails the clone check**: {clone_verdict(policy, w).removeprefix('FAIL: ')}. {advice}")
            continue
        if d.ess_fraction is not None and d.ess_fraction < ESS_WARNING:
            findings.append(f"**{policy}: ESS {d.ess_fraction:.1%}**, {d.ess_fraction * d.n:.1f} effective of {d.n} responses; "
                            f"the heaviest 1% hold {d.top_share:.0%} of the weight. Importance-weighted estimates for it rest "
                            "on a handful of responses: rely on its fresh draws (direct method) or get more overlap.")
        elif d.ess_fraction is not None and d.ess_fraction < ESS_GOOD:
            findings.append(f"{policy}: ESS {d.ess_fraction:.1%}, below cje-eval's 30% gate: use calibrated or doubly robust estimators.")
        # Under P0 the weights average at most 1 in expectation; a sample mean far from it is a symptom.
        if d.log_mean_weight is not None and d.log_mean_weight < -math.log(10):
            findings.append(f"{policy}: mean weight {_weight(d.log_mean_weight)} instead of about 1: the policy puts its "
                            "probability on responses P0 rarely writes (poor overlap), so raw IPS is biased low; only "
                            "self-normalised or calibrated weights are usable, and only with enough ESS.")
        elif d.log_mean_weight is not None and d.log_mean_weight > math.log(10):
            findings.append(f"{policy}: mean weight {_weight(d.log_mean_weight)}, though in expectation it is at most 1: "
                            "a rare huge weight dominates the sample, or log-probs are wrong; check its heaviest responses.")
        if d.null_logprobs:
            findings.append(f"{policy}: {_responses(d.null_logprobs)} without a log-ratio (see Nulls by reason), left out of its estimate.")
    return findings


def _judge_findings(report: ReportInput, analysis: ReportNumbers) -> list[str]:
    findings = []
    for variant, by_policy in analysis.scores.items():
        spread = report.diagnostics.judge[variant]
        if spread.responses == 0:
            findings.append(f"No response has a {variant} judge score: nothing can be estimated (see the coverage table).")
            continue
        if not spread.tells_apart:
            findings.append(f"The {variant} judge score is {spread.commonest:.3f} for {spread.commonest_share:.0%} "
                            "of responses: it does not tell responses apart, so no estimate built on it can rank the policies.")
        base = by_policy.get(report.base_policy)
        for policy, score in analysis.reweighted[variant].items():
            own = by_policy.get(policy)
            d = analysis.weights[policy].diagnostics
            if own is not None and abs(score - own.mean()) > DISAGREEMENT:
                findings.append(f"{policy} ({variant}): P0's responses reweighted to it score {score:.2f}, its own responses "
                                f"{own.mean():.2f}. The weights misjudge this policy; do not rank it by weighted estimates.")
            elif own is None and base is not None and score > base.mean() and (d.ess_fraction or 0) < ESS_WARNING:
                findings.append(f"{policy} ({variant}): reweighted, it scores {score:.2f}, above {report.base_policy}'s "
                                f"{base.mean():.2f}, on {d.ess_fraction * d.n:.1f} effective responses: that ranking is noise, not evidence.")
    if analysis.uncertainty:
        median = float(np.median(np.concatenate([sd for _, sd in analysis.uncertainty.values()])))
        if median > FLAT_SHARE * UNIFORM_SD:
            findings.append(f"The judge's score distributions are nearly flat (median sd {median:.2f}; guessing uniformly "
                            f"gives {UNIFORM_SD:.2f}): its scores carry little information about the responses.")
    for variant, pairs in analysis.oracle.items():
        if pairs:
            judge, oracle = _pooled(pairs)
            pearson, _ = correlations(judge, oracle)
            if pearson is None or pearson < WEAK_CORRELATION:
                findings.append(f"The {variant} judge agrees weakly with the oracle (Pearson r {_num(pearson, '.2f')} on {len(judge)} "
                                "labels): calibrating it to the oracle carries little information.")
    if report.run and report.run.config.models[report.run.config.judge.model].provider == "local":
        findings.append(f"The judge is an embedded model ({report.run.config.models[report.run.config.judge.model].model}). On "
                        "the quick start it tells evasive or garbled answers from good ones little better than chance, with "
                        "any prompt tried (benchmarks/embedded_judge.py, BENCHMARKS.md): its scores test the pipeline, they "
                        "do not compare policies.")
    if report.run and report.run.config.models[report.run.config.oracle.model] == report.run.config.models[report.run.config.judge.model]:
        findings.append(f"The oracle runs on the judge's own model ({report.run.config.oracle.model}): their agreement "
                        "is not evidence that either is right.")
    return findings


def _run_findings(run: RunFacts | None) -> list[str]:
    if run is None:
        return []
    findings = [line] if (line := partial(run.info)) else []
    for name, c in run.info["coverage"].items():
        failed, retryable = sum(c["failed"].values()), run.retryable.get(name, 0)
        if failed > retryable:
            findings.append(f"{name}: {failed - retryable} items failed for good (permanent errors or attempts used up; see Run).")
        if still := run.info["pending"].get(name):
            findings.append(f"{name}: {still} items are still to do ({retryable} of them failed and are tried again): "
                            "the pipeline does them when it resumes.")
    return findings


def _estimates_section(estimates: dict, wanted: Figures) -> list[str]:
    if not estimates["analysed"]:
        return ["## Estimates", "", f"Not made: {estimates['reason']}", ""]
    lines = ["## Estimates", "", f"cje-eval {estimates['cje_version']}'s estimators on these files "
             "(`analysis/estimates.json`; `arena10k/cje_estimates.py` makes the same calls by hand). "
             f"Settings: {estimates['settings']}.", "",
             f"**Verdict: {estimates['verdict']}**", ""] + [f"- {note}" for note in estimates["notes"]]
    if estimates["dry_run"]:
        lines += ["", "**A dry run: these are estimates of synthetic responses from the loopback server, not a result.**"]
    drawn = {}
    for variant, result in estimates["variants"].items():
        lines += ["", f"### {variant} judge score", "",
                  "| policy | estimator | estimate | SE | 95% interval | ESS | cje status | at the certified ends |",
                  "|---|---|---:|---:|---|---:|---|---|"]
        for estimator, rows in result["estimators"].items():
            if "error" in rows:
                lines.append(f"| | {estimator} | failed: {rows['error']} | | | | | |")
                continue
            drawn.setdefault(variant, {})[estimator] = rows["policies"]
            for policy, row in rows["policies"].items():
                lines.append(f"| {policy} | {estimator} | {row['estimate']:.3f} | {row['standard_error']:.3f} "
                             f"| [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {_pct(row['ess_fraction'])} "
                             f"| {' '.join([row['status'] or rows['status'] or '-', *(f'**{f}**' for f in row.get('flags', []))])} "
                             f"| {_range(row.get('certified_range'))} |")
        warned = sorted({w for rows in result["estimators"].values() for w in rows.get("warnings", [])})
        if warned:
            lines += ["", "<details><summary>cje's warnings</summary>", ""] + [f"- {w}" for w in warned] + ["", "</details>"]
    if drawn:
        wanted.add("estimates.png", figures.estimates, drawn)
        lines += ["", "![estimates](figures/estimates.png)"]
    return lines + [""] + _truth_section(estimates, wanted)


def _truth_section(estimates: dict, wanted: Figures) -> list[str]:
    """Each estimator against the on-policy value the oracle's labels give each target, and as oracle labels are
    taken away (the coverage ablation)."""
    truths = estimates.get("oracle_truth")
    if not truths:
        return []
    lines = ["### Against the oracle's truth", "",
             "A target's truth is the mean oracle label of its own responses (the validation slice), with a normal 95% "
             f"interval; with fewer than {MIN_TRUTH_LABELS} labels it is too uncertain to judge an estimator. "
             "\"Covers\": the estimator's 95% interval contains the truth. \"Agrees\": the two differ by less than their "
             "joint 95% margin, which counts the truth's own uncertainty. cje's Direct estimates above calibrate and "
             "debias with these very labels (its bootstrap refits on the targets' own labels), so they are close to the "
             "truth by construction; the ablation below re-estimates without them, Direct with cluster-robust "
             "inference, which calibrates on the logged labels only.", "",
             "| policy | truth | 95% interval | labels | judges estimators |", "|---|---:|---|---:|---|"]
    for policy, truth in truths.items():
        lines.append(f"| {policy} | {_num(truth['mean'], '.3f')} | {_range(None if truth['ci_low'] is None else [truth['ci_low'], truth['ci_high']])} "
                     f"| {truth['n']} | {'yes' if truth['judged'] else 'no: ' + truth['reason']} |")
    curves = {}
    for variant, result in estimates["variants"].items():
        lines += ["", f"**{variant} judge score**", "",
                  "| policy | estimator | estimate | truth | error | covers | agrees |", "|---|---|---:|---:|---:|---|---|"]
        for estimator, check in result.get("against_truth", {}).items():
            for policy, c in check["policies"].items():
                lines.append(f"| {policy} | {estimator} | {result['estimators'][estimator]['policies'][policy]['estimate']:.3f} "
                             f"| {_num(truths[policy]['mean'], '.3f')} | {_num(c['error'], '+.3f')} | {_yes_no(c['covers'])} "
                             f"| {_yes_no(c['agrees'])} |")
        shares = result.get("coverage_ablation")
        if not shares:
            continue
        lines += ["", f"Coverage ablation ({variant}): re-estimated with a seeded share of the logged responses' oracle "
                  "labels (each share inside the next) and none of the targets' own.", "",
                  "| share of labels | labels | estimator | RMSE against the truth | intervals covering a truth that judges | per policy error |",
                  "|---:|---:|---|---:|---|---|"]
        for share in shares:
            for estimator, made in share["estimators"].items():
                points = curves.setdefault(variant, {}).setdefault(estimator, [])
                if "error" in made:
                    points.append((share["fraction"], None, False))
                    lines.append(f"| {share['fraction']:.0%} | {share['labels']} | {estimator} | failed: {made['error']} | | |")
                    continue
                check = made["against_truth"]
                points.append((share["fraction"], check["rmse"], check["judged"] > 0))
                errors = ", ".join(f"{p} {_num(c['error'], '+.3f')}" for p, c in check["policies"].items())
                covered = f"{check['covered']} of {check['judged']}" if check["judged"] else "none judges"
                rmse = "no estimate (NaN)" if check["rmse"] is None else f"{check['rmse']:.3f}"
                lines.append(f"| {share['fraction']:.0%} | {share['labels']} | {estimator} | {rmse} "
                             f"| {covered} | {errors} |")
    if curves:
        wanted.add("oracle_ablation.png", figures.oracle_ablation, curves)
        lines += ["", "![coverage ablation](figures/oracle_ablation.png)"]
    return lines + [""]


def _weights_section(report: ReportInput, weights: dict[str, PolicyWeights], wanted: Figures) -> list[str]:
    lines = ["## Importance weights", "",
             "w = p_target(response) / p_P0(response) for each of P0's responses. "
             f"ESS below {ESS_GOOD:.0%} fails cje-eval's gate; below {ESS_WARNING:.0%} it is critical.", "",
             "| policy | n | nulls | ESS | effective n | mean w | median w | max w | top 1% share | outside 0.1-10 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for policy, w in weights.items():
        d = w.diagnostics
        effective = None if d.ess_fraction is None else d.ess_fraction * d.n
        lines.append(f"| {policy} | {d.n} | {d.null_logprobs} | {_pct(d.ess_fraction)} | {_num(effective, '.1f')} "
                     f"| {_weight(d.log_mean_weight)} | {_num(d.median_weight, '.3g')} | {_weight(d.max_log_weight)} "
                     f"| {_pct(d.top_share)} | {d.extreme_weights} |")
    # Weights exactly 0 (a target that cannot give the response) have no place on a log scale; they are counted instead.
    known = {policy: w.known[w.known > LOG_ZERO / 2] for policy, w in weights.items()
             if len(w.known) and w.diagnostics.clone_check is None}
    zeros = {policy: int((w.known <= LOG_ZERO / 2).sum()) for policy, w in weights.items()}
    if any(zeros.values()):
        lines += ["", "Weights exactly 0 (the target's max_tokens: it cannot give the response; reasons in each row's "
                  "`zero_probability_reasons`): " + ", ".join(f"{p} {n}" for p, n in zeros.items() if n) + "."]
    known = {policy: values for policy, values in known.items() if len(values)}
    if known:
        titles = {p: f"{p}\nESS {_pct(weights[p].diagnostics.ess_fraction)}, top 1% hold {_pct(weights[p].diagnostics.top_share)}, "
                     f"max w {_weight(weights[p].diagnostics.max_log_weight)}" for p in known}
        wanted.add("log_weights.png", figures.log_weight_histograms, known, titles)
        wanted.add("weight_concentration.png", figures.weight_concentration, known)
        lines += ["", "![log importance weights](figures/log_weights.png)", "",
                  "How much of the total weight the heaviest responses carry; equal weights give the diagonal, and a curve "
                  "hugging the top-left corner means a few responses decide the estimate.", "",
                  "![weight concentration](figures/weight_concentration.png)"]
    if report.run is not None and report.run.info.get("certified"):
        lines += ["", "### Certified log-probs", "",
                  "These policies sample at a temperature below 1 on an endpoint that reports temperature-1 log-probs only: "
                  "each log-prob is a certified interval computed from the top-k alternatives, and the weights use its "
                  "midpoint. The Estimates give each off-policy estimate at the ends of the intervals too.", "",
                  "```", *certified_table(report.run.info), "```"]
    lines += ["", "### Nulls by reason", ""] + _nulls(report, weights)
    return lines + [""]


def _nulls(report: ReportInput, weights: dict[str, PolicyWeights]) -> list[str]:
    first = next(iter(report.variants.values()))
    reasons_by_prompt = {row["prompt_id"]: row.get("metadata", {}).get("null_logprob_reasons") or {} for row in first.logged}
    counts: dict[tuple[str, str], int] = {}
    for policy, w in weights.items():
        for prompt_id, ratio in w.ratios.items():
            if ratio is None:
                reasons = reasons_by_prompt[prompt_id]
                reason = reasons.get(policy) or reasons.get(report.base_policy) or "no reason recorded"
                counts[(policy, reason)] = counts.get((policy, reason), 0) + 1
    lines = ["| policy | reason | responses |", "|---|---|---:|"] + [f"| {p} | {r} | {n} |" for (p, r), n in counts.items()]
    if not counts:
        lines = ["Every logged response has all log-probs."]
    if report.run and report.run.info["excluded"]:
        lines += ["", f"Left out of Phase 2 ({len(report.run.info['excluded'])} rows, no judge score or no response):", ""]
        lines += [f"- {what}: {why}" for what, why in report.run.info["excluded"].items()]
    if report.run and report.run.info["excluded_prompts"]:
        lines += ["", f"Prompts left out of every file ({len(report.run.info['excluded_prompts'])}), items of theirs failed "
                      "for good (`--retry-failed` tries them again):", ""]
        lines += [f"- {prompt_id}: {'; '.join(why)}" for prompt_id, why in report.run.info["excluded_prompts"].items()]
    if report.run and report.run.info["unlabelled"]:
        lines += ["", f"Oracle labels that failed for good ({len(report.run.info['unlabelled'])}), their responses unlabelled:", ""]
        lines += [f"- {key}: {why}" for key, why in report.run.info["unlabelled"].items()]
    check = report.run.info.get("self_check") if report.run else None
    if check and check["compared"]:
        beyond = check["beyond_tolerance"]
        lines += ["", f"Self-check: {check['compared']} of {report.base_policy}'s responses were teacher-forced and compared with "
                      f"their own sampled log-probs; |difference| median {check['median_difference']:.3g}, largest "
                      f"{check['largest_difference']:.3g} nats, "
                      + (f"**{len(beyond)} beyond tolerance** ({', '.join(beyond[:20])}): the weights are not to be used."
                         if beyond else "none beyond tolerance.")]
    return lines


def _clone_section(weights: dict[str, PolicyWeights], wanted: Figures) -> list[str]:
    clones = [p for p, w in weights.items() if w.diagnostics.clone_check is not None]
    if not clones:
        return ["## Clone check", "", "No clone of the logging policy in this dataset.", ""]
    lines = []
    for policy in clones:
        verdict = clone_verdict(policy, weights[policy])
        figure = f"clone_log_ratio_{policy}.png"
        wanted.add(figure, figures.clone_log_ratios, policy, weights[policy].known, verdict)
        lines += [f"## Clone check ({policy})", "",
                  f"{policy} samples exactly as the logging policy does, so each of its log-ratios must be exactly 0 "
                  "(within the endpoint's measured noise on an API whose log-probs vary from call to call). "
                  f"**{verdict}**.", "", f"![clone log-ratios](figures/{figure})", ""]
        errors = weights[policy].diagnostics.clone_errors
        if errors:
            lines += ["Responses beyond the error threshold:", "", *[f"- {e}" for e in errors[:20]], ""]
    return lines


def _judge_section(report: ReportInput, analysis: ReportNumbers, wanted: Figures) -> list[str]:
    wanted.add("judge_scores.png", figures.judge_scores, analysis.scores, analysis.reweighted)
    lines = ["## Judge scores", "",
             f"Each policy's own responses ({report.base_policy}: its logged responses; the others: their fresh draws). "
             "Crosses: P0's responses reweighted to the policy (self-normalised importance weights); a cross far from "
             "its policy's box means the weights and the policy's own responses disagree.", "",
             "![judge scores](figures/judge_scores.png)", "",
             "| variant | policy | own responses | mean | sd | P0 reweighted |", "|---|---|---:|---:|---:|---:|"]
    for variant, by_policy in analysis.scores.items():
        for policy in dict.fromkeys([*by_policy, *analysis.reweighted[variant]]):
            own = by_policy.get(policy, np.array([]))
            mean, sd = (own.mean(), own.std()) if len(own) else (None, None)
            lines.append(f"| {variant} | {policy} | {len(own)} | {_num(mean, '.3f')} | {_num(sd, '.3f')} "
                         f"| {_num(analysis.reweighted[variant].get(policy), '.3f')} |")
    if analysis.uncertainty:
        wanted.add("judge_uncertainty.png", figures.judge_uncertainty, analysis.uncertainty, UNIFORM_SD)
        lines += ["", "### Judge uncertainty", "",
                  "The spread of the judge's score distribution against its mean, per response. The dotted line is "
                  "the spread of a judge that guesses uniformly.", "", "![judge uncertainty](figures/judge_uncertainty.png)"]
    else:
        lines += ["", "No judge score distributions in this dataset, so no uncertainty figure."]
    return lines + [""]


def _oracle_section(analysis: ReportNumbers, wanted: Figures) -> list[str]:
    lines = ["## Judge against oracle", ""]
    labelled = {variant: pairs for variant, pairs in analysis.oracle.items() if pairs}
    if not labelled:
        return lines + ["No oracle labels in this dataset.", ""]
    rows = ["| variant | policy | labels | Pearson r | Spearman rho |", "|---|---|---:|---:|---:|"]
    titles = {}
    for variant, pairs in labelled.items():
        for policy, (judge, oracle) in {**pairs, "all": _pooled(pairs)}.items():
            pearson, spearman = correlations(judge, oracle)
            rows.append(f"| {variant} | {policy} | {len(judge)} | {_num(pearson, '.2f')} | {_num(spearman, '.2f')} |")
        titles[variant] = f"{variant}: Pearson r {_num(pearson, '.2f')}, Spearman {_num(spearman, '.2f')}, n {len(judge)}"
    wanted.add("judge_vs_oracle.png", figures.judge_vs_oracle, labelled, titles)
    return lines + ["On the labelled slice (P0's calibration labels and the targets' validation labels).", "",
                    "![judge against oracle](figures/judge_vs_oracle.png)", "", *rows, ""]


def _run_section(run: RunFacts) -> list[str]:
    lines = ["## Run: failures, retries, tokens and cost", "",
             "| stage | expected | done | failed | missing | retried then done | attempts |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in run.info["coverage"].items():
        lines.append(f"| {name} | {c['expected']} | {c['done']} | {sum(c['failed'].values())} | {c['missing']} "
                     f"| {run.retried.get(name, 0)} | {run.attempts.get(name, 0)} |")
    failures = [f"- {name}: {n} x {reason}" for name, c in run.info["coverage"].items() for reason, n in c["failed"].items()]
    lines += ["", *(["Failed items by their latest error:", "", *failures] if failures else ["No item failed for good."])]
    lines += ["", "Tokens used, failed attempts included (input tokens estimated as in `scripts/estimate.py`; "
              "prices from the configuration the report was given):", "", "```", *usage_table(run.config, run.usage, STAGES.batchable, compare=False), "```",
              *_batches_lines(run), "", "### Configuration", "", "```yaml", yaml.safe_dump(run.info["config"], sort_keys=False).rstrip(), "```", ""]
    return lines


def _batches_lines(run: RunFacts) -> list[str]:
    """The batches sent to Batch APIs: what each gave, and its cost, estimated as the requests it served times the mean
    cost of a call of its stage and model (the table above) at the model's batch price."""
    if not run.batches:
        return []
    lines = ["", "Batches sent to providers' Batch APIs (cost: requests served x the stage's mean call, at the batch price):",
             "", "| batch | stage | model | requests | state | done | failed | records written | failures written | USD |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for b in run.batches:
        use, model = run.usage.get((b.checkpoint, b.model)), run.config.models.get(b.model)
        cost = (use.cost(model) * model.batch_price_factor / use.calls * (b.completed + b.failed)
                if use and model and use.calls else 0.0)
        lines.append(f"| {b.batch_id or b.id + ' (not submitted)'} | {b.checkpoint} | {b.model} | {b.requests} | {b.status} "
                     f"| {b.completed} | {b.failed} | {b.records if b.collected else '-'} "
                     f"| {b.failures if b.collected else '-'} | {cost:.4f} |")
    return lines


def _versions_section(run: RunFacts | None) -> list[str]:
    # numpy computed every number here: the running module's version, whatever the install metadata says.
    lines = ["## Versions", "", f"- Python {platform.python_version()}", f"- numpy {np.__version__}"]
    for package in PACKAGES:
        try:
            lines.append(f"- {package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            lines.append(f"- {package}: not installed")
    if run and any(m["provider"] == "local" for m in run.info["config"]["models"].values()):
        # The embedded models' numbers depend on the kernels llama.cpp was built with (install.sh picks them).
        lines.append(f"- llama.cpp built for {instruction_sets()}")
    if run:
        lines.append(f"- checkpoint and dataset_info schema {run.info['schema']}")
    return lines


def _responses(count: int) -> str:
    return f"{count} response" + ("" if count == 1 else "s")


def _range(ends: list[float] | None) -> str:
    return "-" if ends is None else f"[{ends[0]:.3f}, {ends[1]:.3f}]"


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "**no**"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _weight(log_value: float | None) -> str:
    """A weight given by its log; written as a power of e when a float cannot hold it."""
    if log_value is None:
        return "-"
    return f"{math.exp(log_value):.3g}" if abs(log_value) < 700 else f"e^{log_value:.0f}"

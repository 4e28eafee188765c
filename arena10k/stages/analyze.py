"""Stage 7: the estimates per policy, from cje-eval 0.3's estimators on the Phase 2 files, and what they can say.

cje-eval runs in an environment of its own (install.sh makes `.venv-cje-0.3.0`; its numpy pin is not the
product's), through `arena10k/cje_estimates.py`, once per judge variant, both at once. It writes
`analysis/estimates.json`, which the "Estimates" section of phase2/report.md shows (the runner writes the report once,
at the end of the run). Next to the numbers it says plainly when
they cannot rank the policies: a judge that gives most responses one score, ESS under cje's gate, cje grading a
policy critical, or intervals that overlap. Like Phase 2, it is redone only when the Phase 2 files change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

from arena10k import cje_dataset, oracle_truth
from arena10k.checkpoint import dumps, write_atomic
from arena10k.config import ExperimentConfig
from arena10k.errors import AnalysisError, ConfigError
from arena10k.diagnostics import JudgeSpread
from arena10k.stages import phase2
from arena10k.stages.base import Stage, StageRun
from arena10k.weights import ESS_GOOD
from arena10k.workspace import Workspace

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CJE_SCRIPT = Path(__file__).resolve().parents[1] / "cje_estimates.py"
ESTIMATORS = ("calibrated-ips", "stacked-dr", "direct")  # cje_estimates.calls() runs these
OFF_POLICY = ("calibrated-ips", "stacked-dr")  # the estimators that reweight the logged responses
# A ranking claim needs at least this many oracle labels of P0's responses: cje-eval calibrates the judge score to
# the oracle's scale with isotonic regression, cross-fitted in 5 folds, and a fold of fewer than about 10 labels fits
# a few steps at best (with 6 labels cje reduced its folds and 527 of 2,000 bootstrap replicates were usable).
MIN_CALIBRATION_LABELS = 50
DEGENERATE_SE = 1e-6  # a standard error below this is no measure of uncertainty (seen: 1.6e-15 from 2 labels)
# cje's warnings that weaken a claim: too few labels or samples, reduced folds, failed bootstrap replicates, rows it
# filtered out, estimates it says not to ship.
WEAKENING_WARNINGS = ("fold", "bootstrap", "replicate", "too few", "refuse", "unreliable", "filtered", "only ")
Z_95 = 1.959963984540054


def cje_python(config: ExperimentConfig) -> Path:
    return config.analysis.cje_python or PROJECT_ROOT / ".venv-cje-0.3.0" / "bin" / "python"


def check_environment(config: ExperimentConfig) -> None:
    """At start-up, before any model is called: the analysis will find cje-eval."""
    python = cje_python(config)
    if config.analysis.enabled and not Path(python).is_file():
        raise ConfigError(f"analysis: {python} does not exist. install.sh creates cje-eval 0.3's environment there; "
                          "or set analysis.cje_python to a Python with cje-eval 0.3, or analysis.enabled: false.")


def _inputs(config: ExperimentConfig, workspace: Workspace) -> dict:
    """What the estimates are made from: the Phase 2 files (their sizes and times), the interpreter and the script."""
    files = sorted(p for p in workspace.phase2_dir.rglob("*") if p.suffix == ".jsonl" or p.name == "dataset_info.json")
    return {"phase2": {str(p.relative_to(workspace.phase2_dir)): phase2.file_stamp(p) for p in files},
            "cje_python": str(cje_python(config)), "bootstrap_replicates": config.analysis.bootstrap_replicates,
            "oracle_fractions": config.analysis.oracle_fractions, "seed": config.seed,
            "script": hashlib.sha256(CJE_SCRIPT.read_bytes()).hexdigest()}


def current_estimates(workspace: Workspace) -> dict | None:
    """The estimates of a finished analysis of the Phase 2 files as they are now; None where there is none: no
    analysis, one that did not finish (its inputs are written last), or one of files since rewritten."""
    estimates_path, inputs_path = workspace.analysis_dir / "estimates.json", workspace.analysis_dir / "inputs.json"
    if not estimates_path.exists():
        return None
    estimates = json.loads(estimates_path.read_text())
    if not estimates["analysed"]:  # why none were made: removed with the Phase 2 files it was said of
        return estimates
    if not inputs_path.exists():
        return None
    recorded = json.loads(inputs_path.read_text())["phase2"]
    now = json.loads(dumps({name: phase2.file_stamp(workspace.phase2_dir / name) for name in recorded}))
    return estimates if now == recorded else None


def _progress(variant: str, stream, kept: list[str]) -> None:
    """Says each estimator's end as cje_estimates.py reports it (stage 7 takes minutes at 10,000 prompts); keeps the
    rest of the process's standard error for an error message."""
    for line in stream:
        if line.startswith("progress "):
            _, *what, seconds = line.split()
            print(f"  analyze: {variant}: {' '.join(what)} done in {seconds} s", file=sys.stderr, flush=True)
        else:
            kept.append(line)


def run_cje(python: Path, folders: dict[str, Path], arguments: list[str]) -> dict[str, dict]:
    """cje_estimates.py with these arguments (after the folder) on every variant's folder, the variants at once (cje's
    bootstrap keeps one core busy)."""
    # cje's stacked DR sums over sets of prompt ids, whose order follows Python's string hashing: fixed here, the same
    # files give the same estimates to the last digit (measured: standard errors 1e-16 apart under other seeds).
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    processes = {variant: subprocess.Popen([str(python), str(CJE_SCRIPT), str(folder), *arguments],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
                 for variant, folder in folders.items()}
    errors = {variant: [] for variant in processes}
    readers = {variant: threading.Thread(target=_progress, args=(variant, process.stderr, errors[variant]), daemon=True)
               for variant, process in processes.items()}
    for reader in readers.values():
        reader.start()
    results = {}
    try:
        for variant, process in processes.items():
            out = process.stdout.read()
            process.wait()
            readers[variant].join()
            if process.returncode != 0:
                message = "".join(errors[variant]).strip()[-2000:]
                raise AnalysisError(f"cje-eval failed on {folders[variant]} (exit {process.returncode}):\n{message}")
            results[variant] = json.loads(out.strip().splitlines()[-1])
    finally:
        for process in processes.values():
            process.kill()  # only the ones still running, after a failure or an interruption
            process.wait()
    return results


def settings(config: ExperimentConfig) -> str:
    """How cje was called, where it differs from its defaults: the report and the table say it."""
    return (f"cje's defaults, but Direct's cluster bootstrap with {config.analysis.bootstrap_replicates} replicates "
            "(cje's default 2000: the same estimates, standard errors and intervals within their Monte Carlo error; "
            "analysis.bootstrap_replicates)"
            + ("; the coverage ablation at " + ", ".join(f"{f:.0%}" for f in config.analysis.oracle_fractions)
               + " of the logged oracle labels (seed " + str(config.seed) + "), with Direct's cluster-robust inference "
               "(analysis.oracle_fractions)" if config.analysis.oracle_fractions else ""))


def estimate_flags(row: dict) -> list[str]:
    """What is wrong with an estimate as cje returned it, for the tables and the figure (the verdict's gates say what
    it means): no value, an interval that does not contain its estimate, or one of zero width."""
    values = (row["estimate"], row["ci_low"], row["ci_high"])
    if any(value is None or math.isnan(value) for value in values):
        return ["not a number"]
    flags = [] if row["ci_low"] <= row["estimate"] <= row["ci_high"] else ["outside its interval"]
    return flags + (["zero-width interval"] if row["ci_high"] - row["ci_low"] <= DEGENERATE_SE else [])


def _reliable(estimator: dict, policy: str) -> bool:
    """cje's diagnostics let this policy's estimate stand: ESS at its gate, not graded critical, inside its own
    interval, with a standard error that is not degenerate."""
    row = estimator["policies"][policy]
    ess_ok = row["ess_fraction"] is None or row["ess_fraction"] >= ESS_GOOD
    return (ess_ok and row["status"] != "critical" and row["ci_low"] <= row["estimate"] <= row["ci_high"]
            and row["standard_error"] > DEGENERATE_SE)


def weakening_warnings(estimator: dict) -> list[str]:
    """The warnings cje gave this estimator that weaken any claim made from it."""
    return [w for w in estimator.get("warnings", []) if any(sign in w.lower() for sign in WEAKENING_WARNINGS)]


def run_gates(estimates: dict) -> list[str]:
    """The gates a ranking claim needs of the run as a whole, that it does not pass: each says what failed and what
    would fix it. (The gates of each estimate behind a claim are _reliable's and weakening_warnings'.)"""
    failed = []
    labels = estimates["oracle_calibration_labels"]
    if labels < MIN_CALIBRATION_LABELS:
        failed.append(f"oracle labels: {labels} calibration labels, {MIN_CALIBRATION_LABELS} needed (cje calibrates the "
                      "judge in 5 cross-fitted folds, about 10 labels a fold); label more prompts (oracle."
                      "calibration_fraction, or more prompts)")
    clones = estimates["clone_checks"]
    if not clones:
        failed.append("clone check: the config has no clone of the logging policy, so nothing checked the weights end to "
                      "end; add a target identical to the logging policy")
    elif any(check != "PASS" for check in clones.values()):
        failed.append("clone check: " + ", ".join(f"{c} {check or 'not made'}" for c, check in clones.items() if check != "PASS")
                      + "; the weights are not to be trusted until it passes")
    errors = [f"{name}, {estimator}" for name, variant in estimates["variants"].items()
              for estimator, result in variant["estimators"].items() if "error" in result]
    if errors:
        failed.append(f"estimator calls: {', '.join(errors)} failed (the notes say why)")
    return failed


def separated_pairs(estimator: dict) -> list[tuple[str, str]]:
    """(higher, lower) pairs whose 95% intervals do not overlap, among estimates that cje's diagnostics let stand."""
    rows = estimator["policies"]
    return [(a, b) for a in rows for b in rows
            if a != b and _reliable(estimator, a) and _reliable(estimator, b) and rows[a]["ci_low"] > rows[b]["ci_high"]]


def clone_agreement(variant: dict, clone: str) -> dict | None:
    """A clone's Direct estimate (its own responses) against the logging policy's value from the logged data (its
    calibrated-IPS estimate, whose weights are all 1): two estimates of one value, which must agree."""
    estimators = variant["estimators"]
    ips, direct = estimators.get("calibrated-ips", {}), estimators.get("direct", {})
    if "policies" not in ips or "policies" not in direct or clone not in ips["policies"]:
        return None
    logged, own = ips["policies"][clone], direct["policies"][clone]
    difference = own["estimate"] - logged["estimate"]
    margin = Z_95 * math.hypot(own["standard_error"], logged["standard_error"])
    return {"logged_value": logged["estimate"], "direct": own["estimate"], "difference": difference,
            "margin_95": margin, "agrees": abs(difference) <= margin}


def _certified_range(variant: dict, estimator: str, policy: str) -> list[float] | None:
    """The span of the estimate at the point values and at both ends of the certified log-prob intervals, where it
    was computed at all three. The ends are the ones that move an importance-weighted mean furthest (phase2.
    write_certified_ends); an estimator that calibrates and cross-fits the weights (stacked DR) need not move
    monotonically with them, so this is the span of three estimates, not a bound."""
    ends = [variant.get("certified_ends", {}).get(end, {}).get(estimator, {}) for end in phase2.CERTIFIED_ENDS]
    point = variant["estimators"].get(estimator, {})
    values = [e["policies"][policy]["estimate"] for e in (point, *ends) if policy in e.get("policies", {})]
    values = [v for v in values if not math.isnan(v)]
    return [min(values), max(values)] if len(values) == 1 + len(phase2.CERTIFIED_ENDS) else None


def holds_over_certified_range(variant: dict, estimator: str, pairs: list[tuple[str, str]]) -> bool | None:
    """Whether every pair told apart stays told apart at both ends of the certified intervals; None where the
    estimator does not reweight or nothing was certified."""
    if estimator not in OFF_POLICY or "certified_ends" not in variant:
        return None
    at_ends = [variant["certified_ends"][end].get(estimator, {}) for end in phase2.CERTIFIED_ENDS]
    return all("policies" in end and set(pairs) <= set(separated_pairs(end)) for end in at_ends)


DIRECT_SAW_THE_TRUTH = (" (cje's Direct calibrates and debiases with these very labels, so it is close to the truth by "
                        "construction; the coverage ablation's Direct, calibrated on the logged labels only, is the "
                        "independent check)")


def contradicted_by_truth(variant: dict, estimator: str) -> list[str]:
    """The policies whose estimate by this estimator differs from a truth that can judge it by more than their joint
    95% margin: no ranking claim rests on them."""
    check = variant.get("against_truth", {}).get(estimator)
    return [] if check is None else [p for p, c in check["policies"].items() if c["agrees"] is False]


def truth_notes(estimates: dict) -> list[str]:
    """What the oracle's truth says of each estimator, or why it cannot say."""
    truths = estimates.get("oracle_truth", {})
    if not any(truth["judged"] for truth in truths.values()):
        reasons = sorted({truth["reason"] for truth in truths.values()})
        return [f"The oracle's truth cannot judge any estimator here: {'; '.join(reasons)}."] if truths else []
    notes = []
    for name, variant in estimates["variants"].items():
        for estimator, check in variant.get("against_truth", {}).items():
            if not check["judged"]:
                continue
            missed = [p for p, c in check["policies"].items() if c["agrees"] is False]
            held_out = "" if estimator != "direct" else DIRECT_SAW_THE_TRUTH
            notes.append(f"{name}, {estimator}: against the oracle's truth{held_out}, RMSE {check['rmse']:.3f}; its 95% "
                         f"interval covers the truth for {check['covered']} of {check['judged']} policies"
                         + (f"; it DISAGREES with the truth beyond their joint 95% margin for {', '.join(missed)}." if missed else "."))
    return notes


def findings(estimates: dict, logging_policy: str) -> tuple[str, list[str]]:
    """The verdict (one sentence) and the notes behind it, for the report and the terminal."""
    notes, ranked, unsure = [], [], []
    for name, variant in estimates["variants"].items():
        spread = variant["judge"]
        blind = not JudgeSpread(**spread).tells_apart
        if blind:
            notes.append(f"{name} judge scores: {spread['commonest_share']:.0%} of the {spread['responses']} responses "
                         f"score {spread['commonest']:.3f} ({spread['distinct']} distinct scores); the judge hardly "
                         "separates responses, so no estimate made from it can rank the policies.")
        for estimator, result in variant["estimators"].items():
            if "error" in result:
                notes.append(f"{name}, {estimator}: cje-eval failed: {result['error']}")
                continue
            weak = [f"{p} (ESS {row['ess_fraction']:.0%})" for p, row in result["policies"].items()
                    if row["ess_fraction"] is not None and row["ess_fraction"] < ESS_GOOD]
            critical = [p for p, row in result["policies"].items() if row["status"] == "critical"]
            if weak:
                notes.append(f"{name}, {estimator}: ESS under cje's {ESS_GOOD:.0%} gate for {', '.join(weak)}.")
            if critical:
                notes.append(f"{name}, {estimator}: cje grades {', '.join(critical)} critical (its warnings: phase2/report.md, analysis/estimates.json).")
            pairs = separated_pairs(result)
            weakening = weakening_warnings(result)
            if weakening and pairs:
                notes.append(f"{name}, {estimator}: what it tells apart is not claimed, for cje's warnings: " + " | ".join(weakening))
                pairs = []
            contradicted = contradicted_by_truth(variant, estimator)
            if contradicted and any(a in contradicted or b in contradicted for a, b in pairs):
                notes.append(f"{name}, {estimator}: what it tells apart of {', '.join(contradicted)} is not claimed: its "
                             "estimates disagree with the oracle's truth (below).")
                pairs = [(a, b) for a, b in pairs if a not in contradicted and b not in contradicted]
            holds = holds_over_certified_range(variant, estimator, pairs)
            if holds is False:
                unsure.append(f"{name}, {estimator}")
                notes.append(f"{name}, {estimator}: with the log-probs at the ends of their certified intervals the "
                             "policies it tells apart are no longer all told apart (the certified ranges in the table).")
            elif holds and pairs:
                notes.append(f"{name}, {estimator}: what it tells apart holds over the whole certified range of the log-probs.")
            if pairs and not blind and holds is not False:
                ranked.append(f"{name}, {estimator}: " + "; ".join(f"{a} above {b}" for a, b in pairs))
            elif not pairs and not weakening:
                notes.append(f"{name}, {estimator}: the 95% intervals of every two policies it can estimate overlap.")
            outside = [p for p, row in result["policies"].items() if not row["ci_low"] <= row["estimate"] <= row["ci_high"]]
            degenerate = [p for p, row in result["policies"].items() if row["standard_error"] <= DEGENERATE_SE]
            if outside:
                notes.append(f"{name}, {estimator}: the estimates of {', '.join(outside)} lie outside their own 95% intervals.")
            if degenerate:
                notes.append(f"{name}, {estimator}: the standard errors of {', '.join(degenerate)} are degenerate "
                             f"(at most {DEGENERATE_SE:g}).")
        for clone, agreement in variant["clones"].items():
            if agreement is None:
                continue
            verb = "agrees" if agreement["agrees"] else "DISAGREES"
            notes.append(f"{name}: {clone} (sampling exactly as {logging_policy}) {verb} with {logging_policy}: Direct "
                         f"{agreement['direct']:.3f} vs {agreement['logged_value']:.3f} from the logged responses "
                         f"(difference {agreement['difference']:+.3f}, 95% margin {agreement['margin_95']:.3f}).")
    notes += truth_notes(estimates)
    failed = run_gates(estimates)
    if failed:
        verdict = ("These estimates cannot rank the policies; gates not passed: " + "; ".join(failed) + "."
                   + (" (Some intervals do not overlap, but without these gates that says nothing.)" if ranked else ""))
    elif ranked:
        verdict = ("Some policies are told apart, with 95% intervals that do not overlap and cje's diagnostics passing"
                   + (" over the whole certified range of the log-probs" if any("certified_ends" in v for v in estimates["variants"].values()) else "")
                   + ": " + " | ".join(ranked) + ". Read the notes below before acting on it.")
    elif unsure:
        verdict = ("These estimates cannot rank the policies: what some estimators tell apart does not hold at the ends "
                   f"of the certified log-prob intervals ({', '.join(unsure)}); more alternatives per token narrow them.")
    else:
        verdict = "These estimates cannot rank the policies: no two of them are told apart (why, below)."
    return verdict, notes


def on_policy_values(folder: Path, targets: tuple[str, ...]) -> dict[str, dict]:
    """Each target's truth: the oracle labels of its own responses (its fresh draws), the same in every variant."""
    fresh = cje_dataset.read(folder / "logged.jsonl", targets).fresh
    return {policy: oracle_truth.on_policy_value(row["oracle_label"] for row in fresh.get(policy, [])
                                                 if row["oracle_label"] is not None)
            for policy in targets}


def estimate_policies(config: ExperimentConfig, workspace: Workspace, info: dict) -> dict:
    """cje's estimates of each variant's files (their dataset_info is `info`), and the verdict."""
    folders = {variant: workspace.phase2_dir / variant for variant in phase2.VARIANTS}
    python, replicates = cje_python(config), str(config.analysis.bootstrap_replicates)
    truths = on_policy_values(folders["deterministic"], config.target_policies)
    ablation = []
    if config.analysis.oracle_fractions and any(truth["mean"] is not None for truth in truths.values()):
        ablation = ["--oracle-fractions", ",".join(f"{f:g}" for f in config.analysis.oracle_fractions), "--seed", str(config.seed)]
    # One process per variant makes every estimate of it (its estimators, at the certified ends, the ablation).
    results = run_cje(python, folders, [replicates, "--stage", *ablation])
    variants = {}
    for variant, result in results.items():
        at_ends, shares = result.get("ends", {}), result.get("coverage", [])
        for estimator in [*result["estimators"].values(), *(e for made in at_ends.values() for e in made.values()),
                          *(e for share in shares for e in share["estimators"].values())]:
            if "policies" in estimator:  # cje sorts the policies by name; every output keeps the config's order
                estimator["policies"] = {p: estimator["policies"][p] for p in config.target_policies if p in estimator["policies"]}
        variants[variant] = {"judge": info["judge"][variant], "estimators": result["estimators"]}
        if at_ends:
            variants[variant]["certified_ends"] = at_ends
            for estimator, made in result["estimators"].items():  # the table, the report and estimates.json read it
                for policy, row in made.get("policies", {}).items():
                    row["certified_range"] = _certified_range(variants[variant], estimator, policy)
        for made in result["estimators"].values():
            for row in made.get("policies", {}).values():
                row["flags"] = estimate_flags(row)
        variants[variant]["clones"] = {clone: clone_agreement(variants[variant], clone) for clone in config.clones()}
        variants[variant]["against_truth"] = {estimator: oracle_truth.summary(made["policies"], truths)
                                              for estimator, made in result["estimators"].items() if "policies" in made}
        if shares:
            for made in (e for share in shares for e in share["estimators"].values() if "policies" in e):
                made["against_truth"] = oracle_truth.summary(made["policies"], truths)
            variants[variant]["coverage_ablation"] = shares
    estimates = {"analysed": True, "cje_version": next(iter(results.values()))["cje_version"],
                 "settings": settings(config),
                 "dry_run": workspace.is_dry_run, "logging_policy": config.logging_policy, "variants": variants,
                 # what the run-level gates of the verdict read (run_gates)
                 "oracle_calibration_labels": info["oracle_labels"]["calibration"],
                 "oracle_truth": truths,
                 "clone_checks": {clone: info["weights"][clone]["clone_check"] for clone in info["clones"]}}
    estimates["verdict"], estimates["notes"] = findings(estimates, config.logging_policy)
    return estimates


def table(estimates: dict) -> str:
    if not estimates["analysed"]:
        return f"analyze: no estimates: {estimates['reason']}"
    lines = [f"Estimates (cje-eval {estimates['cje_version']}; 95% intervals)"
             + ("  DRY RUN: synthetic responses from the loopback server, not a result" if estimates["dry_run"] else ""),
             f"  settings: {estimates['settings']}"]
    for name, variant in estimates["variants"].items():
        lines += [f"  {name} judge score", f"    {'policy':<17}{'estimator':<16}{'estimate':>9}{'SE':>8} {'95% interval':>20}{'ESS':>7}  cje"]
        for estimator, result in variant["estimators"].items():
            if "error" in result:
                lines.append(f"    {'':<17}{estimator:<16}  failed: {result['error']}")
                continue
            for policy, row in result["policies"].items():
                ess = "-" if row["ess_fraction"] is None else f"{row['ess_fraction']:.0%}"
                interval = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
                ends = row.get("certified_range")
                lines.append(f"    {policy:<17}{estimator:<16}{row['estimate']:>9.3f}{row['standard_error']:>8.3f}"
                             f" {interval:>20}{ess:>7}  {row['status'] or result['status'] or ''}"
                             + ("" if ends is None else f"  certified range [{ends[0]:.3f}, {ends[1]:.3f}]")
                             + "".join(f"  FLAG: {flag}" for flag in row.get("flags", [])))
    lines += truth_table(estimates)
    return "\n".join(lines + ["", f"Verdict: {estimates['verdict']}"] + [f"  - {note}" for note in estimates["notes"]])


def _fraction(value: float) -> str:
    return f"{value * 100:g}%"


def _ablation_cell(made: dict) -> str:
    """One estimator at one share of the labels: its error against the truth, and how often it covers a truth that
    can judge; or why there is no error."""
    if "error" in made:
        return "failed"
    check = made["against_truth"]
    if check["rmse"] is None:
        return "no estimate (NaN)"
    return f"RMSE {check['rmse']:.3f}, " + (f"{check['covered']}/{check['judged']} covered" if check["judged"] else "not judged")


def truth_table(estimates: dict) -> list[str]:
    """The oracle's truth per policy and, per variant, each ablation estimator's error as oracle labels are taken away."""
    truths = estimates.get("oracle_truth")
    if not truths:
        return []
    lines = ["  oracle truth (mean oracle label of the policy's own responses, 95% interval)"]
    for policy, truth in truths.items():
        value = "-" if truth["mean"] is None else f"{truth['mean']:.3f}"
        interval = "" if truth["ci_low"] is None else f"[{truth['ci_low']:.3f}, {truth['ci_high']:.3f}]"
        lines.append(f"    {policy:<17}{value:>9} {interval:>20}  n={truth['n']}" + ("" if truth["judged"] else "  too few to judge"))
    for name, variant in estimates["variants"].items():
        shares = variant.get("coverage_ablation")
        if not shares:
            continue
        estimators = list(shares[0]["estimators"])
        lines.append(f"  {name}: error against the truth with a share of the logged responses' oracle labels and none of the targets'")
        lines.append(f"    {'oracle labels':<18}" + "".join(f"{e:>28}" for e in estimators))
        for share in shares:
            cells = []
            for estimator in estimators:
                made = share["estimators"][estimator]
                cells.append(_ablation_cell(made))
            labels = f"{_fraction(share['fraction'])} ({share['labels']})"
            lines.append(f"    {labels:<18}" + "".join(f"{c:>28}" for c in cells))
    return lines


def run(job: StageRun) -> str:
    config, workspace = job.config, job.workspace
    if not config.analysis.enabled:
        return "analyze: skipped (analysis.enabled is false)"
    estimates_path, inputs_path = workspace.analysis_dir / "estimates.json", workspace.analysis_dir / "inputs.json"
    info = phase2.dataset_info(workspace)
    unusable = phase2.incomplete(info)
    if unusable:
        estimates = {"analysed": False, "reason": unusable}
        write_atomic(estimates_path, json.dumps(estimates, indent=2) + "\n")
        inputs_path.unlink(missing_ok=True)
        return table(estimates)
    inputs = json.loads(dumps(_inputs(config, workspace)))
    if inputs_path.exists() and estimates_path.exists() and json.loads(inputs_path.read_text()) == inputs:
        return ("analyze: the Phase 2 files did not change since the estimates were made\n\n"
                + table(json.loads(estimates_path.read_text())))
    estimates = estimate_policies(config, workspace, info)
    write_atomic(estimates_path, json.dumps(estimates, indent=2) + "\n")
    write_atomic(inputs_path, dumps(inputs) + "\n")
    return f"{table(estimates)}\n\nEstimates: {estimates_path}"


STAGE = Stage("analyze", "cje-eval 0.3's estimates per policy from the Phase 2 files, with an honest verdict", run)

"""Stage 6: check every stage's coverage, compute weight diagnostics, and write the Phase 2 dataset.

The Phase 2 files are what cje-eval loads with its own loader (`cje.analyze_dataset`), 0.3.0 (off-policy: IPS, DR)
and 0.9.3 (Direct mode: the fresh draws, calibrated on the logged file) alike:
`{variant}/logged.jsonl` (the logging policy's responses with every policy's log-prob, judge score and oracle label) and
`{variant}/fresh_draws/{policy}_responses.jsonl` (each target's own judged responses), once with the
deterministic judge score and once with the mean of the judge's score distribution. Every row has an
`observation_id`, the item key of its response, so that cje 0.9.3 never takes the labels of two responses to one
prompt (P0's in the logged file, a target's in its fresh draws) for two labels of one response. A value that is
missing stays null with its reason in `metadata`; rows cje cannot use without a value (no judge score)
are left out and listed in dataset_info.json, never filled in.

A prompt with an item that failed for good (a permanent error such as a prompt longer than a model's context, or its
max_attempts used up) is left out of every file, so that every policy is estimated on the same prompts; the answer
is then partial (`excluded_prompts`, exit status 4) until `--retry-failed` gives those items their attempts back. An
oracle label that failed for good leaves its response unlabelled. Items still to do (`pending`) make Phase 2 incomplete
rather than partial: a rerun does them.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import numpy as np

from arena10k.checkpoint import (ItemState, RecordFields, atomic_writer, dumps, failed_for_good, load_states, tally,
                                 write_atomic)
from arena10k import cje_dataset
from arena10k.config import ExperimentConfig
from arena10k.diagnostics import compute as compute_diagnostics
from arena10k.errors import Arena10kError
from arena10k.preflight import measured_noise
from arena10k.records import SCHEMA_VERSION
from arena10k.weights import bounds, usable_logprob
from arena10k.stages.base import Plan, Stage, StageRun
from arena10k.workspace import Workspace, draw_of, draw_prompt, item_key, prompt_of

VARIANTS = {"deterministic": "score", "uncertainty": "score_mean"}
# What dataset_info.json holds: a version that holds more rebuilds the Phase 2 files an older one made (2: the
# diagnostics of diagnostics.py, judge spreads included).
CONTENTS_VERSION = 2


def clone_tolerance(workspace: Workspace, config: ExperimentConfig, clone: str, forced: dict[str, dict]) -> float:
    """4 standard deviations of the sum of a response's per-token noise, for the longest response scored (0 on
    an exact endpoint, and on the embedded models, which have no preflight)."""
    noise = measured_noise(workspace, config.policies[clone].model)
    longest = max((r["n_tokens"] for r in forced.values() if r["policy"] in (clone, config.logging_policy)), default=0)
    return 4 * noise * math.sqrt(longest)


# Record fields Phase 2 never reads, and the response texts, which it reads back one at a time as it writes them:
# left out as checkpoints are read, so that memory does not grow with response length.
UNUSED_FIELDS = ("token_ids", "token_logprobs")
READ_BACK = {"generate": ("text",)}


def _states(workspace: Workspace, name: str) -> dict[str, ItemState]:
    return load_states(workspace.checkpoint_path(name), drop=UNUSED_FIELDS + READ_BACK.get(name, ()))[0]


@contextmanager
def _phase2_files(phase2_dir: Path, targets: tuple[str, ...]) -> Iterator[Callable[[str, str | None, dict], None]]:
    """write(variant, policy, row): a row of `{variant}/logged.jsonl` (policy None) or of a target's fresh draws,
    each file written atomically as its rows come."""
    with ExitStack() as stack:
        files = {(variant, policy): stack.enter_context(atomic_writer(
                     phase2_dir / variant / ("logged.jsonl" if policy is None else f"fresh_draws/{policy}_responses.jsonl")))
                 for variant in VARIANTS for policy in (None, *targets)}
        yield lambda variant, policy, row: files[variant, policy].write(dumps(row) + "\n")


def remove_stale_fresh_draws(phase2_dir: Path, targets: tuple[str, ...]) -> list[str]:
    """Removes the fresh-draw files of policies that are no longer in the config: cje-eval estimates every file it finds
    in fresh_draws/, so a removed policy would be back in the results. Returns what it removed."""
    kept = {f"{policy}_responses.jsonl" for policy in targets}
    stale = sorted(path for variant in VARIANTS for path in (phase2_dir / variant / "fresh_draws").glob("*_responses.jsonl")
                   if path.name not in kept)
    for path in stale:
        path.unlink()
    return [str(path.relative_to(phase2_dir)) for path in stale]


def _certified_widths(forced: list[dict], nulled: int) -> dict:
    widths = [r["logprob_high"] - r["logprob_low"] for r in forced if r.get("logprob_low") is not None]
    return {"rows": len(widths), "nulled": nulled,
            "median_width": float(np.median(widths)) if widths else None, "max_width": max(widths, default=None),
            "top_k": sorted({r["top_k"] for r in forced if r.get("top_k") is not None})}


CERTIFIED_ENDS = ("lower", "raise")


def write_certified_ends(variant_dir: Path, ratio_bounds: dict[str, dict[str, tuple[float, float]]]) -> None:
    """`{variant}/certified_ends/{lower,raise}/logged.jsonl`: the logged file with every target's log-ratio moved to
    the end of its certified interval that lowers (raises) the estimate. An importance-weighted mean rises with a
    row's weight exactly when the row's reward exceeds the estimate; the rewards are a monotone calibration of the
    judge scores, so rows scoring above the policy's weighted mean judge score take the upper end to raise it, and
    the others the lower end (and the other way round to lower it)."""
    logged = variant_dir / "logged.jsonl"
    threshold = {}
    for policy in ratio_bounds:
        pairs = [(row["target_policy_logprobs"][policy] - row["base_policy_logprob"], row["judge_score"])
                 for row in _rows(logged) if row["target_policy_logprobs"][policy] is not None
                 and row["base_policy_logprob"] is not None]
        largest = max((ratio for ratio, _ in pairs), default=0.0)  # weights relative to the largest stay finite
        weights = [(math.exp(ratio - largest), score) for ratio, score in pairs]
        threshold[policy] = sum(w * y for w, y in weights) / sum(w for w, _ in weights) if weights else 0.0
    for end in CERTIFIED_ENDS:
        with atomic_writer(variant_dir / "certified_ends" / end / "logged.jsonl") as out:
            for row in _rows(logged):
                moved = dict(row["target_policy_logprobs"])
                for policy, by_row in ratio_bounds.items():
                    if moved[policy] is None or row["base_policy_logprob"] is None:
                        continue
                    low, high = by_row[row["prompt_id"]]
                    upper = (row["judge_score"] > threshold[policy]) == (end == "raise")
                    moved[policy] = row["base_policy_logprob"] + (high if upper else low)
                out.write(dumps({**row, "target_policy_logprobs": moved}) + "\n")


def _rows(path: Path) -> Iterator[dict]:
    with path.open() as lines:
        for line in lines:
            yield json.loads(line)


def _reason(states: dict[str, ItemState], key: str, stage: str) -> str:
    state = states.get(key)
    if state is None:
        return f"{stage}: not run"
    return f"{stage}: {state.last_error}"


ANSWER_CHECKPOINTS = ("generate", "teacher_force", "judge")  # a prompt is in the answer only with all of their items


def excluded_prompts(config: ExperimentConfig, expected: dict[str, list[str]], states: dict[str, dict[str, ItemState]]
                     ) -> dict[str, list[str]]:
    """Per prompt left out of the answer, its items that failed for good, each with its error. A target's later draw
    that failed leaves out that draw only (excluded), as the prompt's other responses still estimate it."""
    reasons: dict[str, list[str]] = {}
    for name in ANSWER_CHECKPOINTS:
        for key in expected[name]:
            if draw_of(key) == 0 and failed_for_good(states[name].get(key), config.max_attempts):
                prompt_id, _, policy = key.rpartition("|")
                reasons.setdefault(prompt_id, []).append(f"{name} {policy}: {states[name][key].last_error}")
    return reasons


def build(config: ExperimentConfig, workspace: Workspace, plan: Plan) -> dict:
    prompts = workspace.load_prompts()
    expected = plan.expected_keys(config, [p.prompt_id for p in prompts])
    states = {name: _states(workspace, name) for name in plan.checkpoints}
    left_out = excluded_prompts(config, expected, states)
    lost_labels = {key: states[name][key].last_error for name in ("oracle_calibration", "oracle_validation")
                   for key in expected[name] if failed_for_good(states[name].get(key), config.max_attempts)
                   and prompt_of(key) not in left_out}
    # Only the items the config asks for: a label of a prompt no longer in the oracle slice is not used.
    records = {name: {k: states[name][k].record for k in keys if k in states[name] and states[name][k].record is not None}
               for name, keys in expected.items()}
    coverage = {name: tally(keys, states[name]) for name, keys in expected.items() if keys}
    targets, logging_policy = config.target_policies, config.logging_policy

    logged_rows, fresh_draws = 0, {p: 0 for p in targets}
    calibration_labels, validation_labels = 0, {p: 0 for p in targets}
    excluded: dict[str, str] = {}
    ratio_bounds: dict[str, dict[str, tuple[float, float]]] = {p: {} for p in targets}
    clones = config.clones()
    nulled = {p: 0 for p in config.policy_names}
    stale = remove_stale_fresh_draws(workspace.phase2_dir, targets)
    texts = RecordFields(workspace.checkpoint_path("generate"))
    with closing(texts), _phase2_files(workspace.phase2_dir, targets) as write:
        for prompt in (p for p in prompts if p.prompt_id not in left_out):
            base_key = item_key(prompt.prompt_id, logging_policy)
            response = records["generate"].get(base_key)
            judgement = records["judge"].get(base_key)
            forced = {p: records["teacher_force"].get(item_key(prompt.prompt_id, p)) for p in config.policy_names}
            logprobs = {p: usable_logprob(record, config.max_certified_width) for p, record in forced.items()}
            for policy, (_, too_wide) in logprobs.items():
                nulled[policy] += too_wide is not None
            base = logprobs[logging_policy][0]
            for policy in targets:
                target = logprobs[policy][0]
                if response is not None:
                    if base is not None and target is not None and policy in clones:
                        # one distribution scored twice by one computation: its ratio is exactly what was scored
                        ratio_bounds[policy][prompt.prompt_id] = (target - base, target - base)
                    elif base is not None and target is not None:
                        (base_low, base_high), (low, high) = bounds(forced[logging_policy]), bounds(forced[policy])
                        ratio_bounds[policy][prompt.prompt_id] = (low - base_high, high - base_low)
            if response is None:
                excluded[f"{prompt.prompt_id} (logged)"] = _reason(states["generate"], base_key, "generate")
            elif judgement is None:
                excluded[f"{prompt.prompt_id} (logged)"] = _reason(states["judge"], base_key, "judge")
            else:
                oracle = records["oracle_calibration"].get(base_key)
                text = texts.get(states["generate"][base_key], "text")
                for variant, score_field in VARIANTS.items():
                    write(variant, None, _logged_row(config, prompt, response, text, judgement, score_field, forced, logprobs,
                                                     oracle, states))
                logged_rows, calibration_labels = logged_rows + 1, calibration_labels + (oracle is not None)
            for policy, index in ((p, i) for p in targets for i in range(config.draws(p))):
                key = item_key(draw_prompt(prompt.prompt_id, index), policy)
                draw, draw_judgement = records["generate"].get(key), records["judge"].get(key)
                if draw is None or draw_judgement is None:
                    excluded[f"{prompt.prompt_id} ({policy} fresh draw{f' {index}' if index else ''})"] = (
                        _reason(states["generate"], key, "generate") if draw is None else _reason(states["judge"], key, "judge"))
                    continue
                oracle = records["oracle_validation"].get(key)  # the validation slice labels the first draw
                text = texts.get(states["generate"][key], "text")
                for variant, score_field in VARIANTS.items():
                    write(variant, policy, _fresh_row(prompt, draw, index, text, draw_judgement, score_field, oracle))
                fresh_draws[policy] += 1
                validation_labels[policy] += oracle is not None

    forced_by_policy: dict[str, list[dict]] = {p: [] for p in config.policy_names}
    for record in records["teacher_force"].values():
        forced_by_policy[record["policy"]].append(record)
    zero = {p: dict(Counter(r["zero_probability"].partition(":")[0] for r in forced_by_policy[p] if r.get("zero_probability")))
            for p in targets}
    certified = {p: _certified_widths(forced_by_policy[p], nulled[p]) for p in config.policy_names}
    if any(c["rows"] for c in certified.values()):
        for variant in VARIANTS:
            write_certified_ends(workspace.phase2_dir / variant, ratio_bounds)
    else:
        for variant in VARIANTS:
            shutil.rmtree(workspace.phase2_dir / variant / "certified_ends", ignore_errors=True)
    files = {variant: cje_dataset.read(workspace.phase2_dir / variant / "logged.jsonl", targets) for variant in VARIANTS}
    tolerance = {clone: clone_tolerance(workspace, config, clone, records["teacher_force"]) for clone in clones}
    diagnostics = compute_diagnostics(files, targets, clones, tolerance)
    checked = [r for r in records["teacher_force"].values() if r.get("sampled_difference") is not None]
    self_check = {"compared": len(checked),
                  "not_compared": dict(Counter(r["not_compared"] for r in records["teacher_force"].values() if r.get("not_compared"))),
                  "median_difference": float(np.median([abs(r["sampled_difference"]) for r in checked])) if checked else None,
                  "largest_difference": max((abs(r["sampled_difference"]) for r in checked), default=None),
                  "beyond_tolerance": sorted(r["prompt_id"] for r in checked if abs(r["sampled_difference"]) > r["sampled_tolerance"])}
    info = {
        "schema": SCHEMA_VERSION,
        "experiment": config.name,
        "logging_policy": logging_policy,
        "target_policies": list(targets),
        "clones": list(config.clones()),
        "dry_run": workspace.is_dry_run,  # synthetic responses from the loopback server, not a real dataset
        "endpoints": {name: m.endpoint() for name, m in config.used_models().items()},
        "prompts": len(prompts),
        "logged_rows": logged_rows,
        "fresh_draws": fresh_draws,
        "oracle_labels": {"calibration": calibration_labels, "validation": validation_labels},
        "excluded": dict(sorted(excluded.items())),  # rows of items still to do
        # prompts left out of every file, each with its items that failed for good (--retry-failed tries them again)
        "excluded_prompts": dict(sorted(left_out.items())),
        "unlabelled": dict(sorted(lost_labels.items())),  # oracle labels that failed for good: those rows have none
        "pending": plan.pending(config, expected, states),  # per checkpoint, items a rerun would still do
        "removed_stale_files": stale,  # fresh draws of policies no longer in the config, removed when this was written
        "coverage": {name: {"expected": c.expected, "done": c.done, "failed": dict(c.failed), "missing": c.missing}
                     for name, c in coverage.items()},
        # per target its weights' diagnostics, per judge variant its scores' spread (diagnostics.py), of the files as written
        **diagnostics.to_info(),
        # per policy, its log-probs certified from temperature-1 alternatives: widths (nats), rows nulled as too wide
        "certified": {p: c for p, c in certified.items() if c["rows"]},
        "max_certified_width": config.max_certified_width,
        # per target, P0's responses it cannot give (its max_tokens), by rule: weight exactly 0 (LOG_ZERO in the files)
        "zero_probability": {p: counts for p, counts in zero.items() if counts},
        # teacher-forced minus sampled log-probs of the logging policy's own responses, where they were sampled with some
        "self_check": self_check,
        "config": config.model_dump(mode="json"),
    }
    write_atomic(workspace.phase2_dir / "dataset_info.json", json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return info


def _logged_row(config, prompt, response, text, judgement, score_field, forced, logprobs, oracle, states) -> dict:
    def value(policy):
        return logprobs[policy][0]

    nulls = {p: logprobs[p][1] or _reason(states["teacher_force"], item_key(prompt.prompt_id, p), "teacher_force")
             for p in config.policy_names if logprobs[p][0] is None}
    return {
        "prompt_id": prompt.prompt_id,
        "observation_id": item_key(prompt.prompt_id, config.logging_policy),
        "prompt": prompt.prompt,
        "response": text,
        "base_policy_logprob": value(config.logging_policy),
        "target_policy_logprobs": {p: value(p) for p in config.target_policies},
        "judge_score": judgement[score_field],
        "oracle_label": None if oracle is None else oracle["score_mean"],
        "metadata": {
            "source_id": prompt.source_id,
            "finish_reason": response["finish_reason"],
            "n_tokens": response["n_tokens"],
            "judge_variance": judgement["score_variance"] if score_field == "score_mean" else None,
            "judge_probability_mass": judgement["probability_mass"],
            "judge_method": judgement["method"] + ("" if score_field == "score_mean" else ":greedy"),
            "teacher_forcing_methods": {p: forced[p]["method"] for p in config.policy_names if forced[p] is not None},
            "certified_logprob_intervals": {p: list(bounds(forced[p])) for p in config.policy_names
                                            if forced[p] is not None and forced[p].get("logprob_low") is not None},
            "zero_probability_reasons": {p: forced[p]["zero_probability"] for p in config.policy_names
                                         if forced[p] is not None and forced[p].get("zero_probability")},
            "null_logprob_reasons": nulls,
        },
    }


def _fresh_row(prompt, draw, index, text, judgement, score_field, oracle) -> dict:
    return {
        "prompt_id": prompt.prompt_id,
        "observation_id": item_key(draw_prompt(prompt.prompt_id, index), draw["policy"]),
        "target_policy": draw["policy"],
        "draw_idx": index,
        "response": text,
        "judge_score": judgement[score_field],
        "oracle_label": None if oracle is None else oracle["score_mean"],
        "metadata": {
            "finish_reason": draw["finish_reason"],
            "n_tokens": draw["n_tokens"],
            "judge_variance": judgement["score_variance"] if score_field == "score_mean" else None,
        },
    }


def summary_table(info: dict) -> str:
    lines = ["Coverage", f"  {'stage':<20}{'expected':>9}{'done':>7}{'failed':>8}{'missing':>9}"]
    for name, c in info["coverage"].items():
        lines.append(f"  {name:<20}{c['expected']:>9}{c['done']:>7}{sum(c['failed'].values()):>8}{c['missing']:>9}")
        lines += [f"      failed: {n} x {reason}" for reason, n in c["failed"].items()]
    clones = info["clones"]
    lines += ["", f"Importance weights (w = exp(logp_target - logp_{info['logging_policy']}))",
              f"  {'policy':<17}{'n':>5}{'nulls':>7}{'median w':>11}{'ESS':>8}{'max log w':>11}{'extreme':>9}  check"]
    for policy, d in info["weights"].items():
        median = "-" if d["median_weight"] is None else f"{d['median_weight']:.3g}"
        ess = "-" if d["ess_fraction"] is None else f"{100 * d['ess_fraction']:.1f}%"
        top = "-" if d["max_log_weight"] is None else f"{d['max_log_weight']:.2f}"
        lines.append(f"  {policy:<17}{d['n']:>5}{d['null_logprobs']:>7}{median:>11}{ess:>8}{top:>11}{d['extreme_weights']:>9}  {d['clone_check'] or ''}")
        lines += [f"      ERROR {e}" for e in d["clone_errors"]]
    if info.get("certified"):
        lines += ["", f"Certified log-probs (from temperature-1 top-k alternatives; rows wider than "
                      f"{info['max_certified_width']:g} nats are null)", *certified_table(info)]
    for policy, counts in info.get("zero_probability", {}).items():
        lines.append(f"  {policy}: weight exactly 0 for " + ", ".join(f"{n} responses {rule}" for rule, n in counts.items())
                     + " (its max_tokens; reasons in each row's metadata)")
    lines += ["", f"Phase 2: {info['logged_rows']} logged rows, fresh draws {info['fresh_draws']}, "
              f"oracle labels {info['oracle_labels']['calibration']} calibration / {sum(info['oracle_labels']['validation'].values())} validation"]
    lines.append(f"Clone check (targets that sample exactly as {info['logging_policy']}, so every weight must be 1): "
                 + (", ".join(f"{p} {info['weights'][p]['clone_check']}" for p in clones) if clones else "no clone in this config"))
    check = info["self_check"]
    lines.append(f"Self-check (teacher-forced vs sampled log-probs of {info['logging_policy']}'s responses): "
                 + (f"{check['compared']} compared, |difference| median {check['median_difference']:.3g}, "
                    f"largest {check['largest_difference']:.3g} nats, "
                    f"{len(check['beyond_tolerance'])} beyond tolerance" if check["compared"] else "none compared")
                 + "".join(f"; {n} not compared: {why}" for why, n in check.get("not_compared", {}).items())
                 + (" (a dry run: the loopback server samples in a chat template of its own, so its responses are "
                    "expected to score apart under the config's; not a gate here)" if info["dry_run"] and check["compared"]
                    and check["beyond_tolerance"] else ""))
    if info["removed_stale_files"]:
        lines.append(f"Removed {len(info['removed_stale_files'])} fresh-draw files of policies no longer in the config "
                     f"(cje-eval would have estimated them): {', '.join(info['removed_stale_files'])}")
    if info["excluded"]:
        lines.append(f"  rows still to do, left out ({len(info['excluded'])}):")
        lines += [f"    {what}: {why}" for what, why in info["excluded"].items()]
    if info["excluded_prompts"]:
        lines.append(f"Prompts left out of every file, items of theirs failed for good ({len(info['excluded_prompts'])}; "
                     "--retry-failed tries them again):")
        lines += [f"    {prompt_id}: {'; '.join(why)}" for prompt_id, why in info["excluded_prompts"].items()]
    if info["unlabelled"]:
        lines.append(f"Oracle labels that failed for good, their responses unlabelled ({len(info['unlabelled'])}):")
        lines += [f"    {key}: {why}" for key, why in info["unlabelled"].items()]
    return "\n".join(lines)


def certified_table(info: dict) -> list[str]:
    """Per policy teacher-forced as certified intervals (temperature-1 endpoints): their widths and the rows nulled."""
    lines = [f"  {'policy':<17}{'top-k':>7}{'rows':>6}{'median width':>14}{'max width':>11}{'nulled':>8}"]
    for policy, c in info["certified"].items():
        lines.append(f"  {policy:<17}{','.join(map(str, c['top_k'])):>7}{c['rows']:>6}{c['median_width']:>14.3g}"
                     f"{c['max_width']:>11.3g}{c['nulled']:>8}")
    return lines


def dataset_info(workspace: Workspace) -> dict:
    """What stage 6 wrote of the Phase 2 files (dataset_info.json), or an error saying to run it."""
    path = workspace.phase2_dir / "dataset_info.json"
    if not path.is_file():
        raise Arena10kError(f"No Phase 2 files in {workspace.phase2_dir}: run stage 6 first "
                            "(scripts/06_validate_and_write_phase2.py, or the runner).")
    return json.loads(path.read_text())


def incomplete(info: dict) -> str | None:
    """One line on what keeps the Phase 2 files (their dataset_info) from being a usable dataset, or None."""
    coverage = info["coverage"]
    problems = [f"{name} {coverage[name]['done']}/{coverage[name]['expected']} done, {count} still to do"
                for name, count in info["pending"].items()]
    failed_clones = [p for p in info["clones"] if info["weights"][p]["clone_check"] != "PASS"]
    disagreeing = [] if info["dry_run"] else info["self_check"]["beyond_tolerance"]
    if info["logged_rows"] == 0:
        left_out = len(info["excluded_prompts"])
        return ("Phase 2 is empty: no logged response has a judge score" + (f" ({'; '.join(problems)})" if problems else "")
                + (f"; all {left_out} prompts are left out, their items failed for good (phase2/summary.txt says why; "
                   "--retry-failed tries them again)." if left_out else "."))
    if failed_clones:
        return (f"The clone check failed for {', '.join(failed_clones)}: the importance weights are not to be used "
                "(see phase2/report.md).")
    if disagreeing:
        return (f"The self-check failed: {len(disagreeing)} of the logging policy's responses score differently when "
                "teacher-forced than they were sampled, so the importance weights are not to be used (see summary.txt).")
    if problems:
        return f"Phase 2 is incomplete: {'; '.join(problems)}."
    return None


def partial(info: dict) -> str | None:
    """One line on what the answer leaves out for good (prompts, oracle labels), or None when it leaves out nothing."""
    prompts, labels = info["excluded_prompts"], info["unlabelled"]
    if not prompts and not labels:
        return None
    reasons = Counter(reason.partition(": ")[2] for why in prompts.values() for reason in why)
    commonest = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(3))
    return ("The answer is partial: " + "; ".join(
        ([f"{len(prompts)} of {info['prompts']} prompts are left out of every file, items of theirs failed for good "
          f"({commonest})"] if prompts else [])
        + ([f"{len(labels)} oracle labels failed for good"] if labels else []))
        + ". The estimates are of the rest; the list with reasons is in phase2/summary.txt. --retry-failed tries "
          "those items again.")


def file_stamp(path: Path) -> list[int] | None:
    """A file's size and modification time: what tells that an appended-to or rewritten file changed."""
    return [path.stat().st_size, path.stat().st_mtime_ns] if path.exists() else None


def _inputs(config: ExperimentConfig, workspace: Workspace, plan: Plan) -> dict:
    """What the Phase 2 files are made from: when none of it changed, they are up to date. Checkpoints are
    appended to or rewritten, never changed in place, so their size and modification time tell."""
    return {"schema": SCHEMA_VERSION, "contents": CONTENTS_VERSION, "config": config.model_dump(exclude={"analysis"}), "dry_run": workspace.is_dry_run,
            "endpoints": {name: m.endpoint() for name, m in config.used_models().items()},
            "prompts": file_stamp(workspace.prompts_path),
            "checkpoints": {name: file_stamp(workspace.checkpoint_path(name)) for name in plan.checkpoints}}


def run(job: StageRun) -> str:
    config, workspace = job.config, job.workspace
    inputs_path = workspace.phase2_dir / "inputs.json"
    inputs = json.loads(dumps(_inputs(config, workspace, job.plan)))
    if inputs_path.exists() and json.loads(inputs_path.read_text()) == inputs:
        return (f"phase2: its inputs did not change since it was written, so the files in {workspace.phase2_dir} are "
                "up to date\n\n" + (workspace.phase2_dir / "summary.txt").read_text().rstrip())
    for made_from_the_old_files in ("estimates.json", "inputs.json"):
        (workspace.analysis_dir / made_from_the_old_files).unlink(missing_ok=True)
    info = build(config, workspace, job.plan)
    table = summary_table(info)
    (workspace.phase2_dir / "summary.txt").write_text(table + "\n")
    write_atomic(inputs_path, dumps(inputs) + "\n")
    return f"{table}\n\nPhase 2 files: {workspace.phase2_dir}"


STAGE = Stage("phase2", "validate coverage, weight diagnostics, write the Phase 2 dataset and its summary", run)

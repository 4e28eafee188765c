"""The oracle's truth per policy and each estimate against it (arena10k/oracle_truth.py), and the coverage ablation's
held-out files (arena10k/cje_estimates.py, run in cje-eval's environment). The stage's use of both on a real run is
checked in tests/test_pipeline.py."""

import json
import math

import pytest
from conftest import PROJECT_ROOT, run_cje

from arena10k.oracle_truth import MIN_TRUTH_LABELS, Z_95, against_truth, on_policy_value, summary
from arena10k.stages.analyze import DIRECT_SAW_THE_TRUTH, findings, truth_table


def test_the_truth_is_the_mean_label_with_a_normal_interval_and_judges_from_its_minimum():
    labels = [0.0, 1.0] * (MIN_TRUTH_LABELS // 2)
    truth = on_policy_value(labels)
    half = Z_95 * math.sqrt(sum((v - 0.5) ** 2 for v in labels) / (len(labels) - 1) / len(labels))
    assert truth["n"] == MIN_TRUTH_LABELS and truth["mean"] == 0.5 and truth["judged"] and truth["reason"] is None
    assert truth["ci_low"] == pytest.approx(0.5 - half) and truth["ci_high"] == pytest.approx(0.5 + half)
    fewer = on_policy_value(labels[:-1])
    assert not fewer["judged"] and fewer["reason"].startswith(f"{MIN_TRUTH_LABELS - 1} oracle labels of its own responses")
    assert on_policy_value([]) == {"n": 0, "mean": None, "ci_low": None, "ci_high": None, "judged": False,
                                   "reason": "no oracle label of its own responses (oracle.validation_fraction)"}
    assert on_policy_value([0.4])["ci_low"] is None  # one label has no spread, so no interval


def estimate(value, half_width):
    return {"estimate": value, "standard_error": half_width / Z_95, "ci_low": value - half_width, "ci_high": value + half_width}


TRUTH = {"n": 100, "mean": 0.5, "ci_low": 0.45, "ci_high": 0.55, "judged": True, "reason": None}


@pytest.mark.parametrize("row, covers, agrees", [
    (estimate(0.52, 0.03), True, True),
    (estimate(0.54, 0.03), False, True),   # outside its interval, inside the joint margin: the truth is uncertain too
    (estimate(0.70, 0.03), False, False),
])
def test_an_estimate_covers_the_truth_in_its_interval_and_agrees_within_the_joint_margin(row, covers, agrees):
    check = against_truth(row, TRUTH)
    assert check == {"error": pytest.approx(row["estimate"] - 0.5), "covers": covers, "agrees": agrees}


def test_a_truth_that_cannot_judge_gives_the_error_and_no_verdict_and_nan_gives_nothing():
    unjudged = {**TRUTH, "judged": False}
    assert against_truth(estimate(0.7, 0.03), unjudged) == {"error": pytest.approx(0.2), "covers": None, "agrees": None}
    assert against_truth(estimate(math.nan, math.nan), TRUTH) == {"error": None, "covers": None, "agrees": None}


def test_the_summary_is_the_rmse_over_policies_with_a_truth_and_counts_coverage_where_it_judges():
    truths = {"a": TRUTH, "b": {**TRUTH, "mean": 0.2, "judged": False}, "c": on_policy_value([])}
    made = summary({"a": estimate(0.53, 0.05), "b": estimate(0.16, 0.05), "c": estimate(0.9, 0.05)}, truths)
    assert made["rmse"] == pytest.approx(math.sqrt((0.03 ** 2 + 0.04 ** 2) / 2))
    assert (made["errors"], made["judged"], made["covered"]) == (2, 1, 1)


def made_up(truths, estimates_by_estimator):
    variant = {"judge": {"responses": 100, "distinct": 40, "commonest": 0.5, "commonest_share": 0.2},
               "estimators": {name: {"method": name, "status": "good", "warnings": [],
                                     "policies": {p: {**row, "ess_fraction": None, "status": "good", "n": 100} for p, row in rows.items()}}
                              for name, rows in estimates_by_estimator.items()}, "clones": {}}
    variant["against_truth"] = {name: summary(made["policies"], truths) for name, made in variant["estimators"].items()}
    return {"variants": {"uncertainty": variant}, "oracle_calibration_labels": 100, "clone_checks": {"twin": "PASS"},
            "oracle_truth": truths}


def test_the_notes_say_which_estimator_disagrees_with_the_truth_and_that_direct_saw_the_labels():
    truths = {"good": TRUTH, "bad": {**TRUTH, "mean": 0.2, "ci_low": 0.15, "ci_high": 0.25}}
    _, notes = findings(made_up(truths, {"calibrated-ips": {"good": estimate(0.51, 0.03), "bad": estimate(0.5, 0.03)},
                                         "direct": {"good": estimate(0.5, 0.03), "bad": estimate(0.21, 0.03)}}), "p0")
    assert ("uncertainty, calibrated-ips: against the oracle's truth, RMSE 0.212; its 95% interval covers the truth for "
            "1 of 2 policies; it DISAGREES with the truth beyond their joint 95% margin for bad.") in notes
    assert any(n.startswith(f"uncertainty, direct: against the oracle's truth{DIRECT_SAW_THE_TRUTH}")
               and n.endswith("covers the truth for 2 of 2 policies.") for n in notes)


def test_no_ranking_claim_rests_on_an_estimate_that_disagrees_with_the_truth():
    truths = {"good": TRUTH, "bad": {**TRUTH, "mean": 0.2, "ci_low": 0.15, "ci_high": 0.25}, "mid": {**TRUTH, "mean": 0.35}}
    separated = {"good": estimate(0.5, 0.03), "bad": estimate(0.42, 0.01), "mid": estimate(0.36, 0.01)}
    verdict, notes = findings(made_up(truths, {"calibrated-ips": separated}), "p0")
    assert ("uncertainty, calibrated-ips: what it tells apart of bad is not claimed: its estimates disagree with the "
            "oracle's truth (below).") in notes
    assert "good above mid" in verdict and "bad" not in verdict.partition("passing")[2]
    agreeing = {"good": estimate(0.5, 0.03), "bad": estimate(0.2, 0.03), "mid": estimate(0.36, 0.01)}
    verdict, notes = findings(made_up(truths, {"calibrated-ips": agreeing}), "p0")
    assert "good above bad" in verdict and not any("is not claimed" in n for n in notes)


def test_a_truth_too_uncertain_everywhere_is_said_once_and_the_table_marks_it():
    few = on_policy_value([0.2, 0.4, 0.9])
    made = made_up({"a": few, "b": few}, {"direct": {"a": estimate(0.5, 0.1), "b": estimate(0.5, 0.1)}})
    _, notes = findings(made, "p0")
    assert [n for n in notes if "truth" in n] == [
        f"The oracle's truth cannot judge any estimator here: 3 oracle labels of its own responses, {MIN_TRUTH_LABELS} "
        "needed to judge an estimator (oracle.validation_fraction, or more prompts)."]
    assert "    a                    0.500       [0.092, 0.908]  n=3  too few to judge" in truth_table(made)


# The ablation's files as cje would read them: cje_estimates.py with its estimator replaced by one that records them.
HELD_OUT = """
import json, runpy, sys
from pathlib import Path
module = runpy.run_path(sys.argv[1])
seen = []
def record(arguments):
    logged = [json.loads(line) for line in open(arguments.get("logged_data_path") or arguments["calibration_data_path"])]
    fresh = [json.loads(line) for path in sorted(Path(arguments.get("fresh_draws_dir") or "/nonexistent").glob("*.jsonl"))
             for line in open(path)]
    seen.append({"estimator": arguments["estimator"], "config": arguments.get("estimator_config"), "labelled": sorted(r["prompt_id"] for r in logged if r["oracle_label"] is not None),
                 "logged": [{k: v for k, v in r.items() if k != "oracle_label"} for r in logged],
                 "fresh_labels": [r["oracle_label"] for r in fresh], "fresh": len(fresh)})
    return {"policies": {}}
module["coverage_ablation"].__globals__["estimate"] = record
shares = module["coverage_ablation"](sys.argv[2], 200, [0.1, 0.5, 1.0], 7)
print(json.dumps({"shares": [[s["fraction"], s["labels"], sorted(s["estimators"])] for s in shares], "seen": seen}))
"""


def test_the_ablation_keeps_nested_seeded_shares_of_the_logged_labels_and_none_of_the_targets(tmp_path):
    folder = tmp_path / "variant"
    (folder / "fresh_draws").mkdir(parents=True)
    logged = [{"prompt_id": f"p{i}", "judge_score": i / 40, "oracle_label": i / 40 if i % 2 else None} for i in range(40)]
    (folder / "logged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logged))
    for policy in ("a", "b"):
        rows = [{"prompt_id": f"p{i}", "target_policy": policy, "judge_score": 0.5, "oracle_label": 0.7} for i in range(40)]
        (folder / "fresh_draws" / f"{policy}_responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cje("0.3.0", HELD_OUT, str(PROJECT_ROOT / "arena10k" / "cje_estimates.py"), str(folder))
    assert result["shares"] == [[0.1, 2, ["calibrated-ips", "direct"]], [0.5, 10, ["calibrated-ips", "direct"]],
                                [1.0, 20, ["calibrated-ips", "direct"]]]
    labelled = [set(seen["labelled"]) for seen in result["seen"]]
    assert labelled[0] == labelled[1] and labelled[2] == labelled[3] and labelled[4] == labelled[5]
    assert labelled[0] < labelled[2] < labelled[4] == {f"p{i}" for i in range(1, 40, 2)}
    assert all(seen["logged"] == [{k: v for k, v in r.items() if k != "oracle_label"} for r in logged] for seen in result["seen"])
    direct = [seen for seen in result["seen"] if seen["estimator"] == "direct"]
    assert all(seen["fresh"] == 80 and seen["fresh_labels"] == [None] * 80 for seen in direct)
    assert all(seen["config"] == {"inference_method": "cluster_robust"} for seen in direct)
    # the same seed keeps the same labels
    again = run_cje("0.3.0", HELD_OUT, str(PROJECT_ROOT / "arena10k" / "cje_estimates.py"), str(folder))
    assert [seen["labelled"] for seen in again["seen"]] == [seen["labelled"] for seen in result["seen"]]

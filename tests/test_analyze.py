"""The analyze stage's verdict, on estimates made up for each case, and the stage's refusals, on fake models.
tests/test_pipeline.py checks its numbers against cje-eval 0.3.0 called by hand on a real run."""

import json

import pytest
import yaml
from conftest import OWN_CONFIG, PROJECT_ROOT, run_cje

from arena10k import pipeline, providers
from arena10k import status as status_module
from arena10k.config import load_config
from arena10k.checkpoint import dumps
from arena10k.stages import analyze, registry
from arena10k.stages.analyze import MIN_CALIBRATION_LABELS, _inputs, clone_agreement, findings
from arena10k.errors import AnalysisError, ItemError
from arena10k.testing.fake_provider import FakeModels, FakeProvider
from arena10k.workspace import Workspace


def row(estimate, half_width, ess=None, status="good", se=None):
    return {"estimate": estimate, "standard_error": half_width / 1.96 if se is None else se, "ci_low": estimate - half_width,
            "ci_high": estimate + half_width, "ess_fraction": ess, "status": status, "n": 20}


def estimates(policies_by_estimator, commonest_share=0.2, clones=None, labels=100, clone_checks=None, warnings=()):
    """Made-up estimates that pass every gate of the run unless told otherwise."""
    variant = {"judge": {"responses": 100, "distinct": 40, "commonest": 0.5, "commonest_share": commonest_share},
               "estimators": {name: {"method": name, "status": "good", "policies": policies, "warnings": list(warnings)}
                              for name, policies in policies_by_estimator.items()},
               "clones": clones or {}}
    return {"variants": {"uncertainty": variant}, "oracle_calibration_labels": labels,
            "clone_checks": {"twin": "PASS"} if clone_checks is None else clone_checks}


SEPARATED = {"good": row(0.8, 0.05), "bad": row(0.3, 0.05)}


@pytest.mark.parametrize("change, gate", [
    (dict(labels=6), "oracle labels: 6 calibration labels, 50 needed"),
    (dict(clone_checks={}), "clone check: the config has no clone"),
    (dict(clone_checks={"twin": None}), "clone check: twin not made"),
    (dict(clone_checks={"twin": "FAIL"}), "clone check: twin FAIL"),
])
def test_a_run_that_fails_a_gate_ranks_nothing_and_the_verdict_names_the_gate(change, gate):
    verdict, _ = findings(estimates({"direct": SEPARATED}, **change), "p0")
    assert verdict.startswith("These estimates cannot rank the policies; gates not passed: ") and gate in verdict


def test_a_failed_estimator_call_ranks_nothing():
    made_up = estimates({"direct": SEPARATED})
    made_up["variants"]["uncertainty"]["estimators"]["stacked-dr"] = {"error": "ValueError: Too few oracle samples (3)"}
    verdict, notes = findings(made_up, "p0")
    assert "estimator calls: uncertainty, stacked-dr failed" in verdict
    assert "uncertainty, stacked-dr: cje-eval failed: ValueError: Too few oracle samples (3)" in notes


@pytest.mark.parametrize("bad, note", [
    ({**row(0.3, 0.05), "estimate": 0.305, "ci_low": 0.284, "ci_high": 0.291}, "lie outside their own 95% intervals"),
    (row(0.3, 0.05, se=1.6e-15), "standard errors of bad are degenerate"),
])
def test_an_estimate_outside_its_interval_or_with_a_degenerate_error_ranks_nothing(bad, note):
    verdict, notes = findings(estimates({"direct": {"good": row(0.8, 0.05), "bad": bad}}), "p0")
    assert verdict.startswith("These estimates cannot rank the policies")
    assert any(note in n for n in notes)


def test_cje_warnings_that_weaken_a_claim_rank_nothing_and_are_listed():
    warned = ["Calibration folds reduced from 5 to 2", "527 of 2000 bootstrap replicates usable"]
    verdict, notes = findings(estimates({"direct": SEPARATED}, warnings=warned), "p0")
    assert verdict.startswith("These estimates cannot rank the policies")
    assert any("not claimed, for cje's warnings: Calibration folds reduced from 5 to 2 | 527 of 2000" in n for n in notes)


def test_policies_whose_intervals_do_not_overlap_are_told_apart():
    verdict, notes = findings(estimates({"direct": {"good": row(0.8, 0.05), "bad": row(0.3, 0.05), "mid": row(0.5, 0.25)}}), "p0")
    assert verdict.startswith("Some policies are told apart")
    assert "uncertainty, direct: good above bad" in verdict
    assert "mid" not in verdict  # its interval overlaps both


def test_overlapping_intervals_cannot_rank():
    verdict, notes = findings(estimates({"direct": {"a": row(0.5, 0.1), "b": row(0.55, 0.1)}}), "p0")
    assert verdict.startswith("These estimates cannot rank the policies")
    assert "uncertainty, direct: the 95% intervals of every two policies it can estimate overlap." in notes


def test_an_estimate_under_the_ess_gate_or_graded_critical_ranks_nothing():
    for weak in (row(0.3, 0.05, ess=0.12), row(0.3, 0.05, ess=0.9, status="critical")):
        verdict, notes = findings(estimates({"calibrated-ips": {"good": row(0.8, 0.05, ess=0.9), "bad": weak}}), "p0")
        assert verdict.startswith("These estimates cannot rank the policies")
        assert any("ESS under cje's 30% gate for bad (ESS 12%)" in n or "cje grades bad critical" in n for n in notes)


def test_a_judge_that_gives_most_responses_one_score_ranks_nothing():
    separated = {"direct": {"good": row(0.8, 0.05), "bad": row(0.3, 0.05)}}
    verdict, notes = findings(estimates(separated, commonest_share=0.96), "p0")
    assert verdict.startswith("These estimates cannot rank the policies")
    assert "96% of the 100 responses score 0.500 (40 distinct scores)" in notes[0]


def test_a_clone_agrees_when_its_direct_estimate_is_within_the_margin_of_the_logged_value():
    def variant(direct_estimate):
        return estimates({"calibrated-ips": {"twin": row(0.40, 0, se=0.01)}, "direct": {"twin": row(direct_estimate, 0, se=0.02)}})["variants"]["uncertainty"]

    near, far = clone_agreement(variant(0.43), "twin"), clone_agreement(variant(0.50), "twin")
    assert near["agrees"] and not far["agrees"]
    assert abs(near["margin_95"] - 1.959963984540054 * (0.01 ** 2 + 0.02 ** 2) ** 0.5) < 1e-12
    _, notes = findings(estimates({"direct": {"twin": row(0.5, 0)}}, clones={"twin": far}), "p0")
    assert any("twin (sampling exactly as p0) DISAGREES with p0: Direct 0.500 vs 0.400" in n for n in notes)


def run(tmp_path, change, capsys):
    raw = yaml.safe_load(OWN_CONFIG.read_text())
    change(raw)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    fake = FakeModels()
    with providers.substituted(fake):
        status = pipeline.main(["--config", str(config), "--data-dir", str(tmp_path / "run")])
    return status, fake, capsys.readouterr()


def test_a_missing_cje_environment_stops_the_run_before_any_model_call(tmp_path, capsys):
    status, fake, output = run(tmp_path, lambda raw: raw.update(analysis={"cje_python": str(tmp_path / "nowhere" / "python")}), capsys)
    assert status == 2 and fake.calls == []
    assert f"analysis: {tmp_path / 'nowhere' / 'python'} does not exist. install.sh creates" in output.err
    assert "Traceback" not in output.err


def test_a_cje_environment_of_the_users_choice_is_used_and_the_run_records_it(tmp_path, capsys):
    chosen = PROJECT_ROOT / ".venv-cje-0.3.0" / "bin" / "python"
    status, _, output = run(tmp_path, lambda raw: raw.update(analysis={"cje_python": str(chosen)}), capsys)
    assert status == 0, output.err  # the run's config.json once could not be written with a path in it
    assert json.loads((tmp_path / "run" / "config.json").read_text())["analysis"]["cje_python"] == str(chosen)
    assert json.loads((tmp_path / "run" / "analysis" / "estimates.json").read_text())["analysed"]


def test_a_phase2_dataset_that_is_not_usable_is_not_analysed(tmp_path, capsys, monkeypatch):
    def no_digit(self, request):
        raise ItemError("the judge's reply contains no score digit", retryable=False)

    monkeypatch.setattr(FakeProvider, "_judge", no_digit)
    status, _, output = run(tmp_path, lambda raw: raw.update(analysis={"enabled": True}), capsys)
    estimates_file = json.loads((tmp_path / "run" / "analysis" / "estimates.json").read_text())
    assert status == 3 and estimates_file["analysed"] is False
    assert estimates_file["reason"].startswith("Phase 2 is empty: no logged response has a judge score")
    assert "analyze: no estimates: Phase 2 is empty" in output.out


def test_an_analysis_that_fails_leaves_the_report_of_the_phase2_files(tmp_path, capsys, monkeypatch):
    def cje_fails(python, folders, arguments):
        raise AnalysisError("cje-eval failed on the files (exit 1):\nValueError: no")

    monkeypatch.setattr(analyze, "run_cje", cje_fails)
    status, _, output = run(tmp_path, lambda raw: raw.update(analysis={"enabled": True}), capsys)
    assert status == 2 and "error: cje-eval failed on the files" in output.err and "Traceback" not in output.err
    report = (tmp_path / "run" / "phase2" / "report.md").read_text()
    assert "## Importance weights" in report and "## Estimates" not in report
    assert f"Report: {tmp_path / 'run' / 'phase2' / 'report.md'}" in output.out


def test_estimates_of_older_phase2_files_are_removed_when_phase2_is_rebuilt(tmp_path, capsys):
    status, _, _ = run(tmp_path, lambda raw: None, capsys)
    assert status == 0
    stale = tmp_path / "run" / "analysis" / "estimates.json"
    stale.parent.mkdir()
    stale.write_text(json.dumps({"analysed": True, "dry_run": False, "verdict": "made from other files"}))
    config = load_config(tmp_path / "config.yaml")
    (stale.parent / "inputs.json").write_text(dumps(_inputs(config, Workspace(tmp_path / "run"))))  # as a finished analysis
    assert "Estimates: made from other files" in status_module.describe(status_module.collect(Workspace(tmp_path / "run"), config))
    (tmp_path / "run" / "phase2" / "inputs.json").unlink()  # as if a checkpoint had changed
    with providers.substituted(FakeModels()):
        assert pipeline.main(["--config", str(tmp_path / "config.yaml"), "--data-dir", str(tmp_path / "run"), "--only", "phase2"]) == 0
    assert not stale.exists()
    assert "Estimates: none of a finished analysis of these Phase 2 files" in status_module.describe(status_module.collect(Workspace(tmp_path / "run"), config))


@pytest.mark.parametrize("config_name, prompts", [("local.yaml", 4), ("arena_10k.yaml", 3), ("arena_10k.yaml", 4),
                                                  ("arena_10k.yaml", 8)])
def test_runs_as_small_as_the_quick_checks_users_make_cannot_claim_a_ranking(config_name, prompts):
    """`run_phase1_pipeline.py 4` and dry runs of the flagship config at 3, 4 and 8 prompts: their calibration slices
    hold fewer labels than the gate needs, so whatever cje says, the verdict cannot rank the policies."""
    config = load_config(PROJECT_ROOT / "configs" / config_name)
    labels = len(registry.STAGES.spec["oracle_calibration"].prompts(config, [f"p{i}" for i in range(prompts)]))
    verdict, _ = findings(estimates({"direct": SEPARATED}, labels=labels), "p0")
    assert labels < MIN_CALIBRATION_LABELS and verdict.startswith("These estimates cannot rank the policies; gates not passed: oracle labels")


# scikit-learn's isotonic regression with and without arena10k/cje_estimates.py's fast path, on the inputs cje gives it
# (judge scores with ties, labels, predictions outside the fitted range) and on inputs the fast path must leave to it.
ISOTONIC = """
import json, runpy, sys
import numpy as np
from sklearn.isotonic import IsotonicRegression
speedups = runpy.run_path(sys.argv[1])
fast, checked = (IsotonicRegression.fit, IsotonicRegression._transform), (speedups["_checked_fit"], speedups["_checked_transform"])
rng = np.random.default_rng(0)
same, errors = [], []
for n in (1, 2, 7, 50, 2500):
    scores = np.round(rng.random(n) * 9) / 9  # digits: many ties
    labels = np.clip(scores + rng.normal(0, 0.2, n), 0, 1)
    queries = np.concatenate([rng.random(300) * 1.4 - 0.2, scores])
    results = []
    for fit, transform in (fast, checked):
        IsotonicRegression.fit, IsotonicRegression._transform = fit, transform
        for kwargs in ({"out_of_bounds": "clip"}, {"y_min": 0.0, "y_max": 1.0, "out_of_bounds": "clip"}):
            model = IsotonicRegression(**kwargs).fit(scores, labels)
            results.append((model.predict(queries).tolist(), model.predict(list(queries[:5])).tolist()))
    same.append(results[:2] == results[2:])
    for fit, transform in (fast, checked):
        IsotonicRegression.fit, IsotonicRegression._transform = fit, transform
        for bad in (np.array([np.nan] * n), np.array([], dtype=float)):
            try:
                IsotonicRegression(out_of_bounds="clip").fit(scores, labels).predict(bad)
                errors.append("none")
            except ValueError as error:
                errors.append(type(error).__name__)
print(json.dumps({"same": same, "errors": errors}))
"""


def test_the_isotonic_fast_path_gives_scikit_learns_numbers_and_errors():
    result = run_cje("0.3.0", ISOTONIC, str(PROJECT_ROOT / "arena10k" / "cje_estimates.py"))
    assert result["same"] == [True] * 5
    assert result["errors"] == ["ValueError"] * 20

"""The whole pipeline on the embedded models, as a user runs it: a researcher's own policies (a logging policy
and six targets, two of them clones, one on the second local model) end to end, loaded by cje-eval, killed
and resumed. What a change to the config recomputes is tested on the fake provider (test_experiments.py)."""

import json
import math
import signal
import subprocess
import time

import yaml

from conftest import OWN_CONFIG, PROJECT_ROOT, analysed_config, phase2_bytes, pipeline_command, run_cje, run_pipeline

TARGETS = ["evasive", "gemma", "step_by_step", "terse", "twin", "twin_2"]
IN_CONFIG_ORDER = ["twin", "step_by_step", "gemma", "evasive", "terse", "twin_2"]

STAGE_CHECKPOINTS = ("generate", "teacher_force", "judge", "oracle_calibration", "oracle_validation")


def checkpoint_lines(data_dir, name):
    path = data_dir / "checkpoints" / f"{name}.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def test_full_run_covers_every_stage_and_clone_passes(clean_run):
    info = json.loads((clean_run / "phase2" / "dataset_info.json").read_text())
    for stage, coverage in info["coverage"].items():
        assert coverage["done"] == coverage["expected"] > 0, stage
    assert info["clones"] == ["twin", "twin_2"]
    assert info["weights"]["twin"]["clone_check"] == info["weights"]["twin_2"]["clone_check"] == "PASS"
    assert info["logged_rows"] == 10 and info["oracle_labels"]["calibration"] == 10
    assert all(info["weights"][p]["ess_fraction"] is not None for p in TARGETS)
    summary = (clean_run / "phase2" / "summary.txt").read_text()
    assert "twin PASS, twin_2 PASS" in summary and "ESS" in summary


def test_no_sentinel_values_in_outputs(clean_run):
    for path in sorted((clean_run / "phase2").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert 0.0 <= row["judge_score"] <= 1.0
            if "deterministic" in path.parts:
                assert row["judge_score"] * 9 == round(row["judge_score"] * 9)  # a digit, never a 0.5 stand-in
            assert row["response"] != "" or row["metadata"]["finish_reason"] == "stop"
            if "base_policy_logprob" in row:
                values = [row["base_policy_logprob"], *row["target_policy_logprobs"].values()]
                for value in values:
                    assert value is None or (math.isfinite(value) and value < 0 and value != -50.0)
                nulls = sum(v is None for v in values)
                assert nulls == len(row["metadata"]["null_logprob_reasons"])  # every null has its reason
                assert set(row["metadata"]["teacher_forcing_methods"]) == {"assistant", *TARGETS}


def test_rerun_of_finished_pipeline_makes_no_model_calls(clean_run):
    before = phase2_bytes(clean_run)
    started = time.monotonic()
    estimates = (clean_run / "analysis" / "estimates.json").read_bytes()
    result = run_pipeline(clean_run, config=analysed_config(clean_run))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("0 tried in this run") == 5  # generate, teacher_force, judge, 2 oracle slices
    assert "prompts already prepared" in result.stdout
    assert phase2_bytes(clean_run) == before
    assert "analyze: the Phase 2 files did not change since the estimates were made" in result.stdout
    assert (clean_run / "analysis" / "estimates.json").read_bytes() == estimates
    print(f"rerun took {time.monotonic() - started:.1f}s")


def small_config(tmp_path):
    """The own-policies config cut to what a kill needs (4 prompts, the logging policy, a clone and one other
    target on SmolLM2), so that its uninterrupted and killed runs together cost less than the full run."""
    config = yaml.safe_load(OWN_CONFIG.read_text())
    config["samples"] = 4
    config["policies"] = {name: config["policies"][name] for name in ("assistant", "twin", "step_by_step")}
    config["models"].pop("gemma3")
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def kill_when(data_dir, config, checkpoint, lines):
    """Start the pipeline and SIGKILL it once `checkpoint` has `lines` lines: in the middle of that stage."""
    process = subprocess.Popen(pipeline_command(data_dir, config=config), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(checkpoint_lines(data_dir, checkpoint)) < lines:
        assert process.poll() is None, "the pipeline finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_and_resumed_run_gives_byte_identical_phase2_files(tmp_path):
    config = small_config(tmp_path)
    uninterrupted = run_pipeline(tmp_path / "uninterrupted", config=config)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    data_dir = tmp_path / "killed"
    kill_when(data_dir, config, "generate", 6)  # of 12
    kill_when(data_dir, config, "judge", 5)  # of 12
    result = run_pipeline(data_dir, config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert phase2_bytes(data_dir) == phase2_bytes(tmp_path / "uninterrupted")
    for name in STAGE_CHECKPOINTS:
        keys = [json.loads(line)["key"] for line in checkpoint_lines(data_dir, name)]
        assert len(keys) == len(set(keys)), f"duplicate lines in {name}"


# cje-eval 0.3.0's estimators on each variant's files, called by hand as the README shows them, with the settings the
# run used (its report names them), and without the speed-ups of arena10k/cje_estimates.py.
CJE_0_3 = (PROJECT_ROOT / "benchmarks" / "cje_by_hand.py").read_text()


def test_the_analyze_stage_reports_what_cje_0_3_gives_by_hand_with_a_verdict(clean_run):
    estimates = json.loads((clean_run / "analysis" / "estimates.json").read_text())
    assert estimates["analysed"] and estimates["cje_version"] == "0.3.0"
    for variant in ("deterministic", "uncertainty"):
        by_hand = run_cje("0.3.0", CJE_0_3, str(clean_run / "phase2" / variant), "1000")
        stage = estimates["variants"][variant]["estimators"]
        assert sorted(by_hand) == sorted(stage) == ["calibrated-ips", "direct", "stacked-dr"]
        for estimator, policies in by_hand.items():
            assert sorted(policies) == TARGETS
            assert list(stage[estimator]["policies"]) == IN_CONFIG_ORDER  # cje's own order is by name
            for policy, (estimate, se, low, high) in policies.items():
                row = stage[estimator]["policies"][policy]
                assert [row["estimate"], row["standard_error"], row["ci_low"], row["ci_high"]] == [estimate, se, low, high]
                assert 0.0 <= estimate <= 1.0
        assert set(estimates["variants"][variant]["clones"]) == {"twin", "twin_2"}
    assert "bootstrap with 1000 replicates" in estimates["settings"]
    assert estimates["verdict"] and estimates["notes"]
    report = (clean_run / "phase2" / "report.md").read_text()
    assert f"**Verdict: {estimates['verdict']}**" in report and (clean_run / "phase2" / "figures" / "estimates.png").is_file()


def test_the_estimates_are_checked_against_the_oracle_truth_and_with_fewer_labels(clean_run):
    """The truth per target is its validation labels' mean; the ablation's 100% share, which keeps every logged label
    and drops the targets' own, gives calibrated IPS exactly (it never reads the fresh draws)."""
    estimates = json.loads((clean_run / "analysis" / "estimates.json").read_text())
    info = json.loads((clean_run / "phase2" / "dataset_info.json").read_text())
    truths = estimates["oracle_truth"]
    assert list(truths) == IN_CONFIG_ORDER
    assert "the coverage ablation at 5%, 10%, 25%, 50%, 100% of the logged oracle labels" in estimates["settings"]
    assert {p: t["n"] for p, t in truths.items()} == info["oracle_labels"]["validation"]
    for variant in ("deterministic", "uncertainty"):
        shares = estimates["variants"][variant]["coverage_ablation"]
        assert [s["fraction"] for s in shares] == [0.05, 0.1, 0.25, 0.5, 1.0]
        assert [s["labels"] for s in shares] == sorted(s["labels"] for s in shares)
        assert shares[-1]["labels"] == info["oracle_labels"]["calibration"]
        main = estimates["variants"][variant]["estimators"]["calibrated-ips"]["policies"]
        held_out = shares[-1]["estimators"]["calibrated-ips"]["policies"]
        assert list(held_out) == IN_CONFIG_ORDER
        for policy, row in held_out.items():
            assert [row[k] for k in ("estimate", "standard_error", "ci_low", "ci_high")] == \
                   [main[policy][k] for k in ("estimate", "standard_error", "ci_low", "ci_high")]
    report = (clean_run / "phase2" / "report.md").read_text()
    assert "### Against the oracle's truth" in report and "Coverage ablation (uncertainty)" in report
    assert (clean_run / "phase2" / "figures" / "oracle_ablation.png").is_file()


# cje-eval 0.9.3's Direct mode: the fresh draws, calibrated with the oracle labels of the logged file too; every
# warning it logs or raises is kept.
CJE_0_9 = """
import json, logging, sys, warnings
from cje import analyze_dataset
folder = sys.argv[1]
logged = []
class Keep(logging.Handler):
    def emit(self, record):
        logged.append(record.getMessage())
logging.getLogger().addHandler(Keep(logging.WARNING))
with warnings.catch_warnings(record=True) as raised:
    warnings.simplefilter("always")
    result = analyze_dataset(fresh_draws_dir=folder + "/fresh_draws", calibration_data_path=folder + "/logged.jsonl",
                             estimator="direct")
sources = result.metadata.get("oracle_sources", {})
print(json.dumps({"policies": sorted(result.metadata["own_oracle_labels_by_policy"]),
                  "estimates": [float(e) for e in result.estimates], "conflicts": sources.get("conflicts") or [],
                  "value_conflicts": sources.get("value_conflicts") or [],
                  "warnings": [str(w.message) for w in raised] + logged}))
"""


def test_cje_0_9_loads_phase2_in_direct_mode_without_conflicts(clean_run):
    for variant in ("deterministic", "uncertainty"):
        result = run_cje("0.9.3", CJE_0_9, str(clean_run / "phase2" / variant))
        assert result["policies"] == TARGETS
        assert len(result["estimates"]) == len(TARGETS) and all(0.0 <= e <= 1.0 for e in result["estimates"])
        assert result["conflicts"] == result["value_conflicts"] == []
        assert not [w for w in result["warnings"] if "conflict" in w.lower() or "observation_id" in w], result["warnings"]


def test_the_smallest_run_users_try_ends_with_estimates(tmp_path):
    """`run_phase1_pipeline.py 3` on the embedded default: cje returns intervals that do not contain their estimates at
    this size; the run still ends at 0 with its Estimates section, the flags in the table. (A run shrunk to its size
    from a larger one is that run: test_safety.py, on the fake provider.)"""
    data_dir = tmp_path / "run"
    result = run_pipeline(data_dir, "3", config=PROJECT_ROOT / "configs" / "local.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Verdict: These estimates cannot rank the policies" in result.stdout
    assert "## Estimates" in (data_dir / "phase2" / "report.md").read_text()
    assert json.loads((data_dir / "analysis" / "estimates.json").read_text())["analysed"]
    assert "FLAG: " in result.stdout

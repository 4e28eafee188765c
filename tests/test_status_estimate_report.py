"""Status, estimate and report on synthetic runs (no model is loaded) and on the shared reference CJE sample."""

import json
import math
import subprocess
import sys
import time

import pytest
from conftest import PHASE2_FILES, TINY_CONFIG, phase2_bytes

from arena10k import forecast, judging, liveness, report, status
from arena10k import tokens as tokens_module
from arena10k.checkpoint import dumps, scan_states, tally
from arena10k.stages import analyze, phase2, registry
from arena10k.stages.base import StageRun
from arena10k.stages.registry import STAGES
from arena10k.testing import synthetic_run
from arena10k.checkpoint import Checkpoint, load_states
from arena10k.config import ExperimentConfig, load_config
from arena10k.errors import RunInProgressError
from arena10k.workspace import Workspace

LAST_FINISHED = 1.8e9  # synthetic runs settle one item per second up to this time


@pytest.fixture
def config():
    return load_config(TINY_CONFIG)


@pytest.fixture
def hosted_config(config):
    """The tiny config on priced, rate-limited hosted models: token counts are characters / 4, no model file needed."""
    raw = config.model_dump()
    raw["models"] = {
        "small": {"provider": "fireworks", "model": "small-model", "api_key_env": "NONE",
                  "price_per_million_input_tokens": 1.0, "price_per_million_output_tokens": 2.0, "requests_per_minute": 60},
        "large": {"provider": "openai", "model": "large-model", "api_key_env": "NONE",
                  "price_per_million_input_tokens": 5.0, "price_per_million_output_tokens": 10.0, "tokens_per_minute": 1000},
    }
    for name, policy in raw["policies"].items():
        policy["model"] = "large" if name == "pi_bigger_model" else "small"
    raw["judge"]["model"] = "small"
    raw["oracle"]["model"] = "large"
    return ExperimentConfig.model_validate(raw)


def test_synthetic_lines_are_the_lines_checkpoint_append_writes(tmp_path):
    # The synthetic runs below stand in for real ones only if their lines are byte for byte the real format.
    with Checkpoint(tmp_path / "stage.jsonl", "stage", {}) as checkpoint:
        checkpoint.append("p|p0", record={"b": 1, "a": [1.5, "x"]})
        checkpoint.append("p|pi_bad", error="no digit", retryable=True)
    expected = synthetic_run._ok_line("p|p0", {"b": 1, "a": [1.5, "x"]}) + synthetic_run._failed_line("p|pi_bad", "no digit", True)
    assert (tmp_path / "stage.jsonl").read_text() == expected


def scan_states_only(path):
    return scan_states(path)[0]


def test_scanned_states_agree_with_load_states_including_a_torn_line_and_escaped_key(tmp_path, config):
    synthetic_run.write_run(tmp_path, config, 12, fail_every=5)
    path = Workspace(tmp_path).checkpoint_path("judge")

    def assert_same(fast, full):
        assert set(fast) == set(full)
        for key, state in full.items():
            assert (fast[key].record is not None, fast[key].gave_up) == (state.record is not None, state.gave_up), key
            assert state.record is not None or fast[key].last_error == state.last_error, key

    assert_same(scan_states_only(path), load_states(path)[0])
    with open(path, "a", encoding="utf-8") as f:
        f.write(synthetic_run._ok_line("torn|p0", {"x": 1})[:30])  # a crash in the middle of a write
    assert_same(scan_states_only(path), load_states(path)[0])
    with open(path, "w", encoding="utf-8") as f:  # a line the regular expressions do not read: the JSON parser does
        f.write(synthetic_run._ok_line('odd"key|p0', {"x": 1}) + synthetic_run._failed_line("a|p0", "no digit", True))
    assert_same(scan_states_only(path), load_states(path)[0])
    assert 'odd"key|p0' in scan_states_only(path)


def test_status_of_a_run_in_progress_counts_failures_and_measures_rate(tmp_path, config):
    written = synthetic_run.write_run(tmp_path, config, 12, fail_every=7, last_finished=LAST_FINISHED,
                                  settled={"judge": 0.5, "oracle_calibration": 0, "oracle_validation": 0})
    workspace = Workspace(tmp_path)
    with open(workspace.checkpoint_path("judge"), "a") as f:
        f.write('{"key": "half-written')
    with liveness.claim(workspace):  # this test process plays the pipeline
        run = status.collect(workspace, config, now=LAST_FINISHED + 2)
        text = status.describe(run)
    stages = {stage.name: stage for stage in run.stages}
    assert run.claim.alive and f"running, pid {run.claim.pid}" in text
    for name, counts in written.items():
        total = stages[name].total.coverage
        assert (total.done, dict(total.failed)) == (counts.done, dict(counts.failed)), name
        assert sum(p.coverage.done for p in stages[name].by_policy.values()) == total.done
    assert stages["judge"].total.coverage.expected == 60 and stages["oracle_calibration"].total.coverage.done == 0
    judge, settled = stages["judge"].total, len(liveness.finish_times(workspace, "judge"))
    # One item a second, the last one 2 s before "now": the window runs from the first item to now.
    assert judge.rate_per_minute == pytest.approx(60 * (settled - 1) / (settled + 1))
    assert judge.eta_seconds == pytest.approx(60 * judge.coverage.missing / judge.rate_per_minute)
    assert stages["generate"].total.eta_seconds is None  # not the stage being worked on
    assert "generate: 8 x prompt is 5000 tokens" in text and "(p0 2, pi_clone 2, pi_cot 1, pi_bigger_model 2, pi_bad 1)" in text


def test_status_gives_no_eta_from_the_first_few_items(tmp_path, config):
    synthetic_run.write_run(tmp_path, config, 12, last_finished=LAST_FINISHED,
                            settled={"judge": 0.1, "oracle_calibration": 0, "oracle_validation": 0})
    workspace = Workspace(tmp_path)
    with liveness.claim(workspace):
        run = status.collect(workspace, config, now=LAST_FINISHED + 2)
        text = status.describe(run)
    judge = next(stage for stage in run.stages if stage.name == "judge").total
    assert len(liveness.finish_times(workspace, "judge")) < status.ETA_AFTER_ITEMS
    assert judge.measuring and judge.eta_seconds is None and "measuring" in text


def test_status_of_a_finished_run_and_of_a_killed_pipeline(tmp_path, config):
    synthetic_run.write_run(tmp_path, config, 6, last_finished=LAST_FINISHED)
    workspace = Workspace(tmp_path)
    run = status.collect(workspace, config, now=LAST_FINISHED + 3600)
    assert all(stage.total.coverage.missing == 0 and stage.total.eta_seconds is None for stage in run.stages)
    assert "not running (no pipeline.pid)" in status.describe(run)
    assert run.stages[-1].total.last_finished == pytest.approx(LAST_FINISHED)

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    workspace.pid_path.write_text(json.dumps({"pid": int(ended.stdout), "host": liveness.socket.gethostname(),
                                              "started": LAST_FINISHED - 100, "process_start": None}))
    assert "ended without cleaning up" in status.describe(status.collect(workspace, config))
    with liveness.claim(workspace):  # a stale claim does not stop the next run
        assert liveness.is_alive(workspace)
    assert not workspace.pid_path.exists()


def test_status_shows_only_the_verdict_of_a_finished_analysis_of_these_files_and_marks_a_dry_run(tmp_path, config):
    synthetic_run.write_run(tmp_path, config, 6, last_finished=LAST_FINISHED)
    workspace = Workspace(tmp_path)
    phase2.run(StageRun(config, workspace, None, registry.STAGES))
    workspace.analysis_dir.mkdir(parents=True, exist_ok=True)
    verdict = {"analysed": True, "dry_run": False, "verdict": "Some policies are told apart."}
    (workspace.analysis_dir / "estimates.json").write_text(json.dumps(verdict))
    # An analysis that did not finish (its inputs are written last), as when the run exited with an error:
    assert "none of a finished analysis" in status.describe(status.collect(workspace, config))
    (workspace.analysis_dir / "inputs.json").write_text(dumps(analyze._inputs(config, workspace)))
    assert "Estimates: Some policies are told apart." in status.describe(status.collect(workspace, config))
    (workspace.analysis_dir / "estimates.json").write_text(json.dumps({**verdict, "dry_run": True}))
    assert "Estimates: DRY RUN (synthetic responses, not a result): Some" in status.describe(status.collect(workspace, config))
    logged = workspace.phase2_dir / "deterministic" / "logged.jsonl"
    logged.write_text(logged.read_text())  # rewritten since: the estimates are of other files
    assert "none of a finished analysis" in status.describe(status.collect(workspace, config))


def test_a_second_pipeline_on_the_same_directory_is_refused(tmp_path):
    workspace = Workspace(tmp_path)
    other = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; from arena10k import liveness; from pathlib import Path; from arena10k.workspace import Workspace\n"
                              "with liveness.claim(Workspace(Path(sys.argv[1]))):\n    print('claimed', flush=True); time.sleep(60)",
                              str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "claimed"
        with pytest.raises(RunInProgressError, match=f"process {other.pid}"):
            with liveness.claim(workspace):
                pass
        assert liveness.read_claim(workspace).pid == other.pid  # the refusal left the other claim alone
    finally:
        other.kill()
        other.wait()
    assert not liveness.is_alive(workspace)
    workspace.pid_path.write_text(json.dumps({"pid": 1, "host": "another-host", "started": 0, "process_start": None}))
    with pytest.raises(RunInProgressError, match="cannot be checked from here"):
        with liveness.claim(workspace):
            pass


def test_coverage_counts_what_stage_6_counts(tmp_path, config):
    synthetic_run.write_run(tmp_path, config, 12, fail_every=5, settled={"judge": 0.7, "oracle_validation": 0})
    workspace = Workspace(tmp_path)
    info = phase2.build(config, workspace, registry.STAGES)
    keys = registry.STAGES.expected_keys(config, [p.prompt_id for p in workspace.load_prompts()])
    counted = {name: tally(k, load_states(workspace.checkpoint_path(name))[0]) for name, k in keys.items()}
    assert info["coverage"] == {name: {"expected": c.expected, "done": c.done, "failed": dict(c.failed), "missing": c.missing}
                                for name, c in counted.items()}


def test_progress_lines_round_trip_and_a_half_written_line_is_skipped(tmp_path, config):
    workspace = Workspace(tmp_path)
    with registry.STAGES.spec["judge"].open(workspace, config) as checkpoint:
        liveness.record_finished(checkpoint, "a|p0")
        liveness.record_finished(checkpoint, "a|pi_cot")
    with open(workspace.progress_path("judge"), "a") as f:
        f.write("1800000000.5\tb|p")
    times = liveness.finish_times(workspace, "judge")
    assert [key for _, key in times] == ["a|p0", "a|pi_cot"] and abs(times[-1][0] - time.time()) < 60
    workspace.drop("judge", {"pi_cot"})  # --force pi_cot also forgets when its items finished
    assert [key for _, key in liveness.finish_times(workspace, "judge")] == ["a|p0"]


def test_estimate_counts_only_what_is_left(tmp_path, hosted_config):
    config = hosted_config
    synthetic_run.write_run(tmp_path, config, 8, settled={"teacher_force": 0.5, "judge": 0, "oracle_calibration": 0, "oracle_validation": 0})
    workspace = Workspace(tmp_path)
    prompts = workspace.load_prompts()
    result = forecast.forecast(config, workspace)
    generated = {k: s.record for k, s in load_states(workspace.checkpoint_path("generate"))[0].items()}

    def tokens(text):
        return math.ceil(len(text) / tokens_module.CHARS_PER_TOKEN)

    def chat(messages):
        return sum(tokens(m["content"]) + tokens_module.TOKENS_PER_MESSAGE for m in messages) + tokens_module.TOKENS_TO_OPEN_REPLY

    assert result.items == 8 * 15 + 8 + 2 * 4 and result.done == 40 + 20
    assert ("generate", "small") not in result.usage  # all generated
    judge = result.usage[("judge", "small")]
    overhead = chat(judging.judge_messages(judging.JUDGE_RUBRIC, "", ""))
    expected_input = sum(overhead + tokens(p.prompt) + r["n_tokens"] + (r["finish_reason"] == "stop")
                         for p in prompts for key, r in generated.items() if key.startswith(p.prompt_id + "|"))
    assert (judge.calls, judge.input_tokens, judge.output_tokens) == (40, expected_input, 40 * config.judge.max_tokens)
    assert result.usage[("teacher_force", "small")].calls + result.usage[("teacher_force", "large")].calls == 20
    oracle = result.usage[("oracle_validation", "large")]
    assert oracle.cost(config.models["large"]) == pytest.approx((5 * oracle.input_tokens + 10 * oracle.output_tokens) / 1e6)
    assert forecast.rate_limited_minutes(config.models["small"], judge) == pytest.approx(40 / 60)
    text = forecast.describe(result)
    assert "total fireworks" in text and "total openai" in text and "60 already done" in text


def test_a_sampled_judge_costs_its_calls_per_grading_each_with_the_same_input(tmp_path, hosted_config):
    synthetic_run.write_run(tmp_path, hosted_config, 8, settled={"judge": 0})
    raw = hosted_config.model_dump()
    raw["judge"].update(method="sampled", samples=5)
    sampled = ExperimentConfig.model_validate(raw)
    one = forecast.forecast(hosted_config, Workspace(tmp_path)).usage[("judge", "small")]
    six = forecast.forecast(sampled, Workspace(tmp_path)).usage[("judge", "small")]
    assert (six.calls, six.input_tokens, six.output_tokens) == (6 * one.calls, 6 * one.input_tokens, 6 * one.output_tokens)


def test_estimate_of_a_finished_run_and_the_usage_of_its_attempts(tmp_path, hosted_config):
    written = synthetic_run.write_run(tmp_path, hosted_config, 6, fail_every=4)
    workspace = Workspace(tmp_path)
    left = forecast.forecast(hosted_config, workspace)
    # Only the preflight, which the synthetic run did not record: a real run keeps its findings in preflight.json.
    assert {stage for stage, _ in left.usage} == {"preflight"}  # every failed item has used its attempts
    states = {name: load_states(workspace.checkpoint_path(name))[0] for name in written}
    used = forecast.usage(hosted_config, workspace.load_prompts(), states)
    for name in written:
        assert sum(u.calls for (stage, _), u in used.items() if stage == name) == sum(s.attempts for s in states[name].values())


def test_report_on_the_shared_reference_sample(shared_arena, tmp_path, drawn_figures):
    dataset = shared_arena / "reference_cje_dataset_sample.jsonl"
    path = report.write_report(report.cje_dataset_input(dataset, clones=("clone",)), tmp_path / "a")
    text = path.read_text()
    assert "**clone fails the clone check**: 66 of 200 log-ratios differ from 0" in text
    assert "**unhelpful: ESS 0.6%**" in text and "| parallel_universe_prompt | no reason recorded | 1 |" in text
    assert "unhelpful (judge_score): reweighted, it scores 0.86, above base's 0.77" in text
    figures = sorted(p.name for p in (tmp_path / "a" / "figures").iterdir())
    assert figures == ["clone_log_ratio_clone.png", "judge_scores.png", "judge_vs_oracle.png", "log_weights.png", "weight_concentration.png"]
    report.write_report(report.cje_dataset_input(dataset, clones=("clone",)), tmp_path / "b")
    for name in [*(f"figures/{f}" for f in figures), "report.md"]:  # same data, same bytes
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "figures" / figures[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_phase2_directory_leaves_the_phase2_files_alone(tmp_path, config, drawn_figures):
    synthetic_run.write_run(tmp_path, config, 24, fail_every=9)
    workspace = Workspace(tmp_path)
    phase2.build(config, workspace, registry.STAGES)
    before = phase2_bytes(tmp_path)
    path = report.write_report(report.phase2_input(workspace.phase2_dir, config), workspace.phase2_dir)
    assert phase2_bytes(tmp_path) == before and not any(name in str(path) for name in PHASE2_FILES)
    text = path.read_text()
    # a prompt with an item failed for good is left out of every file, so the clone is checked on the others
    assert "The answer is partial: 13 of 24 prompts are left out of every file" in text
    assert "Prompts left out of every file (13)" in text and "teacher_force pi_clone: prompt is 5000 tokens; with 49 more" in text
    assert "**PASS: all 11 log-ratios of pi_clone to the logging policy are exactly 0**" in text
    assert "generate: 13 items failed for good" in text and "never tried" not in text and "still to do" not in text
    assert "| teacher_force | 120 |" in text and "Failed items by their latest error:" in text
    assert "### Judge uncertainty" in text and "## Versions" in text
    assert (workspace.phase2_dir / "figures" / "judge_uncertainty.png").is_file()


def test_report_says_pass_when_the_clone_matches_exactly(tmp_path, config):
    synthetic_run.write_run(tmp_path, config, 12)
    workspace = Workspace(tmp_path)
    phase2.build(config, workspace, registry.STAGES)
    text = report.write_report(report.phase2_input(workspace.phase2_dir, config), workspace.phase2_dir).read_text()
    assert "**PASS: all 12 log-ratios of pi_clone to the logging policy are exactly 0**" in text and "fails the clone check" not in text


def test_report_of_a_run_where_nothing_was_judged_says_so(tmp_path, config):
    synthetic_run.write_run(tmp_path, config, 6, settled={"judge": 0, "oracle_calibration": 0, "oracle_validation": 0})
    workspace = Workspace(tmp_path)
    phase2.build(config, workspace, registry.STAGES)
    text = report.write_report(report.phase2_input(workspace.phase2_dir, config), workspace.phase2_dir).read_text()
    assert "No response has a deterministic judge score: nothing can be estimated" in text


def test_estimates_are_drawn_and_tabled_as_cje_returned_them_and_flagged(tmp_path):
    """cje can return an interval that does not contain its estimate (seen at 4 prompts), one of zero width, or NaN:
    the figure draws each as it is and the tables flag it, instead of the report failing."""
    from arena10k import figures

    rows = {"outside": {"estimate": 0.306, "ci_low": 0.286, "ci_high": 0.293},
            "zero width": {"estimate": 0.313, "ci_low": 0.313, "ci_high": 0.313},
            "not a number": {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan},
            "fine": {"estimate": 0.5, "ci_low": 0.4, "ci_high": 0.6}}
    assert [analyze.estimate_flags(row) for row in rows.values()] == [
        ["outside its interval"], ["zero-width interval"], ["not a number"], []]
    path = figures.estimates(tmp_path / "estimates.png", {"deterministic": {"direct": rows}})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_estimate_prices_each_stage_online_and_in_batches_side_by_side(tmp_path, hosted_config):
    synthetic_run.write_run(tmp_path, hosted_config, 8, settled={name: 0.0 for name in STAGES.checkpoints})
    raw = hosted_config.model_dump()
    raw["models"]["large"] |= dict(batch=True, batch_max_requests=3, batch_price_factor=0.4)
    config = ExperimentConfig.model_validate(raw)
    result = forecast.forecast(config, Workspace(tmp_path))
    rows = {tuple(line.split()[:2]): line for line in forecast.describe(result).splitlines() if line.startswith("  ")}
    batchable = STAGES.batchable
    assert batchable == {"generate", "judge", "oracle_calibration", "oracle_validation"}
    for (name, model), use in result.usage.items():
        online = use.cost(config.models[model])
        row = rows[(name, model)]
        assert f"{online:.2f}" in row
        if name not in batchable:
            assert row.endswith("online only")
            continue
        factor = 0.4 if model == "large" else 0.5
        assert f"{online * factor:.2f}" in row.split("min")[-1]
        if model == "large":  # three requests per input file
            assert row.endswith(f"{-(-use.calls // 3)} batches within 24h")
        else:
            assert row.endswith("within 24h (not sent by arena10k yet)")  # Fireworks' batch jobs: priced, not sent
    # The report prices what was made: the batched model's batchable stages at its batch price.
    made = forecast.usage_table(config, result.usage, batchable, compare=False)
    judged = next(line for line in made if line.split()[:2] == ["oracle_validation", "large"])
    assert judged.endswith("batch price")
    assert f"{result.usage[('oracle_validation', 'large')].cost(config.models['large']) * 0.4:.2f}" in judged

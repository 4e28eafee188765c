"""Experiments of the user's own: any policies, and changes that recompute exactly what they touch.

The pipeline runs in-process on the fake provider (arena10k.testing.fake_provider), which records every call,
so each test counts the calls a change costs.
"""

import json
import math
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import OWN_CONFIG, PROJECT_ROOT, phase2_bytes, run_cje

from arena10k import pipeline, providers
from arena10k.config import ExperimentConfig, load_config
from arena10k.errors import ConfigError
from arena10k.judging import JUDGE_RUBRIC, ORACLE_RUBRIC
from arena10k.stages import registry
from arena10k.testing import synthetic_run
from arena10k.weights import LOG_ZERO
from arena10k.testing.fake_provider import FakeModels

PROMPTS = 10
VALIDATION_SLICE = 2  # validation_fraction 0.2 of 10 prompts


def run(data_dir, config_path, *args):
    """One pipeline run in-process on fake models: its exit status and every call it made."""
    fake = FakeModels()
    with providers.substituted(fake):
        status = pipeline.main(["--config", str(config_path), "--data-dir", str(data_dir), *args])
    return status, fake


def write_config(path, change):
    raw = yaml.safe_load(OWN_CONFIG.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def system_prompt(config_path, policy):
    return yaml.safe_load(config_path.read_text())["policies"][policy]["system_prompt"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("own") / "run"
    status, fake = run(data_dir, OWN_CONFIG)
    assert status == 0
    return data_dir, fake


@pytest.fixture
def run_copy(finished, tmp_path):
    """A private copy of the finished run, for a test that changes it."""
    shutil.copytree(finished[0], tmp_path / "run")
    return tmp_path / "run"


def test_own_policies_run_end_to_end_and_every_output_follows_the_config(finished):
    data_dir, fake = finished
    config = load_config(OWN_CONFIG)
    info = json.loads((data_dir / "phase2" / "dataset_info.json").read_text())
    assert info["logging_policy"] == "assistant"
    assert info["target_policies"] == ["twin", "step_by_step", "gemma", "evasive", "terse", "twin_2"]
    assert info["clones"] == ["twin", "twin_2"]
    assert {p: info["weights"][p]["clone_check"] for p in info["target_policies"]} == {
        "twin": "PASS", "step_by_step": None, "gemma": None, "evasive": None, "terse": None, "twin_2": "PASS"}
    for name, coverage in info["coverage"].items():
        assert coverage["done"] == coverage["expected"] > 0, name
    fresh = sorted(p.name for p in (data_dir / "phase2" / "deterministic" / "fresh_draws").iterdir())
    assert fresh == sorted(f"{p}_responses.jsonl" for p in config.target_policies)
    row = json.loads((data_dir / "phase2" / "deterministic" / "logged.jsonl").read_text().splitlines()[0])
    assert set(row["target_policy_logprobs"]) == set(config.target_policies)  # canonical JSON: keys sorted
    assert "twin PASS, twin_2 PASS" in (data_dir / "phase2" / "summary.txt").read_text()
    assert fake.count("generate") == 7 * PROMPTS * 2 + PROMPTS + 6 * VALIDATION_SLICE  # responses, judge, oracle
    assert fake.count("teacher_force") == 7 * PROMPTS


def test_rerun_of_a_finished_run_makes_no_call_and_rebuilds_phase2_only_when_its_inputs_change(run_copy, capsys):
    before = phase2_bytes(run_copy)
    status, fake = run(run_copy, OWN_CONFIG)
    assert status == 0 and fake.calls == []
    assert phase2_bytes(run_copy) == before
    assert "its inputs did not change since it was written" in capsys.readouterr().out
    status, fake = run(run_copy, OWN_CONFIG, "--force", "judge")  # the same scores again, newly written
    assert status == 0 and len(fake.calls) == 7 * PROMPTS
    assert "its inputs did not change" not in capsys.readouterr().out and phase2_bytes(run_copy) == before


def test_adding_a_policy_makes_exactly_that_policys_calls(tmp_path):
    without = write_config(tmp_path / "without.yaml", lambda raw: raw["policies"].pop("terse"))
    assert run(tmp_path / "run", without)[0] == 0
    status, fake = run(tmp_path / "run", OWN_CONFIG)
    assert status == 0
    terse = system_prompt(OWN_CONFIG, "terse")
    responses = fake.count("generate", lambda c: c.system_prompt == terse)
    judged = [c for c in fake.calls if c.system_prompt in (JUDGE_RUBRIC, ORACLE_RUBRIC)]
    assert responses == PROMPTS and fake.count("teacher_force") == fake.count("teacher_force", lambda c: c.system_prompt == terse) == PROMPTS
    assert sum(c.system_prompt == JUDGE_RUBRIC for c in judged) == PROMPTS
    assert sum(c.system_prompt == ORACLE_RUBRIC for c in judged) == VALIDATION_SLICE
    assert len(fake.calls) == responses + PROMPTS + len(judged)
    assert all("Answer in as few words" not in json.dumps(c.messages) or c.system_prompt == terse for c in fake.calls)


def test_a_policy_removed_from_the_config_leaves_no_fresh_draws_in_phase2(run_copy, tmp_path, capsys):
    without = write_config(tmp_path / "without.yaml", lambda raw: raw["policies"].pop("terse"))
    assert (run_copy / "phase2" / "deterministic" / "fresh_draws" / "terse_responses.jsonl").exists()
    status, _ = run(run_copy, without)
    assert status == 0
    for variant in ("deterministic", "uncertainty"):
        assert not (run_copy / "phase2" / variant / "fresh_draws" / "terse_responses.jsonl").exists()
    info = json.loads((run_copy / "phase2" / "dataset_info.json").read_text())
    assert info["removed_stale_files"] == ["deterministic/fresh_draws/terse_responses.jsonl",
                                           "uncertainty/fresh_draws/terse_responses.jsonl"]
    assert "Removed 2 fresh-draw files of policies no longer in the config" in (run_copy / "phase2" / "summary.txt").read_text()


def test_changing_one_target_is_refused_then_recomputes_exactly_that_target(run_copy, tmp_path, capsys):
    changed = write_config(tmp_path / "changed.yaml", lambda raw: raw["policies"]["evasive"].update(temperature=1.2))
    checkpoints = {p.name: p.read_bytes() for p in (run_copy / "checkpoints").iterdir()}
    status, fake = run(run_copy, changed)
    error = capsys.readouterr().err
    assert status == 2 and fake.calls == []
    assert "policies.evasive.temperature: 1.0 -> 1.2" in error and "Run with --force evasive to recompute" in error
    for line in ("generate: evasive (10 items)", "teacher_force: evasive (10 items)", "judge: evasive (10 items)",
                 "oracle_validation: evasive (2 items)"):
        assert line in error
    assert {p.name: p.read_bytes() for p in (run_copy / "checkpoints").iterdir()} == checkpoints

    others = {p: (run_copy / "phase2" / "deterministic" / "fresh_draws" / f"{p}_responses.jsonl").read_bytes()
              for p in ("twin", "step_by_step", "gemma", "terse", "twin_2")}
    status, fake = run(run_copy, changed, "--force", "evasive")
    assert status == 0
    assert fake.count("generate", lambda c: c.temperature == 1.2) == PROMPTS
    assert fake.count("teacher_force") == fake.count("teacher_force", lambda c: c.temperature == 1.2) == PROMPTS
    assert fake.count("generate", lambda c: c.system_prompt == JUDGE_RUBRIC) == PROMPTS
    assert fake.count("generate", lambda c: c.system_prompt == ORACLE_RUBRIC) == VALIDATION_SLICE
    assert len(fake.calls) == 3 * PROMPTS + VALIDATION_SLICE
    assert others == {p: (run_copy / "phase2" / "deterministic" / "fresh_draws" / f"{p}_responses.jsonl").read_bytes()
                      for p in others}


NEW_RUBRIC = "Grade the answer from 0 (bad) to 9 (excellent)."


@pytest.mark.parametrize("change, call_is_new_judge", [
    (lambda raw: raw["judge"].update(rubric=NEW_RUBRIC), lambda call: call.system_prompt == NEW_RUBRIC),
    (lambda raw: raw["judge"].update(model="gemma3"), lambda call: call.model == "gemma3-270m"),
], ids=["rubric", "model"])
def test_changing_the_judge_recomputes_judging_only(run_copy, tmp_path, capsys, change, call_is_new_judge):
    changed = write_config(tmp_path / "judge.yaml", change)
    assert run(run_copy, changed)[0] == 2
    assert "Run with --force judge to recompute" in capsys.readouterr().err
    status, fake = run(run_copy, changed, "--force", "judge")
    assert status == 0
    assert len(fake.calls) == fake.count("generate", call_is_new_judge) == 7 * PROMPTS


def test_changing_the_logging_policy_recomputes_what_depends_on_its_responses(run_copy, tmp_path, capsys):
    changed = write_config(tmp_path / "logging.yaml", lambda raw: raw["policies"]["assistant"].update(max_tokens=10))
    assert run(run_copy, changed)[0] == 2
    error = capsys.readouterr().err
    assert "policies.assistant.max_tokens: 12 -> 10" in error and "Run with --force assistant to recompute" in error
    status, fake = run(run_copy, changed, "--force", "assistant")
    assert status == 0
    # its own responses, every policy's teacher forcing of them, their judge scores and calibration labels
    assert fake.count("teacher_force") == 7 * PROMPTS
    assert fake.count("generate", lambda c: c.system_prompt == JUDGE_RUBRIC) == PROMPTS
    assert fake.count("generate", lambda c: c.system_prompt == ORACLE_RUBRIC) == PROMPTS
    assert len(fake.calls) == PROMPTS + 7 * PROMPTS + PROMPTS + PROMPTS


def test_estimate_prices_a_forced_recompute_without_calls(run_copy, capsys):
    status, fake = run(run_copy, OWN_CONFIG, "--force", "evasive", "--estimate")
    out = capsys.readouterr().out
    assert status == 0 and fake.calls == []
    assert "Recomputing (--force) generate: evasive" in out and "teacher_force: evasive" in out
    assert "232 work items, 200 already done" in out  # 3 x 70 + 10 + 12 items, of which evasive's 32 are to redo


def test_forced_units_follow_dependencies():
    config = load_config(OWN_CONFIG)
    assert registry.STAGES.forced_units(config, ["judge"]) == {("judge", p) for p in config.policy_names}
    assert registry.STAGES.forced_units(config, ["evasive"]) == {
        ("generate", "evasive"), ("teacher_force", "evasive"), ("judge", "evasive"), ("oracle_validation", "evasive")}
    logging = registry.STAGES.forced_units(config, ["generate:assistant"])
    assert {("teacher_force", p) for p in config.policy_names} <= logging
    assert ("generate", "twin") not in logging and ("oracle_calibration", "assistant") in logging
    with pytest.raises(ConfigError, match="'nobody' is neither a stage"):
        registry.STAGES.forced_units(config, ["nobody"])


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.update(logging_policy="p0"), "logging_policy 'p0' is not a key of policies"),
    (lambda raw: raw["policies"].update({"a/b": raw["policies"]["twin"]}), "policy name 'a/b' must be"),
    (lambda raw: raw["policies"].update({"judge": raw["policies"]["twin"]}), "policy name 'judge' is a stage's name"),
    (lambda raw: raw.update(policies={"assistant": raw["policies"]["assistant"]}), "at least one target policy"),
])
def test_config_refuses_policies_that_cannot_work(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):  # as the runner checks a config at start-up
        registry.STAGES.check_policy_names(load_config(write_config(tmp_path / "bad.yaml", change)))


def hosted(config: ExperimentConfig) -> ExperimentConfig:
    raw = config.model_dump()
    raw["models"] = {name: {"provider": "openai", "model": name, "base_url": "http://127.0.0.1:9/v1",
                            "api_key_env": "ARENA10K_TEST_KEY_NOT_SET", "chat_template": "{{ messages }}"}
                     for name in raw["models"]}
    return ExperimentConfig.model_validate(raw)


def test_phase2_runs_with_a_hosted_config_and_no_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("ARENA10K_TEST_KEY_NOT_SET", raising=False)
    config = hosted(load_config(OWN_CONFIG))
    synthetic_run.write_run(tmp_path / "run", config, 12)
    config_path = tmp_path / "hosted.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json") | {
        "models": {n: m.model_dump() | {"base_url": "http://127.0.0.1:9/v1"} for n, m in config.models.items()}}))
    status, fake = run(tmp_path / "run", config_path, "--only", "phase2")
    assert status == 0 and fake.calls == []
    script = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "06_validate_and_write_phase2.py"),
                             "--config", str(config_path), "--data-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert script.returncode == 0, script.stderr[-2000:]
    assert (tmp_path / "run" / "phase2" / "deterministic" / "logged.jsonl").exists()
    status, _ = run(tmp_path / "run", config_path, "--only", "judge")  # a stage that calls a model needs its key
    assert status == 2


def scoring_off_by(monkeypatch, nats, prompts=None):
    """Teacher forcing that no longer reproduces sampling: `nats` added to the log-prob (of `prompts` only, if given)."""
    from dataclasses import replace

    from arena10k.testing.fake_provider import FakeProvider

    original = FakeProvider.teacher_force

    def off(self, request):
        result = original(self, request)
        hit = prompts is None or any(p in json.dumps(request.messages) for p in prompts)
        return replace(result, logprob=result.logprob + nats) if hit else result

    monkeypatch.setattr(FakeProvider, "teacher_force", off)


def test_teacher_forcing_that_disagrees_with_sampling_from_the_start_stops_the_stage_early(tmp_path, monkeypatch, capsys):
    scoring_off_by(monkeypatch, -0.5)
    status, fake = run(tmp_path / "run", OWN_CONFIG)
    assert status == 2
    assert "teacher forcing disagrees with the logging policy's own sampled log-probs on the first 5" in capsys.readouterr().err
    assert fake.count("teacher_force") < 7 * PROMPTS  # stopped before the rest of the stage's calls


def test_one_row_whose_scoring_disagrees_is_reported_and_the_run_exits_non_zero(tmp_path, monkeypatch, capsys):
    assert run(tmp_path / "clean", OWN_CONFIG)[0] == 0  # which prompts the run samples
    first = json.loads((tmp_path / "clean" / "prompts.jsonl").read_text().splitlines()[0])["prompt"]
    scoring_off_by(monkeypatch, -0.5, prompts=[json.dumps(first)[1:-1]])
    status, _ = run(tmp_path / "run", OWN_CONFIG)
    output = capsys.readouterr()
    assert status == 3 and "The self-check failed: 1 of the logging policy's responses" in output.err
    check = json.loads((tmp_path / "run" / "phase2" / "dataset_info.json").read_text())["self_check"]
    assert check["compared"] == PROMPTS and len(check["beyond_tolerance"]) == 1 and check["largest_difference"] == 0.5
    assert "**1 beyond tolerance**" in (tmp_path / "run" / "phase2" / "report.md").read_text()


CJE_LOADS = """
import json, sys, warnings
from cje import analyze_dataset
folder, version = sys.argv[1], sys.argv[2]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if version == "0.3.0":
        result = analyze_dataset(logged_data_path=folder + "/logged.jsonl", estimator="calibrated-ips")
    else:
        result = analyze_dataset(fresh_draws_dir=folder + "/fresh_draws", calibration_data_path=folder + "/logged.jsonl",
                                 estimator="direct")
print(json.dumps({"policies": list(result.metadata["target_policies"]), "estimates": [float(e) for e in result.estimates],
                  "used": {p: int(n) for p, n in (getattr(result, "n_samples_used", None) or {}).items()}}))
"""


def test_a_targets_max_tokens_gives_weight_0_to_responses_it_cannot_give(tmp_path, capsys):
    """terse stops after 3 tokens: P0's longer responses, and those cut at P0's 12, are not its. roomy samples as P0
    does but stops at 20: P0's responses that ended their turn are its own (weight 1), those cut at 12 are not."""
    def caps(raw):
        raw["policies"]["terse"]["max_tokens"] = 3
        raw["policies"]["roomy"] = {**raw["policies"][raw["logging_policy"]], "max_tokens": 20}

    config = write_config(tmp_path / "caps.yaml", caps)
    assert run(tmp_path / "run", config)[0] == 0
    out = capsys.readouterr().out
    assert "warning: policies.terse.max_tokens is 3, assistant's 12" in out and "warning: policies.roomy.max_tokens is 20" in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "phase2" / "deterministic" / "logged.jsonl").read_text().splitlines()]
    cut = [row for row in rows if row["metadata"]["finish_reason"] == "length"]
    ended = [row for row in rows if row["metadata"]["finish_reason"] == "stop"]
    assert cut and ended
    for row in cut:
        assert row["target_policy_logprobs"]["roomy"] == LOG_ZERO
        assert math.exp(row["target_policy_logprobs"]["roomy"] - row["base_policy_logprob"]) == 0.0
        assert row["metadata"]["zero_probability_reasons"]["roomy"].startswith("cut at another max_tokens")
    for row in ended:
        assert row["target_policy_logprobs"]["roomy"] == row["base_policy_logprob"]  # its own distribution: weight 1
        assert "roomy" not in row["metadata"]["zero_probability_reasons"]
        longer = row["metadata"]["n_tokens"] >= 3
        assert (row["target_policy_logprobs"]["terse"] == LOG_ZERO) == longer
        if longer:
            assert row["metadata"]["zero_probability_reasons"]["terse"].startswith("longer than max_tokens")
    forced = [json.loads(line)["record"] for line in (tmp_path / "run" / "checkpoints" / "teacher_force.jsonl").read_text().splitlines()]
    assert all(r["logprob"] is None for r in forced if r["zero_probability"])  # never a finite number
    # Equal caps change nothing: every other policy's log-probs are the teacher-forced values, bit for bit.
    equal = {(r["prompt_id"], r["policy"]): r["logprob"] for r in forced if r["policy"] not in ("terse", "roomy")}
    assert all(r["zero_probability"] is None for r in forced if r["policy"] not in ("terse", "roomy"))
    assert all(row["target_policy_logprobs"][p] == equal[row["prompt_id"], p] for row in rows for p in row["target_policy_logprobs"]
               if p not in ("terse", "roomy"))
    info = json.loads((tmp_path / "run" / "phase2" / "dataset_info.json").read_text())
    assert info["zero_probability"]["roomy"] == {"cut at another max_tokens": len(cut)}
    assert "roomy: weight exactly 0 for" in (tmp_path / "run" / "phase2" / "summary.txt").read_text()
    for version in ("0.3.0", "0.9.3"):  # both read the files, and cje 0.3 keeps every row (a non-finite one it skips)
        result = run_cje(version, CJE_LOADS, str(tmp_path / "run" / "phase2" / "deterministic"), version)
        assert "roomy" in result["policies"] and all(math.isfinite(e) for e in result["estimates"])
        if version == "0.3.0":
            assert result["used"]["roomy"] == len(rows)


DIRECT_DRAWS = """
import json, sys, warnings
from cje import analyze_dataset
folder = sys.argv[1]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = analyze_dataset(fresh_draws_dir=folder + "/fresh_draws", calibration_data_path=folder + "/logged.jsonl",
                             estimator="direct", estimator_config={"n_bootstrap": 200})
print(json.dumps({"policies": list(result.metadata["target_policies"]), "estimates": [float(e) for e in result.estimates],
                  "used": {p: int(n) for p, n in (getattr(result, "n_samples_used", None) or {}).items()}}))
"""


def test_more_fresh_draws_later_generate_and_judge_only_the_new_ones_and_cje_reads_them(run_copy, tmp_path, capsys):
    def three_draws(raw):
        for policy in ("step_by_step", "gemma"):
            raw["policies"][policy]["fresh_draws"] = 3

    config = write_config(tmp_path / "draws.yaml", three_draws)
    status, fake = run(run_copy, config, "--estimate")
    assert status == 0 and fake.calls == []
    # the new draws: 2 targets x 10 prompts x 2, generated and judged
    assert f"{PROMPTS} prompts, 312 work items, 232 already done" in capsys.readouterr().out
    before = {p: (run_copy / "phase2" / "deterministic" / "fresh_draws" / f"{p}_responses.jsonl").read_bytes() for p in ("twin", "terse")}
    status, fake = run(run_copy, config)
    assert status == 0
    # two targets x 10 prompts x 2 new draws, each generated and judged; nothing teacher-forced or labelled again
    assert fake.count("generate") == 2 * PROMPTS * 2 * 2 and fake.count("teacher_force") == 0
    assert all(c.system_prompt in (system_prompt(config, "step_by_step"), system_prompt(config, "gemma"), JUDGE_RUBRIC)
               for c in fake.calls)
    fresh = run_copy / "phase2" / "deterministic" / "fresh_draws"
    rows = [json.loads(line) for line in (fresh / "step_by_step_responses.jsonl").read_text().splitlines()]
    assert sorted((r["prompt_id"], r["draw_idx"]) for r in rows) == sorted((p, d) for p in {r["prompt_id"] for r in rows} for d in range(3))
    assert len({r["observation_id"] for r in rows}) == len(rows) == 3 * PROMPTS
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], set()).add(r["response"])
    assert sum(len(texts) > 1 for texts in by_prompt.values()) > PROMPTS // 2  # draws are sampled anew, not copied
    assert all(r["oracle_label"] is None for r in rows if r["draw_idx"] > 0)  # the validation slice labels the first
    assert {p: (fresh / f"{p}_responses.jsonl").read_bytes() for p in ("twin", "terse")} == before
    info = json.loads((run_copy / "phase2" / "dataset_info.json").read_text())
    assert info["fresh_draws"]["gemma"] == 3 * PROMPTS and info["fresh_draws"]["twin"] == PROMPTS
    for version in ("0.3.0", "0.9.3"):
        result = run_cje(version, DIRECT_DRAWS, str(run_copy / "phase2" / "deterministic"))
        assert sorted(result["policies"]) == sorted(load_config(config).target_policies)
        assert all(0.0 <= e <= 1.0 for e in result["estimates"]), result
        assert result["used"]["gemma"] == 3 * PROMPTS and result["used"]["twin"] == PROMPTS, result  # every draw counted
    status, fake = run(run_copy, config)  # finished: nothing to do
    assert status == 0 and fake.calls == []
    status, fake = run(run_copy, OWN_CONFIG)  # back to one draw: the first draws are the ones they were
    assert status == 0 and fake.calls == []
    assert len((fresh / "gemma_responses.jsonl").read_text().splitlines()) == PROMPTS

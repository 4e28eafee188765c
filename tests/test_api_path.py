"""The pipeline through the API path, against the project's loopback OpenAI-compatible server
(synthetic backend: fast, deterministic given the request seed, self-consistent log-probs)."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from arena10k.config import load_config
from arena10k.providers import stage_lanes
from arena10k.preflight import TOP_K_LADDER, planned_calls
from arena10k.server import FaultConfig, ServerConfig, run_in_thread
from arena10k.testing.loopback_config import KEY_ENV, made_up_prompts, write_loopback_config
from arena10k.workspace import Workspace
from conftest import PROJECT_ROOT, phase2_bytes, pipeline_command, run_pipeline

KEY = "loopback-test-key"
CHECKPOINTS = ("generate", "teacher_force", "judge", "oracle_calibration", "oracle_validation")


def api_config(path, base_url):
    return write_loopback_config(path, base_url, samples=12)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture(scope="module")
def clean_api_run(tmp_path_factory):
    """A fault-free API run, the reference for the others."""
    root = tmp_path_factory.mktemp("api_clean")
    os.environ[KEY_ENV] = KEY
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        result = run_pipeline(root / "data", config=api_config(root / "config.yaml", server.base_url))
        assert result.returncode == 0, result.stderr[-3000:]
        stats = server.stats()
    return root / "data", stats


def test_clean_api_run_is_complete_and_clone_weights_are_one(clean_api_run):
    data_dir, _ = clean_api_run
    info = json.loads((data_dir / "phase2" / "dataset_info.json").read_text())
    for stage, coverage in info["coverage"].items():
        assert coverage["done"] == coverage["expected"] > 0, stage
    assert info["weights"]["pi_clone"]["clone_check"] == "PASS"
    assert info["endpoints"]["small"] == "http://127.0.0.1/v1"  # which server, without the port a run may move from
    findings = json.loads((data_dir / "preflight.json").read_text())
    assert {f["verdict"] for model in findings.values() for f in model["findings"]} == {"ok"}
    assert {f["check"] for f in findings["small"]["findings"]} >= {"echo", "determinism", "temperature 0.7", "context pi_cot"}
    generated = [json.loads(line)["record"] for line in (data_dir / "checkpoints" / "generate.jsonl").read_text().splitlines()]
    assert all(r["n_tokens"] == r["max_tokens"] or (0 < r["n_tokens"] < r["max_tokens"] and r["finish_reason"] == "stop")
               for r in generated if r["text"])  # the API's own count, not 0 for want of token ids
    for path in data_dir.rglob("*"):  # logs, checkpoints, outputs, report
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
    methods = {line for line in (data_dir / "checkpoints" / "teacher_force.jsonl").read_text().splitlines()}
    assert all('"method": "api_echo_boundary_verified"' in line for line in methods)


def test_faults_change_nothing_in_the_result(clean_api_run, tmp_path, key):
    faults = FaultConfig(throttle_rate=0.20, throttle_retry_after_ms=100, error_rate=0.05, timeout_rate=0.02,
                         timeout_seconds=3.0, malformed_rate=0.01, fault_seed=8)
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=faults)) as server:
        # The synthetic server answers in milliseconds: a client that gives up on a held request after 0.5 s retries sooner.
        config = write_loopback_config(tmp_path / "config.yaml", server.base_url, samples=12, request_timeout=0.5)
        result = run_pipeline(tmp_path / "data", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert phase2_bytes(tmp_path / "data") == phase2_bytes(clean_api_run[0])


def test_echo_scoring_ignores_what_a_server_generates_after_the_text(clean_api_run, tmp_path, key):
    # As llama-cpp-python's server does with max_tokens=0: the echo comes back with a continuation.
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(echo_continuation_tokens=5))) as server:
        result = run_pipeline(tmp_path / "data", config=api_config(tmp_path / "config.yaml", server.base_url))
    assert result.returncode == 0, result.stderr[-3000:]
    assert phase2_bytes(tmp_path / "data") == phase2_bytes(clean_api_run[0])


def changed_config(path, base_url, change):
    config = json.loads(api_config(path, base_url).read_text())
    change(config)
    path.write_text(json.dumps(config))
    return path


def forced_records(data_dir):
    return {r["prompt_id"] + "|" + r["policy"]: r for r in
            (json.loads(line)["record"] for line in (data_dir / "checkpoints" / "teacher_force.jsonl").read_text().splitlines())}


def test_an_endpoint_with_temperature_one_echo_gives_certified_intervals_that_hold_the_exact_values(clean_api_run, tmp_path, key):
    """The server reports echo log-probs at temperature 1 and lists at most 20 alternatives per token, keyed by text with
    collisions; the clean run's exact log-probs at 0.7 (same models, same seeds, same responses) lie in every interval."""
    def analysed(config):
        config["analysis"]["enabled"] = True
        config["max_certified_width"] = 100.0  # the synthetic model's flat distributions leave 20 of 101 tokens far apart

    faults = FaultConfig(echo_at_temperature_one=True, colliding_alternatives=True, top_logprobs_cap=20)
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=faults)) as server:
        result = run_pipeline(tmp_path / "data", config=changed_config(tmp_path / "config.yaml", server.base_url, analysed))
    assert result.returncode == 0, result.stderr[-3000:]
    findings = {f["check"]: f for f in json.loads((tmp_path / "data" / "preflight.json").read_text())["small"]["findings"]}
    assert findings["alternatives"]["value"] == 20
    assert findings["temperature 0.7"]["verdict"] == "rescaled" and findings["temperature 0.7"]["top_k"] <= 20
    assert "expected width" in findings["temperature 0.7"]["detail"]
    exact, certified = forced_records(clean_api_run[0]), forced_records(tmp_path / "data")
    assert exact.keys() == certified.keys()
    for key_, row in certified.items():
        if row["policy"] == "pi_bad":  # at temperature 1: exact on any endpoint
            assert row["logprob"] == exact[key_]["logprob"] and row["logprob_low"] is None
            continue
        assert row["method"].endswith(":certified_from_temperature_1")
        assert row["logprob_low"] <= exact[key_]["logprob"] <= row["logprob_high"], key_
        assert row["logprob"] == (row["logprob_low"] + row["logprob_high"]) / 2
    info = json.loads((tmp_path / "data" / "phase2" / "dataset_info.json").read_text())
    assert info["weights"]["pi_clone"]["clone_check"] == "PASS"
    assert set(info["certified"]) == {"p0", "pi_clone", "pi_cot", "pi_bigger_model"}
    assert "Certified log-probs" in (tmp_path / "data" / "phase2" / "summary.txt").read_text()
    # Every log-ratio is moved to the end of its interval that lowers (raises) an importance-weighted mean of the judge
    # scores, and the off-policy estimates are made again at both ends. (cje's calibrated IPS and stacked DR calibrate
    # the weights and need not move the same way: the report gives the span of the three, not a bound.)
    def weighted_mean(path, policy):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        weights = [math.exp(r["target_policy_logprobs"][policy] - r["base_policy_logprob"]) for r in rows]
        return sum(w * r["judge_score"] for w, r in zip(weights, rows)) / sum(weights)

    estimates = json.loads((tmp_path / "data" / "analysis" / "estimates.json").read_text())
    for name, variant in estimates["variants"].items():
        folder = tmp_path / "data" / "phase2" / name
        lowered, point, raised = (weighted_mean(path, "pi_cot") for path in (
            folder / "certified_ends" / "lower" / "logged.jsonl", folder / "logged.jsonl", folder / "certified_ends" / "raise" / "logged.jsonl"))
        assert lowered < point < raised
        at = {end: variant["certified_ends"][end]["calibrated-ips"]["policies"] for end in ("lower", "raise")}
        assert at["lower"]["pi_cot"]["estimate"] != at["raise"]["pi_cot"]["estimate"]
        assert at["lower"]["pi_clone"]["estimate"] == at["raise"]["pi_clone"]["estimate"]  # its ratios are exactly 0
        assert "pi_cot" in variant["certified_ends"]["raise"]["stacked-dr"]["policies"]
    assert "certified range [" in result.stdout
    assert "at the certified ends" in (tmp_path / "data" / "phase2" / "report.md").read_text()


def test_rows_whose_certified_interval_is_too_wide_get_null_log_probs_with_the_reason(tmp_path, key):
    def narrow_limit(config):
        config["max_certified_width"] = 0.05
        config["judge"]["top_logprobs"] = config["oracle"]["top_logprobs"] = 10

    faults = FaultConfig(echo_at_temperature_one=True, top_logprobs_cap=10)
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=faults)) as server:
        result = run_pipeline(tmp_path / "data", config=changed_config(tmp_path / "config.yaml", server.base_url, narrow_limit))
    info = json.loads((tmp_path / "data" / "phase2" / "dataset_info.json").read_text())
    assert info["certified"]["p0"]["nulled"] == info["certified"]["p0"]["rows"] > 0
    assert info["certified"]["p0"]["max_width"] > 0.05
    rows = [json.loads(line) for line in (tmp_path / "data" / "phase2" / "deterministic" / "logged.jsonl").read_text().splitlines()]
    assert all(row["base_policy_logprob"] is None for row in rows)
    assert all("over max_certified_width 0.05" in row["metadata"]["null_logprob_reasons"]["p0"] for row in rows)
    assert all(row["target_policy_logprobs"]["pi_bad"] is not None for row in rows)  # exact, at temperature 1
    assert "nulled" in (tmp_path / "data" / "phase2" / "summary.txt").read_text()
    assert result.returncode == 0 or "weights are not to be used" in result.stderr


def test_a_policy_above_temperature_one_on_a_temperature_one_endpoint_is_refused_before_any_generation(tmp_path, key):
    def hot(config):
        config["policies"]["pi_bad"]["temperature"] = 1.3

    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(echo_at_temperature_one=True))) as server:
        result = run_pipeline(tmp_path / "data", config=changed_config(tmp_path / "config.yaml", server.base_url, hot))
    assert result.returncode == 2
    assert "above 1 no certified bound exists" in result.stderr and "pi_bad" in result.stderr
    assert "models.small (context p0)" not in result.stderr
    assert not (tmp_path / "data" / "checkpoints" / "generate.jsonl").exists()


def test_a_chat_template_one_newline_off_is_refused_by_the_preflight(tmp_path, key):
    def newline_off(config):
        for model in config["models"].values():
            model["chat_template"] = model["chat_template"].replace("<|end|>{% endfor %}", "<|end|>\n{% endfor %}")

    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        result = run_pipeline(tmp_path / "data", config=changed_config(tmp_path / "config.yaml", server.base_url, newline_off))
    assert result.returncode == 2
    assert "models.small (context p0)" in result.stderr and "chat_template" in result.stderr
    assert not (tmp_path / "data" / "checkpoints" / "generate.jsonl").exists()


def test_an_endpoint_that_refuses_echo_is_refused_before_any_generation(tmp_path, key):
    # As OpenAI's completions models answer echo with log-probs.
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(echo_refused=True))) as server:
        result = run_pipeline(tmp_path / "data", config=api_config(tmp_path / "config.yaml", server.base_url))
    assert result.returncode == 2
    assert "models.small (echo): HTTP 400" in result.stderr and "teacher forcing needs the text's log-probs echoed" in result.stderr
    assert "Serve the model where /v1/completions echoes prompt log-probs (echo with logprobs): vLLM" in result.stderr
    assert not (tmp_path / "data" / "checkpoints" / "generate.jsonl").exists()


def test_a_chat_endpoint_without_log_probs_leaves_the_context_unchecked_and_refuses_its_judge(tmp_path, key):
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(chat_without_logprobs=True))) as server:
        result = run_pipeline(tmp_path / "data", "--preflight", config=api_config(tmp_path / "config.yaml", server.base_url))
    recorded = json.loads((tmp_path / "data" / "preflight.json").read_text())
    context = [f for f in recorded["small"]["findings"] if f["check"].startswith("context ")]
    assert context and all(f["verdict"] == "unchecked" and "returned no token log-probs" in f["detail"] for f in context)
    # A judge scores from its reply's top log-probs, so one on this endpoint is refused before any generation.
    assert result.returncode == 2 and "models.small (judge grading): a probe grading failed (the judge's reply came without token log-probs" in result.stderr


def test_a_judge_and_an_oracle_without_log_probs_grade_by_sampling_end_to_end(tmp_path, key):
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(chat_without_logprobs=True))) as server:
        config_path = api_config(tmp_path / "config.yaml", server.base_url)
        config = json.loads(config_path.read_text())
        for role in ("judge", "oracle"):
            config[role] |= {"method": "sampled", "samples": 3, "temperature": 1.0}
        config_path.write_text(json.dumps(config))
        result = run_pipeline(tmp_path / "data", config=config_path)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((tmp_path / "data" / "preflight.json").read_text())
    assert [f["verdict"] for f in recorded["judge:small"]["findings"]] == ["ok"]
    for name in ("judge", "oracle_calibration", "oracle_validation"):
        records = [json.loads(line)["record"] for line in (tmp_path / "data" / "checkpoints" / f"{name}.jsonl").read_text().splitlines()]
        assert records and all(r["method"] == "greedy_digit+sampled_digits(n=3,T=1)" and len(r["sampled_replies"]) == 3
                               for r in records), name
        assert all(0 <= r["score_mean"] <= 1 and r["score_variance"] >= 0 and r["probability_mass"] > 0 for r in records)
    rows = [json.loads(line) for line in (tmp_path / "data" / "phase2" / "uncertainty" / "logged.jsonl").read_text().splitlines()]
    assert rows and all(row["metadata"]["judge_method"].startswith("greedy_digit+sampled_digits") for row in rows)
    assert sum(row["oracle_label"] is not None for row in rows) == 12  # calibration_fraction 1.0


def test_a_noisy_endpoint_passes_the_clone_check_within_its_measured_noise(tmp_path, key):
    # As batched GPU servers vary: the same text scores differently from call to call, so P0 and its clone differ.
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(logprob_noise=0.01, fault_seed=4))) as server:
        result = run_pipeline(tmp_path / "data", config=api_config(tmp_path / "config.yaml", server.base_url))
    assert result.returncode == 0, result.stderr[-2000:]
    noise = [f for f in json.loads((tmp_path / "data" / "preflight.json").read_text())["small"]["findings"]
             if f["check"] == "determinism"][0]["value"]
    assert 0 < noise < 0.1
    weights = json.loads((tmp_path / "data" / "phase2" / "dataset_info.json").read_text())["weights"]["pi_clone"]
    assert weights["clone_check"] == "PASS" and 0 < weights["clone_tolerance"] and weights["max_log_weight"] != 0
    assert "within the endpoint's measured noise" in (tmp_path / "data" / "phase2" / "report.md").read_text()


def test_an_echo_that_does_not_score_its_own_tokens_is_refused(tmp_path, key):
    # As llama-cpp-python's server echoes a text that does not start with its BOS token: one position off.
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(echo_shifted=True))) as server:
        result = run_pipeline(tmp_path / "data", "--preflight", config=api_config(tmp_path / "config.yaml", server.base_url))
    assert result.returncode == 2
    assert "models.small (sampling vs echo)" in result.stderr and "the echo does not score the tokens it returns" in result.stderr
    assert "models.big (sampling vs echo)" in result.stderr  # a sum over the tokens let the shift through for this one
    assert "(determinism)" not in result.stderr  # the same text still scores the same: only this check can tell


def test_an_endpoint_too_noisy_for_weights_is_refused(tmp_path, key):
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(logprob_noise=0.5))) as server:
        result = run_pipeline(tmp_path / "data", "--preflight", config=api_config(tmp_path / "config.yaml", server.base_url))
    assert result.returncode == 2
    assert "models.small (determinism)" in result.stderr and "too noisy for importance weights" in result.stderr


def test_a_judge_asking_for_more_top_log_probs_than_the_endpoint_gives_is_refused_before_any_generation(tmp_path, key):
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(top_logprobs_cap=5))) as server:
        result = run_pipeline(tmp_path / "data", config=api_config(tmp_path / "config.yaml", server.base_url))
    assert result.returncode == 2
    assert "models.small (judge grading): a probe grading failed (HTTP 400: top_logprobs must be at most 5" in result.stderr
    assert "set judge.top_logprobs to what the endpoint accepts" in result.stderr
    assert not (tmp_path / "data" / "checkpoints" / "generate.jsonl").exists()


def test_the_estimate_lists_the_preflight_calls_it_will_make(tmp_path, key):
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        config = api_config(tmp_path / "config.yaml", server.base_url)
        estimate = run_pipeline(tmp_path / "data", "--estimate", config=config)
        preflight = run_pipeline(tmp_path / "data", "--preflight", config=config)
        made = server.stats()["completions"]
        again = run_pipeline(tmp_path / "data", "--estimate", config=config)
    assert estimate.returncode == preflight.returncode == again.returncode == 0, preflight.stderr[-2000:]
    listed = [line.split() for line in estimate.stdout.splitlines() if line.strip().startswith("preflight")]
    assert [row[1] for row in listed] == ["big", "small", "oracle"]  # those that serve policies, then the oracle
    # All but what certifying a temperature would take on the two models that serve policies at 0.7: this endpoint's
    # echo follows the temperature, which the estimate cannot know before the preflight measures it.
    assert sum(int(row[3]) for row in listed) == made + 2 * (len(TOP_K_LADDER) + 1)
    assert "preflight" not in again.stdout  # its findings are on record now


def test_two_model_entries_naming_one_served_model_are_measured_once(tmp_path, key):
    """`big` names the model `small` names: the preflight measures that server once, for the policies of both, and
    each entry keeps the findings about the server and about its own policies."""
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        config = api_config(tmp_path / "config.yaml", server.base_url)
        apart = planned_calls(load_config(config), Workspace(tmp_path / "data"))
        settings = json.loads(config.read_text())
        settings["models"]["big"]["model"] = settings["models"]["small"]["model"]
        config.write_text(json.dumps(settings))
        planned = planned_calls(load_config(config), Workspace(tmp_path / "data"))
        result = run_pipeline(tmp_path / "data", "--preflight", config=config)
        made = server.stats()["completions"]
    assert result.returncode == 0, result.stderr[-2000:]
    # pi_bigger_model samples as p0 does: measuring big on its own is what the shared server saves.
    assert sum(apart.values()) - sum(planned.values()) == apart["big"]
    # As in the test above: all but certifying 0.7, as this endpoint's echo follows the temperature.
    assert made == sum(planned.values()) - (len(TOP_K_LADDER) + 1)
    recorded = json.loads((tmp_path / "data" / "preflight.json").read_text())
    checks = {model: {f["check"]: f for f in recorded[model]["findings"]} for model in ("small", "big")}
    assert set(checks["big"]) == {"echo", "determinism", "sampling vs echo", "temperature 0.7", "context pi_bigger_model",
                                  "template pi_bigger_model"}
    assert {"context p0", "context pi_bad", "template pi_cot"} <= set(checks["small"]) and "pi_bigger_model" not in str(set(checks["small"]))
    assert all(f["model"] == "big" for f in checks["big"].values())
    assert checks["big"]["determinism"]["value"] == checks["small"]["determinism"]["value"]


def test_killed_api_runs_resume_to_the_clean_result_without_duplicates(clean_api_run, tmp_path, key):
    data_dir = tmp_path / "data"
    rng = random.Random(3)
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(latency_ms=20))) as server:
        config = api_config(tmp_path / "config.yaml", server.base_url)
        kills = 0
        for _ in range(3):
            process = subprocess.Popen(pipeline_command(data_dir, config=config), cwd=PROJECT_ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(1.5, 4.0))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait()
        result = run_pipeline(data_dir, config=config)
        assert result.returncode == 0, result.stderr[-3000:]
        completions = server.stats()["completions"]
    assert kills >= 1
    assert phase2_bytes(data_dir) == phase2_bytes(clean_api_run[0])
    for name in CHECKPOINTS:
        keys = [json.loads(line)["key"] for line in (data_dir / "checkpoints" / f"{name}.jsonl").read_text().splitlines()]
        assert len(keys) == len(set(keys)), f"duplicate lines in {name}"
    # Work repeated because of the kills is at most, per kill, what a stage keeps in flight (a lane per model) and
    # the calls of a preflight probe cut short (its findings are written when it ends).
    settings = load_config(config)
    in_flight = max(sum(stage_lanes(settings, models).values()) for models in (settings.policy_models(), {settings.judge.model}))
    probe = max(planned_calls(settings, Workspace(tmp_path / "fresh")).values())
    assert completions - clean_api_run[1]["completions"] <= kills * (in_flight + probe)


def test_an_outage_stops_the_run_naming_the_endpoint_and_a_rerun_completes(clean_api_run, tmp_path, key):
    """With one attempt per item and few retries per call, the calls in flight when the server goes give up on it:
    an outage uses none of their attempts, so the rerun completes with nothing failed."""
    data_dir = tmp_path / "data"
    generate = data_dir / "checkpoints" / "generate.jsonl"
    server = run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(latency_ms=100)))
    config = write_loopback_config(tmp_path / "config.yaml", server.base_url, samples=12, outage_seconds=3, max_retries=1,
                                   max_attempts=1)
    process = subprocess.Popen(pipeline_command(data_dir, config=config), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (generate.exists() and generate.read_text().count("\n") >= 10):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    server.stop()  # the endpoint goes down in the middle of stage 2
    stopped = time.monotonic()
    _, error = process.communicate(timeout=120)
    assert process.returncode == 2 and time.monotonic() - stopped < 30
    assert f"{server.base_url} (synthetic-" in error and error.count("is not answering") == 1  # small or big: generate calls both
    assert '"status": "failed"' not in generate.read_text()  # the outage is charged to no item
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as back:  # back, on another port
        result = run_pipeline(data_dir, config=write_loopback_config(tmp_path / "config.yaml", back.base_url, samples=12,
                                                                     max_retries=1, max_attempts=1))
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads((data_dir / "phase2" / "dataset_info.json").read_text())
    assert not info["excluded_prompts"] and all(not c["failed"] for c in info["coverage"].values())
    clean = json.loads((clean_api_run[0] / "phase2" / "dataset_info.json").read_text())
    assert {**info, "config": None} == {**clean, "config": None}  # the configs differ in max_retries and max_attempts
    assert {k: v for k, v in phase2_bytes(data_dir).items() if k.endswith(".jsonl")} == {
        k: v for k, v in phase2_bytes(clean_api_run[0]).items() if k.endswith(".jsonl")}


def test_invalid_key_stops_the_stage_at_the_first_401_and_writes_no_scores(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        result = run_pipeline(tmp_path / "data", config=api_config(tmp_path / "config.yaml", server.base_url))
        requests = server.stats()["completions"]
    assert result.returncode == 2
    assert "rejected the API key (HTTP 401)" in result.stderr
    assert requests <= 8  # the calls already in flight, no more
    generated = tmp_path / "data" / "checkpoints" / "generate.jsonl"
    assert not generated.exists() or generated.read_text() == ""
    assert not (tmp_path / "data" / "checkpoints" / "judge.jsonl").exists()


def test_an_account_out_of_credit_stops_the_run_at_its_first_429_and_writes_nothing(tmp_path, key):
    """A 429 insufficient_quota is not a rate limit: no retry or wait can succeed, so the run stops at once, as for a
    wrong key, instead of retrying every item until its retries run out."""
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(quota_exhausted=True))) as server:
        result = run_pipeline(tmp_path / "data", config=api_config(tmp_path / "config.yaml", server.base_url))
        stats = server.stats()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "refused the account for its quota (HTTP 429 insufficient_quota: You exceeded your current quota" in result.stderr
    assert "Add credit or raise the account's limit" in result.stderr and result.stderr.count("refused the account") == 1
    assert stats["completions"] == 1  # the preflight's first call, not retried
    assert not (tmp_path / "data" / "checkpoints" / "generate.jsonl").exists()


def test_rerun_of_finished_api_run_makes_zero_calls(clean_api_run, key, tmp_path):
    data_dir, _ = clean_api_run
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        config = api_config(tmp_path / "config.yaml", server.base_url)
        # The fingerprint excludes how calls are made, so a new port resumes the same run.
        result = run_pipeline(data_dir, config=config)
        assert result.returncode == 0, result.stderr[-2000:]
        assert server.stats()["completions"] == 0


def test_arena_10k_config_dry_runs_through_the_loopback_server(tmp_path):
    data_dir = tmp_path / "dry"
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "dry_run.py"), "--config",
                             str(PROJECT_ROOT / "configs" / "arena_10k.yaml"), "--samples", "6", "--dataset",
                             str(PROJECT_ROOT / "data" / "prompts" / "arena10k_prompts.jsonl"), "--data-dir", str(data_dir)],
                            capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((data_dir / "phase2" / "dataset_info.json").read_text())
    assert all(c["done"] == c["expected"] for c in info["coverage"].values())
    assert info["weights"]["pi_clone"]["clone_check"] == "PASS"
    # 6 prompts x 5 policies x (generate + teacher_force + judge) + oracle: 2 P0 responses + 2 prompts x 4 targets,
    # and the preflight: per model two echoes, one at each other temperature, a sampled continuation and its two
    # echoes, and per policy a probe, an echo that clears a server's cache and the probe's scoring; a probe grading
    # by the judge and by the oracle
    assert "dry run: 126 requests" in result.stdout
    assert "unchecked  differs by" in result.stdout  # the loopback server samples in its own chat template
    assert "  llama4_maverick  echo  " in result.stdout  # the preflight's columns apart, whatever the names' lengths
    assert "expected to score apart under the config's; not a gate here" in result.stdout
    estimates = json.loads((data_dir / "analysis" / "estimates.json").read_text())
    assert estimates["dry_run"] and "DRY RUN: synthetic responses from the loopback server, not a result" in result.stdout
    # 6 prompts give 2 calibration labels: no ranking can be claimed, whatever the intervals say
    assert estimates["verdict"].startswith("These estimates cannot rank the policies; gates not passed: oracle labels: 2 ")


def analysed(config_path, enabled: bool) -> None:
    """Turns the analyze stage of a loopback config on or off."""
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "analysis": {"enabled": enabled}}))


def test_a_prompt_longer_than_the_context_leaves_the_answer_partial_and_the_rest_estimated(tmp_path, key):
    """The loopback server refuses a 50,000-character prompt (HTTP 400, longer than its context) at its first call: the
    prompt is left out for good, the other prompts are estimated, the exit status and message say the answer is
    partial, and --retry-failed tries it again."""
    rows = (PROJECT_ROOT / "data" / "prompts" / "arena10k_prompts.jsonl").read_text().splitlines()[:12]  # 11 unique
    long_prompt = "Summarise this text. " + "The quick brown fox jumps over the lazy dog again. " * 980
    assert len(long_prompt) > 50_000
    rows.append(json.dumps({"question_id": "long", "conversation_a": [{"role": "user", "content": long_prompt}]}))
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("\n".join(rows) + "\n")
    data_dir = tmp_path / "data"
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        path = write_loopback_config(tmp_path / "config.yaml", server.base_url, samples=12, dataset=str(dataset))
        analysed(path, True)
        result = run_pipeline(data_dir, config=path)
        assert result.returncode == 4, result.stderr[-2000:]
        assert "partial: The answer is partial: 1 of 12 prompts are left out of every file" in result.stderr
        assert "maximum context length" in result.stderr and "Retry with: python" in result.stderr and "--retry-failed" in result.stderr
        info = json.loads((data_dir / "phase2" / "dataset_info.json").read_text())
        (left_out, reasons), = info["excluded_prompts"].items()
        assert len(reasons) == 5 and all("HTTP 400" in reason for reason in reasons)  # a generation per policy, refused once
        assert info["logged_rows"] == 11 and info["pending"] == {}
        assert json.loads((data_dir / "analysis" / "estimates.json").read_text())["analysed"]
        assert "Estimates (cje-eval" in result.stdout
        assert f"{left_out}: generate p0: HTTP 400" in (data_dir / "phase2" / "summary.txt").read_text()
        first = server.stats()["completions"]
        analysed(path, False)  # estimated once is enough
        retried = run_pipeline(data_dir, "--retry-failed", config=path)
        again = server.stats()["completions"] - first
    assert retried.returncode == 4 and "generate: 5 failed items get their attempts again" in retried.stdout
    assert again == 5  # the five refused generations, tried once more; nothing else


def test_the_smallest_dry_runs_of_the_flagship_end_with_estimates(tmp_path):
    """At 3 prompts, then grown to 4 (which reuses the first 3): cje's intervals need not contain their estimates."""
    for samples in ("3", "4"):
        result = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "dry_run.py"), "--config",
                                 str(PROJECT_ROOT / "configs" / "arena_10k.yaml"), "--samples", samples, "--dataset",
                                 str(PROJECT_ROOT / "data" / "prompts" / "arena10k_prompts.jsonl"), "--data-dir",
                                 str(tmp_path / "dry")], capture_output=True, text=True, cwd=PROJECT_ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "Estimates (cje-eval" in result.stdout
        assert "## Estimates" in (tmp_path / "dry" / "phase2" / "report.md").read_text()
        assert json.loads((tmp_path / "dry" / "phase2" / "dataset_info.json").read_text())["prompts"] == int(samples)


def test_a_dry_run_with_a_missing_dataset_stops_before_any_request(tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "dry_run.py"), "--config",
                             str(PROJECT_ROOT / "configs" / "arena_10k.yaml"), "--samples", "3", "--dataset",
                             str(tmp_path / "absent.jsonl"), "--data-dir", str(tmp_path / "dry")],
                            capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 2 and "absent.jsonl does not exist" in result.stderr and "Traceback" not in result.stderr
    assert "dry run: 0 requests to the loopback server" in result.stdout


def test_where_the_policies_differ_the_estimates_are_checked_against_the_truth_they_should_recover(tmp_path, key, drawn_figures):
    """A loopback run whose synthetic models give the policies different true values and judges that track them
    (benchmarks/oracle_truth_loopback.py at 200 prompts; BENCHMARKS.md has its table): every truth judges, the truths
    are told apart, and the estimators that should recover them do, within a few hundredths."""
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        config = write_loopback_config(tmp_path / "config.yaml", server.base_url, samples=120,
                                       dataset=str(made_up_prompts(tmp_path / "prompts.jsonl", 120)),
                                       calibration_fraction=0.5, validation_fraction=0.5, analysed=True)
        # Direct's bootstrap sets its interval only, which is not checked here: the fewest replicates the config takes.
        analysis = {"enabled": True, "bootstrap_replicates": 200}
        config.write_text(json.dumps({**json.loads(config.read_text()), "analysis": analysis}))
        result = run_pipeline(tmp_path / "data", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    estimates = json.loads((tmp_path / "data" / "analysis" / "estimates.json").read_text())
    truths = estimates["oracle_truth"]
    assert all(t["judged"] and t["n"] == 60 for t in truths.values())
    assert truths["pi_bigger_model"]["ci_low"] > truths["pi_clone"]["ci_high"] > truths["pi_clone"]["mean"] > truths["pi_bad"]["ci_high"]
    for variant in ("deterministic", "uncertainty"):
        checks = estimates["variants"][variant]["against_truth"]
        assert checks["stacked-dr"]["rmse"] < 0.04 and checks["stacked-dr"]["covered"] == 4
        held_out = estimates["variants"][variant]["coverage_ablation"][-1]["estimators"]
        assert held_out["direct"]["against_truth"]["rmse"] < 0.04  # calibrated on P0's labels only
        assert held_out["calibrated-ips"]["against_truth"]["errors"] == 4
    assert "oracle truth (mean oracle label" in result.stdout and "error against the truth with a share" in result.stdout
    assert (tmp_path / "data" / "phase2" / "figures" / "oracle_ablation.png").is_file()

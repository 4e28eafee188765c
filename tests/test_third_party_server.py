"""The pipeline against a server nobody here wrote: llama-cpp-python's own OpenAI-compatible server
(`python -m llama_cpp.server`, its [server] extra), serving the embedded SmolLM2 GGUF on loopback, through the
openai provider, as a user points the README's "any OpenAI-compatible server" setup at it.

That server reports echo log-probs at temperature 1 whatever the request asks, so the preflight must refuse a
policy sampling above 1 before any generation, and teacher-force policies at 0.5 and 0.7 as certified intervals
from the top-k alternatives: every P0 row's interval must contain the log-prob the same model computes exactly in
process at the policy's temperature (up to the server's rounding), and the clone's weights must be 1. At temperature
1 P0's teacher-forced log-probs must be those the same model computes in process. A template one newline off from
the server's is refused. The flagship config, every model served by this server, passes the preflight."""

import functools
import json
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import llama_cpp
import pytest
import yaml

from arena10k.models import gguf_path
from arena10k.providers.base import TeacherForceRequest
from arena10k.providers.local import LocalProvider
from arena10k.config import load_config
from conftest import PROJECT_ROOT, run_pipeline

KEY_ENV, KEY = "ARENA10K_LLAMA_SERVER_KEY", "llama-server-test-key"
MODEL = "smollm2-135m-instruct"
# The server evaluates a text in other batch shapes (512 tokens, no flash attention) than the embedded provider
# (32, with it), so the two compute the same model with other rounding: measured here, up to 0.11 nats over an
# 8-token response (0.014 per token).
TOLERANCE_NATS_PER_TOKEN = 0.05


@pytest.fixture(scope="module")
def llama_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path(MODEL)), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--api_key", KEY],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
            urllib.request.urlopen(request, timeout=5).read()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "llama-cpp-python's server did not start"
            time.sleep(0.5)
    yield base_url
    process.terminate()
    process.wait(timeout=30)


@functools.cache
def served_template() -> str:
    return llama_cpp.Llama(str(gguf_path(MODEL)), vocab_only=True, verbose=False).metadata["tokenizer.chat_template"]


def served_model(base_url) -> dict:
    """A model entry for the server, as a user writes it: the openai provider, the server's own template."""
    return {"provider": "openai", "base_url": base_url, "api_key_env": KEY_ENV, "model": "smollm2",
            "chat_template": served_template(), "end_of_turn": "<|im_end|>", "concurrency": 1, "request_timeout": 120}


def server_config(base_url) -> dict:
    """The experiment a user means to run on the server: the logging policy and its clone at 0.5, step_by_step at 0.7
    (another system prompt), plain at 1."""
    policy = {"model": "server", "system_prompt": "You are a helpful assistant.", "temperature": 0.5, "max_tokens": 8}
    return {"name": "llama_server", "seed": 3, "samples": 2, "dataset": "data/prompts/arena10k_prompts.jsonl",
            "max_attempts": 2, "logging_policy": "assistant", "models": {"server": served_model(base_url)},
            "policies": {"assistant": policy, "twin": policy,
                         "step_by_step": {**policy, "system_prompt": "You are a helpful assistant. Think step by step.",
                                          "temperature": 0.7},
                         "plain": {**policy, "temperature": 1.0}},
            "judge": {"model": "server", "max_tokens": 4, "top_logprobs": 20},
            "oracle": {"enabled": False, "model": "server"}, "analysis": {"enabled": False}}


def records(path):
    return [json.loads(line)["record"] for line in path.read_text().splitlines()]


def logged_responses(data_dir):
    return [r for r in records(data_dir / "checkpoints" / "generate.jsonl") if r["policy"] == "assistant"]


def teacher_forced(data_dir):
    return {(r["prompt_id"], r["policy"]): r for r in records(data_dir / "checkpoints" / "teacher_force.jsonl")}


class InProcess:
    """The same model in process: a logged response's exact log-prob under a policy, at a temperature."""

    def __init__(self, config, data_dir):
        self._config, self._model = config, LocalProvider(MODEL, n_ctx=2048)
        self._prompts = {p["prompt_id"]: p["prompt"] for p in map(json.loads, (data_dir / "prompts.jsonl").read_text().splitlines())}

    def teacher_force(self, row, policy_name, temperature):
        policy = self._config.policies[policy_name]
        return self._model.teacher_force(TeacherForceRequest(
            policy.messages(self._prompts[row["prompt_id"]]), temperature, row["text"], row["tokenizer"],
            (), None, ended_turn=row["finish_reason"] == "stop"))


def preflight_findings(data_dir):
    findings = json.loads((data_dir / "preflight.json").read_text())["server"]["findings"]
    print("\n".join(f"{f['check']:<22}{f['verdict']:<11}{f['detail']}" for f in findings))
    return {f["check"]: f for f in findings}


@pytest.fixture(scope="module")
def refused_then_fixed(llama_server, tmp_path_factory):
    """A user's first config, refused before any generation: besides policies at 0.5, 0.7 and 1 on the server, a second
    model entry for the same server has a template one newline off and serves `newline` (at 1) and `hot` (at 1.3). The
    user drops that entry and its policies and runs again in the same directory: the preflight's findings for the
    entry kept are on record, so only the run is made."""
    off_by_a_newline = served_template().replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n\n'")
    assert off_by_a_newline != served_template()
    root = tmp_path_factory.mktemp("llama_server_run")
    fixed = server_config(llama_server)
    first = {**fixed, "models": {**fixed["models"], "off": {**fixed["models"]["server"], "chat_template": off_by_a_newline}},
             "policies": {**fixed["policies"], "newline": {**fixed["policies"]["plain"], "model": "off"},
                          "hot": {**fixed["policies"]["plain"], "model": "off", "temperature": 1.3}}}
    config_path, data_dir = root / "config.yaml", root / "data"  # JSON is YAML
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, KEY)
        config_path.write_text(json.dumps(first))
        refused = run_pipeline(data_dir, config=config_path)
        refused_findings = json.loads((data_dir / "preflight.json").read_text())
        generated_when_refused = (data_dir / "checkpoints" / "generate.jsonl").exists()
        config_path.write_text(json.dumps(fixed))
        result = run_pipeline(data_dir, config=config_path)
    return SimpleNamespace(config_path=config_path, data_dir=data_dir, refused=refused, refused_findings=refused_findings,
                           generated_when_refused=generated_when_refused, result=result)


def test_a_policy_above_temperature_one_and_a_template_one_newline_off_are_refused_before_any_generation(refused_then_fixed):
    refused, findings = refused_then_fixed.refused, refused_then_fixed.refused_findings
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "above 1 no certified bound exists" in refused.stderr and "models.off (temperature 1.3)" in refused.stderr
    assert "models.off (template newline): greedy continuations" in refused.stderr
    assert "models.server (" not in refused.stderr  # the right template, temperatures up to 1: it passes
    verdicts = {f["check"]: f["verdict"] for f in findings["off"]["findings"]}
    assert verdicts["temperature 1.3"] == verdicts["template newline"] == "refused"
    assert not refused_then_fixed.generated_when_refused


def test_policies_below_temperature_one_get_certified_intervals_that_hold_and_one_at_one_is_exact(refused_then_fixed):
    config_path, data_dir, result = refused_then_fixed.config_path, refused_then_fixed.data_dir, refused_then_fixed.result
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    findings = preflight_findings(data_dir)
    assert findings["temperature 0.5"]["verdict"] == findings["temperature 0.7"]["verdict"] == "rescaled"
    assert findings["template assistant"]["verdict"] == findings["context assistant"]["verdict"] == "ok"
    assert "refused" not in {f["verdict"] for f in findings.values()}
    info = json.loads((data_dir / "phase2" / "dataset_info.json").read_text())
    assert info["weights"]["twin"]["clone_check"] == "PASS"
    assert set(info["certified"]) == {"assistant", "twin", "step_by_step"}
    phase2_rows = [json.loads(line) for line in (data_dir / "phase2" / "deterministic" / "logged.jsonl").read_text().splitlines()]
    assert all(row["target_policy_logprobs"]["twin"] == row["base_policy_logprob"] for row in phase2_rows)
    assert (data_dir / "phase2" / "deterministic" / "certified_ends" / "raise" / "logged.jsonl").exists()

    config = load_config(config_path)
    logged, forced, in_process = logged_responses(data_dir), teacher_forced(data_dir), InProcess(config, data_dir)
    outside = []
    for row in logged:
        for name in ("assistant", "step_by_step"):
            api = forced[(row["prompt_id"], name)]
            assert api["method"].endswith(":certified_from_temperature_1") and api["top_k"] >= 5
            temperature = config.policies[name].temperature
            exact, exact_one = (in_process.teacher_force(row, name, t).logprob for t in (temperature, 1.0))
            # The server's rounding of temperature-1 log-probs, as in the test below, is multiplied by 1/T in log p_T.
            slack = TOLERANCE_NATS_PER_TOKEN / temperature * api["n_tokens"]
            print(f"{name}: exact {exact:.4f} in [{api['logprob_low']:.4f}, {api['logprob_high']:.4f}] (k={api['top_k']}, "
                  f"{api['n_tokens']} tokens); at temperature 1 in process {exact_one:.4f}, server {api['temperature_one_logprob']:.4f}")
            if not api["logprob_low"] - slack <= exact <= api["logprob_high"] + slack:
                outside.append((name, exact, api["logprob_low"], api["logprob_high"]))
    assert not outside
    # At temperature 1 the echo is exact: P0's responses score as the same model scores them in process.
    differences = []
    for row in logged:
        api = forced[(row["prompt_id"], "plain")]
        assert api["method"] == "api_echo_boundary_verified" and api["logprob_low"] is None
        local = in_process.teacher_force(row, "plain", 1.0)
        assert local.n_tokens == api["n_tokens"]
        differences.append((abs(local.logprob - api["logprob"]), api["n_tokens"]))
    print("differences from the in-process log-probs at temperature 1 (nats, tokens):", [(round(d, 4), n) for d, n in differences])
    assert all(difference <= TOLERANCE_NATS_PER_TOKEN * n for difference, n in differences)


def test_the_flagship_config_served_by_the_server_passes_the_preflight_with_its_temperatures(llama_server, tmp_path, monkeypatch):
    """configs/arena_10k.yaml with every model replaced by llama-cpp-python's server (its template, its end of turn):
    P0, the clone, pi_cot and pi_bigger_model at 0.5 are rescaled, pi_bad at 1 is exact, nothing is refused."""
    monkeypatch.setenv(KEY_ENV, KEY)
    flagship = yaml.safe_load((PROJECT_ROOT / "configs" / "arena_10k.yaml").read_text())
    flagship["models"] = {name: served_model(llama_server) for name in flagship["models"]}
    flagship["dataset"] = "data/prompts/arena10k_prompts.jsonl"
    path = tmp_path / "arena_10k.yaml"
    path.write_text(yaml.safe_dump(flagship))
    result = run_pipeline(tmp_path / "data", "--preflight", config=path)
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    findings = json.loads((tmp_path / "data" / "preflight.json").read_text())
    for model in ("llama4_scout", "llama4_maverick"):
        verdicts = {f["check"]: f["verdict"] for f in findings[model]["findings"]}
        assert verdicts["temperature 0.5"] == "rescaled" and "refused" not in verdicts.values(), verdicts
    assert load_config(path).policies["p0"].temperature == 0.5

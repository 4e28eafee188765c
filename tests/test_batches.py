"""Batch mode (models with batch: true) through the loopback server's Files and Batches endpoints: the same Phase 2 files
as online, every batch on record, resumed after a kill at any moment of a batch's life without sending a request twice,
expired batches finished, failed lines retried, Ctrl-C and --cancel-batches."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from arena10k import batches
from arena10k.batches import Ledger
from arena10k.config import ModelConfig
from arena10k.providers.base import GenerationRequest, ItemCalls
from arena10k.providers.batch_api import BatchStatus
from arena10k.providers.hosted import HostedProvider
from arena10k.ratelimit import RateLimiter
from arena10k.workspace import Workspace
from arena10k.server import FaultConfig, ServerConfig, run_in_thread
from arena10k.testing.loopback_config import KEY_ENV, write_loopback_config
from conftest import PROJECT_ROOT, phase2_bytes, pipeline_command, run_pipeline

KEY = "batch-test-key"
PROMPTS = 6
CHECKPOINTS = ("generate", "teacher_force", "judge", "oracle_calibration", "oracle_validation")
# Items sent in batches: 5 policies' responses, their 5 judgements, 6 + 2 oracle labels (validation: 1 prompt, 4 targets).
BATCHED_REQUESTS = 5 * PROMPTS + 5 * PROMPTS + PROMPTS + 4 * 2
QUICK = dict(batch_step_seconds=0.05)


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def config(path, server, **settings):
    return write_loopback_config(path, server.base_url, samples=PROMPTS, batch=True, **settings)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    """The same experiment made online: what every batch run must give."""
    root = tmp_path_factory.mktemp("online")
    os.environ[KEY_ENV] = KEY
    with run_in_thread(ServerConfig("synthetic", api_key=KEY)) as server:
        result = run_pipeline(root / "data", config=write_loopback_config(root / "config.yaml", server.base_url,
                                                                          samples=PROMPTS))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "data"


def assert_same_as_online(data_dir, online_run):
    assert phase2_bytes(data_dir) == phase2_bytes(online_run)
    for name in CHECKPOINTS:
        lines = [json.loads(line) for line in (data_dir / "checkpoints" / f"{name}.jsonl").read_text().splitlines()]
        keys = [line["key"] for line in lines if line["status"] == "ok"]
        assert len(keys) == len(set(keys)), f"an item of {name} was written twice"


def test_a_batch_run_gives_the_online_runs_phase2_files_with_every_batch_on_record(online_run, tmp_path):
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(**QUICK))) as server:
        result = run_pipeline(tmp_path / "data", config=config(tmp_path / "config.yaml", server))
        stats = server.stats()
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_as_online(tmp_path / "data", online_run)
    ledger = Ledger(tmp_path / "data" / "batches.jsonl")
    # generate: a batch per model (small, big); judge; the oracle's two slices.
    assert sorted((b.checkpoint, b.model) for b in ledger.batches.values()) == [
        ("generate", "big"), ("generate", "small"), ("judge", "small"), ("oracle_calibration", "oracle"),
        ("oracle_validation", "oracle")]
    assert all(b.collected and b.status == "completed" and b.batch_id and b.records == b.requests
               for b in ledger.batches.values())
    assert stats["batch_api"]["requests_submitted"] == stats["batch_api"]["distinct_requests"] == BATCHED_REQUESTS
    # Online: the preflight and teacher forcing only.
    assert stats["endpoints"]["/v1/chat/completions"]["received"] < 30
    assert "completed, 30/30 requests done" in result.stderr  # judge: one batch of every response
    assert not (tmp_path / "data" / "batches").exists() or not any((tmp_path / "data" / "batches").iterdir())
    shown = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "status.py"), "--data-dir", str(tmp_path / "data")],
                           capture_output=True, text=True, cwd=PROJECT_ROOT).stdout
    report = (tmp_path / "data" / "phase2" / "report.md").read_text()
    for batch in ledger.batches.values():
        assert f"{batch.batch_id}  {batch.checkpoint}" in shown  # its state, counts and age
        assert f"| {batch.batch_id} | {batch.checkpoint} | {batch.model} | {batch.requests} | completed |" in report
    assert shown.count("completed, collected") == 5


def test_a_run_killed_at_every_moment_of_a_batchs_life_resumes_without_sending_a_request_twice(online_run, tmp_path):
    data_dir = tmp_path / "data"
    # Slow enough lines that a look at a running batch finds it running.
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=FaultConfig(batch_step_seconds=0.3,
                                                                                  batch_line_ms=40))) as server:
        settings = config(tmp_path / "config.yaml", server)
        for point in ("writing", "uploaded", "before_submit", "submitted", "polling", "collecting"):
            killed = subprocess.run([sys.executable, str(PROJECT_ROOT / "tests" / "kill_at.py"), point,
                                     *pipeline_command(data_dir, config=settings)[2:]],
                                    cwd=PROJECT_ROOT, capture_output=True, text=True)
            assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        result = run_pipeline(data_dir, config=settings)
        stats = server.stats()["batch_api"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_as_online(data_dir, online_run)
    assert stats["requests_submitted"] == stats["distinct_requests"] == BATCHED_REQUESTS  # none sent twice: as many as the run has, all different
    assert stats["lines_served"] == BATCHED_REQUESTS
    ledger = Ledger(data_dir / "batches.jsonl")
    assert all(b.collected for b in ledger.batches.values())
    assert len({b.batch_id for b in ledger.batches.values()}) == 5  # the batch submitted before its id was written, found again


def test_an_expired_batch_gives_what_it_finished_and_the_rest_is_sent_again(online_run, tmp_path):
    faults = FaultConfig(**QUICK, batch_expire_first=1)  # the first batch (generate, small: 4 policies) expires half done
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=faults)) as server:
        result = run_pipeline(tmp_path / "data", config=config(tmp_path / "config.yaml", server))
        stats = server.stats()["batch_api"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_as_online(tmp_path / "data", online_run)
    expired = [b for b in Ledger(tmp_path / "data" / "batches.jsonl").batches.values() if b.status == "expired"]
    assert len(expired) == 1 and expired[0].requests == 4 * PROMPTS and expired[0].records == 2 * PROMPTS
    assert stats["requests_submitted"] - stats["distinct_requests"] == 2 * PROMPTS  # only what it did not finish, again
    assert stats["lines_served"] == stats["distinct_requests"] == BATCHED_REQUESTS


def test_lines_a_batch_failed_are_recorded_with_the_reason_and_sent_again_in_a_later_batch(online_run, tmp_path):
    """With the big model online: its responses are generated while the small model's batch runs."""
    faults = FaultConfig(**QUICK, batch_line_error_rate=0.3)  # each fails the first time it is sent, not after
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=faults)) as server:
        path = config(tmp_path / "config.yaml", server)
        settings = json.loads(path.read_text())
        settings["models"]["big"]["batch"] = False
        path.write_text(json.dumps(settings))
        result = run_pipeline(tmp_path / "data", config=path)
        stats = server.stats()["batch_api"]
    assert {b.model for b in Ledger(tmp_path / "data" / "batches.jsonl").batches.values()} == {"small", "oracle"}
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_as_online(tmp_path / "data", online_run)
    failures = [json.loads(line) for name in CHECKPOINTS
                for line in (tmp_path / "data" / "checkpoints" / f"{name}.jsonl").read_text().splitlines()
                if '"failed"' in line]
    assert failures and {f["error"] for f in failures} == {
        "batch line HTTP 500: The server had an error processing this request (injected)."}
    assert stats["requests_submitted"] - stats["distinct_requests"] == len(failures)


def test_ctrl_c_leaves_the_batches_running_and_cancel_batches_cancels_them_then_a_rerun_finishes(online_run, tmp_path):
    data_dir = tmp_path / "data"
    ledger_path = data_dir / "batches.jsonl"
    # The interrupted run's two batches take 1 s a line; those the rerun sends take none.
    faults = FaultConfig(**QUICK, batch_line_ms=1000, batch_slow_first=2)
    with run_in_thread(ServerConfig("synthetic", api_key=KEY, faults=faults)) as server:
        settings = config(tmp_path / "config.yaml", server)
        process = subprocess.Popen(pipeline_command(data_dir, config=settings), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (ledger_path.exists() and ledger_path.read_text().count('"submitted"') == 2):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, error = process.communicate(timeout=60)
        assert process.returncode == 130
        # Both, or only the small one where the big one's 6 lines were done and seen before the interrupt landed.
        still_running = Ledger(ledger_path).running()
        assert "small" in {b.model for b in still_running}
        assert f"{len(still_running)} batches stay submitted at the provider and are paid for" in error
        assert "--cancel-batches" in error
        assert "Traceback" not in error
        cancel = run_pipeline(data_dir, "--cancel-batches", config=settings)
        assert cancel.returncode == 0, cancel.stderr[-2000:]
        # The small model's batch (24 lines, 4 at a time, 1 s each) is still running; the big one's 6 lines may be done.
        assert "(generate, small, 24 requests): cancelling" in cancel.stdout
        assert cancel.stdout.count("\n") == len(still_running)  # a line per batch the interrupt left running
        deadline = time.monotonic() + 10
        while "cancelling" in server.stats()["batch_api"]["by_status"]:  # it ends once its lines in flight return
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server.stats()["batch_api"]["by_status"]["cancelled"] >= 1
        result = run_pipeline(data_dir, config=config(tmp_path / "config.yaml", server))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_as_online(data_dir, online_run)
    cancelled = [b for b in Ledger(ledger_path).batches.values() if b.status == "cancelled"]
    assert all(b.collected for b in cancelled)  # what each finished is written, the rest was sent again
    assert any(b.model == "small" and b.records < b.requests for b in cancelled)


def test_batch_mode_is_refused_where_no_batch_api_is_sent_to():
    with pytest.raises(ValueError, match="batch: true is for the openai provider"):
        ModelConfig(provider="local", model="smollm2-135m-instruct", batch=True)
    with pytest.raises(ValueError, match="batch inference jobs of its own"):
        ModelConfig(provider="fireworks", model="accounts/fireworks/models/x", api_key_env="FIREWORKS_API_KEY", batch=True)


# ---------------------------------------------------------------- the pure parts, without a server


def test_the_ledger_ignores_a_torn_last_line_and_folds_events_into_each_batchs_state(tmp_path):
    ledger = Ledger(tmp_path / "batches.jsonl")
    ledger.record({"event": "prepared", "id": "a", "checkpoint": "judge", "model": "small", "items": ["q|p0"],
                   "attempts": {}, "requests": 1})
    ledger.record({"event": "uploaded", "id": "a", "file_id": "file-1"})
    ledger.record({"event": "submitted", "id": "a", "batch_id": "batch_1"})
    with open(ledger.path, "a") as file:
        file.write('{"event": "collected", "id": "a", "rec')  # killed while writing
    again = Ledger(ledger.path)
    batch = again.batches["a"]
    assert (batch.file_id, batch.batch_id, batch.status, batch.collected) == ("file-1", "batch_1", "submitted", False)
    assert again.live("judge") == [batch] and again.live("generate") == []


@pytest.mark.parametrize("longest, waits", [(5.0, [1, 2, 4, 5, 5]), (0.2, [0.2] * 5)])
def test_polls_wait_1_s_then_twice_as_long_each_time_never_longer_than_batch_poll_seconds(tmp_path, monkeypatch, longest, waits):
    ledger = Ledger(tmp_path / "batches.jsonl")
    ledger.record({"event": "prepared", "id": "a", "checkpoint": "judge", "model": "small", "items": ["q|p0"],
                   "attempts": {}, "requests": 1})
    ledger.record({"event": "submitted", "id": "a", "batch_id": "batch_1"})
    states = iter(["validating"] + ["in_progress"] * 4 + ["completed"])

    class Provider:
        def status(self, batch_id):
            return BatchStatus(batch_id, next(states), 1, 0, 0, None, None, None)

    waited = []
    monkeypatch.setattr(batches, "time", SimpleNamespace(sleep=waited.append, time=time.time))
    monkeypatch.setattr(batches, "_api", lambda config, model: Provider())
    settings = SimpleNamespace(models={"small": SimpleNamespace(batch_poll_seconds=longest)})
    [(batch, status)] = batches._wait_for_an_end(ledger, ledger.live(), settings, set())
    assert (batch.id, status.status, waited) == ("a", "completed", waits)


def test_custom_ids_give_back_the_item_and_the_call_and_stay_short():
    assert batches._item_of(batches._custom_id(49_999, 50)) == (49_999, 50)
    assert len(batches._custom_id(49_999, 50)) <= 64  # Together's limit; a key with a 64-character policy name is longer


def test_an_items_calls_stay_in_one_input_file_split_at_the_request_limit():
    provider = hosted_provider()
    model = ModelConfig(provider="openai", model="m", api_key_env="K", batch=True, batch_max_requests=7)
    items = [(f"q{i}|p0", ItemCalls("small", (REQUEST,) * 3, lambda results: {})) for i in range(5)]
    chunks = batches._chunks(items, model, provider)
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]  # 6 requests a file: a third item's 3 would make 9


def test_a_line_the_provider_failed_is_the_items_failure_with_its_reason():
    provider, calls = hosted_provider(), ItemCalls("small", (REQUEST, REQUEST), lambda results: {"text": results[1].text})
    done = BatchStatus("batch_1", "completed", 2, 2, 0, "file-o", None, None)

    def line(index, status, body):
        return {"custom_id": batches._custom_id(0, index), "response": {"status_code": status, "body": body}}

    ok = {"choices": [{"message": {"content": "7"}, "finish_reason": "stop"}], "usage": {"completion_tokens": 1}}
    refused = {"error": {"message": "max_tokens is too large"}}
    assert batches._outcome(calls, {0: line(0, 200, ok), 1: line(1, 200, ok)}, provider, done) == {"text": "7"}
    error = batches._outcome(calls, {0: line(0, 200, ok), 1: line(1, 400, refused)}, provider, done)
    assert (str(error), error.retryable) == ("batch line HTTP 400: max_tokens is too large", False)
    assert batches._outcome(calls, {0: line(0, 503, {})}, provider, done).retryable
    expired = BatchStatus("batch_1", "expired", 2, 1, 0, "file-o", None, None)
    assert batches._outcome(calls, {0: line(0, 200, ok)}, provider, expired) is None  # left to do, not failed
    failed = BatchStatus("batch_1", "failed", 0, 0, 0, None, None, "line 1: This line is not valid JSON.")
    error = batches._outcome(calls, {}, provider, failed)
    assert "line 1: This line is not valid JSON." in str(error) and error.retryable


REQUEST = GenerationRequest(({"role": "user", "content": "Rate this."},), 0, 4, seed=0, top_logprobs=0)


def hosted_provider():
    import openai
    return HostedProvider(openai, None, "m", RateLimiter(1, None, None), 0, None, None, frozenset(), "loopback", 60.0)


def test_force_abandons_the_live_batches_of_what_it_recomputes_and_cancel_batches_still_reaches_them(tmp_path):
    workspace = Workspace(tmp_path)
    ledger = Ledger(workspace.batches_path)
    for batch_id, checkpoint, policy in (("a", "judge", "p0"), ("b", "judge", "pi_cot"), ("c", "generate", "p0")):
        ledger.record({"event": "prepared", "id": batch_id, "checkpoint": checkpoint, "model": "small",
                       "items": [f"q1|{policy}", f"q2|{policy}"], "attempts": {}, "requests": 2})
        ledger.record({"event": "submitted", "id": batch_id, "batch_id": f"batch_{batch_id}"})
    lines = batches.abandon(workspace, {("judge", "p0"), ("judge", "pi_clone")})
    assert lines == ["batch batch_a (judge, small) was sent under the configuration --force replaces: its results will "
                     "not be used (it runs on at the provider: --cancel-batches cancels it)"]
    again = Ledger(workspace.batches_path)
    assert [b.id for b in again.live()] == ["b", "c"]  # never collected into the recomputed checkpoint
    assert [b.id for b in again.running()] == ["a", "b", "c"]  # what the provider may still bill
    assert [line.split()[1] for line in batches.forgotten_by_fresh(workspace)] == ["batch_a", "batch_b", "batch_c"]

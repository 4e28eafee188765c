import json
import threading
import time
from collections import Counter

import pytest

from arena10k.checkpoint import Checkpoint, drop_policies, read_records
from arena10k.errors import CheckpointMismatchError, ItemError
from arena10k.runner import run_items

FINGERPRINT = {"p0": {"policies": {"p0": {"temperature": 0.7}}}}


def open_checkpoint(tmp_path, fingerprint=FINGERPRINT):
    return Checkpoint(tmp_path / "stage.jsonl", "stage", fingerprint)


def test_torn_last_line_is_dropped_and_redone(tmp_path):
    with open_checkpoint(tmp_path) as checkpoint:
        checkpoint.append("a", record={"value": 1})
        checkpoint.append("b", record={"value": 2})
    path = tmp_path / "stage.jsonl"
    with open(path, "a") as f:
        f.write('{"schema": 1, "key": "c", "status": "ok", "rec')  # a crash in the middle of a write
    assert set(read_records(path)) == {"a", "b"}
    with open_checkpoint(tmp_path) as checkpoint:
        assert checkpoint.done_keys() == {"a", "b"}
        checkpoint.append("c", record={"value": 3})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["a", "b", "c"]


def test_changed_policy_fingerprint_is_refused_and_a_new_policy_is_added(tmp_path):
    open_checkpoint(tmp_path).close()
    with pytest.raises(CheckpointMismatchError, match="for p0 with a different configuration; recompute with --force p0"):
        open_checkpoint(tmp_path, {"p0": {"policies": {"p0": {"temperature": 0.9}}}})
    added = {**FINGERPRINT, "pi_new": {"policies": {"pi_new": {"temperature": 1.0}}}}
    open_checkpoint(tmp_path, added).close()
    assert json.loads((tmp_path / "stage.meta.json").read_text())["fingerprints"] == added


def test_dropping_a_policy_removes_its_lines_and_fingerprint_only(tmp_path):
    two = {**FINGERPRINT, "pi_bad": {"policies": {"pi_bad": {"temperature": 1.0}}}}
    with open_checkpoint(tmp_path, two) as checkpoint:
        for key in ("a|p0", "a|pi_bad", "b|p0", "b|pi_bad"):
            checkpoint.append(key, record={"key": key})
        checkpoint.append("c|pi_bad", error="no digit", retryable=True)
    assert drop_policies(tmp_path / "stage.jsonl", {"pi_bad"}) == 3
    assert set(read_records(tmp_path / "stage.jsonl")) == {"a|p0", "b|p0"}
    assert json.loads((tmp_path / "stage.meta.json").read_text())["fingerprints"] == FINGERPRINT


def test_failures_are_recorded_retried_and_bounded(tmp_path):
    calls = []

    def flaky():
        calls.append(1)
        raise ItemError("no score digit", retryable=True, raw="I think it is good")

    def permanent():
        calls.append(2)
        raise ItemError("prompt too long", retryable=False)

    work = {"flaky": flaky, "permanent": permanent, "fine": lambda: {"v": 1}}
    with open_checkpoint(tmp_path) as checkpoint:
        report = run_items("stage", checkpoint, list(work), work.get, max_attempts=3)
    assert sorted(calls) == [1, 1, 1, 2]
    assert report.attempted == 3 and report.done == 1 and report.failed == {"no score digit": 1, "prompt too long": 1}
    assert checkpoint.items["flaky"].raw == "I think it is good"
    with open_checkpoint(tmp_path) as checkpoint:  # the next run does not retry exhausted items
        run_items("stage", checkpoint, ["flaky", "permanent"], work.get, max_attempts=3)
    assert sorted(calls) == [1, 1, 1, 2]
    with open_checkpoint(tmp_path) as checkpoint:  # a larger budget retries the retryable one only
        run_items("stage", checkpoint, ["flaky", "permanent"], work.get, max_attempts=4)
    assert sorted(calls) == [1, 1, 1, 1, 2]


def test_each_model_keeps_its_own_calls_in_flight_and_its_items_in_order(tmp_path):
    """Items of one model queued first do not hold back another model's calls (a lane each, as generate's policies
    on SmolLM2 and Gemma), and each lane starts its items in the order of the keys."""
    lock, running, peak, started = threading.Lock(), Counter(), Counter(), []

    def call(key):
        def work():
            lane = key[0]
            with lock:
                started.append(key)
                running[lane] += 1
                peak[lane] = max(peak[lane], running[lane])
                peak["both"] = max(peak["both"], running["a"] + running["b"])
            time.sleep(0.05)
            with lock:
                running[lane] -= 1
            return {"key": key}
        return work

    keys = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    with open_checkpoint(tmp_path) as checkpoint:
        report = run_items("stage", checkpoint, keys, call, max_attempts=1, lanes={"a": 2, "b": 3},
                           lane_of=lambda key: key[0])
    assert report.done == 12
    assert (peak["a"], peak["b"], peak["both"]) == (2, 3, 5)
    assert [k for k in started if k[0] == "a"] == keys[:6] and [k for k in started if k[0] == "b"] == keys[6:]


def test_a_judge_token_is_a_score_only_if_it_is_one_ascii_digit():
    from arena10k.judging import digit

    assert [digit(t) for t in ("7", " 0", "9 ", "²", "٣", "७", "10", "", " ", "a")] == [7, 0, 9, None, None, None, None, None, None, None]


def test_sampled_judge_replies_are_scored_by_their_first_standalone_digit():
    from arena10k.judging import first_digit, score_samples

    assert [first_digit(t) for t in ("7", "Score: 8.", " 3/9", "10", "7.5 then 4", "none")] == [7, 8, 3, None, 4, None]
    scores = score_samples("Score: 9", ["9", "6", "no idea"], 1.0)
    assert scores["score"] == 1.0 and scores["score_mean"] == (1.0 + 6 / 9) / 2 and scores["probability_mass"] == 2 / 3
    assert scores["score_variance"] == pytest.approx(((1 - 15 / 18) ** 2 + (6 / 9 - 15 / 18) ** 2) / 2)
    with pytest.raises(ItemError, match="none of the judge's 2 sampled replies"):
        score_samples("5", ["x", "y"], 1.0)

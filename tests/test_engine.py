"""The embedded models' scheduling without a model: the cache plan (slots.py) and the engine's loop (engine.py), on a
fake model whose "logits" are the step number."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from arena10k.providers.engine import Claim, Decode, Engine
from arena10k.providers.slots import COPY_MIN_TOKENS, N_BATCH, chunks, plan_claim, plan_step, reusable

PROMPT = list(range(100, 200))


def test_a_prompt_takes_the_free_sequence_holding_most_of_it_and_evaluates_its_last_token():
    cached = [PROMPT[:10], PROMPT[:40], []]
    claim = plan_claim(cached, [False, False, False], PROMPT, reuse=True, chunk_invariant=True)
    assert (claim.target, claim.held, claim.copy_from) == (1, 40, None)
    whole = plan_claim([PROMPT, []], [False, False], PROMPT, reuse=True, chunk_invariant=True)
    assert whole.held == len(PROMPT) - 1  # one token is evaluated, for the logits after the prompt


def test_a_busy_sequences_cache_is_copied_only_when_it_saves_enough_tokens():
    far_ahead = plan_claim([PROMPT[:50], PROMPT[:10]], [True, False], PROMPT, reuse=True, chunk_invariant=True)
    assert (far_ahead.target, far_ahead.held, far_ahead.copy_from) == (1, 50, 0)
    near = [PROMPT[:10 + COPY_MIN_TOKENS - 1], PROMPT[:10]]
    assert plan_claim(near, [True, False], PROMPT, reuse=True, chunk_invariant=True).copy_from is None


def test_without_reuse_or_chunk_invariance_less_is_reused():
    assert plan_claim([PROMPT], [False], PROMPT, reuse=False, chunk_invariant=True).held == 0
    assert plan_claim([PROMPT], [False], PROMPT, reuse=True, chunk_invariant=False).held == N_BATCH  # whole chunks
    assert reusable(PROMPT, chunk_invariant=False) == PROMPT[:N_BATCH] and reusable(PROMPT, chunk_invariant=True) == PROMPT
    with pytest.raises(ValueError):
        plan_claim([PROMPT], [True], PROMPT, reuse=True, chunk_invariant=True)


def test_a_step_keeps_sequence_ids_consecutive_with_placeholders_where_there_is_room():
    step = plan_step({0: (7, 30), 3: (8, 12)}, {1: 20, 2: 50}, n_ctx=50, placeholder=2)
    assert step.tokens == [(7, 30, 0, True), (2, 20, 1, False), (8, 12, 3, True)]  # sequence 2's cache is full
    assert step.placeholders == [(1, 20)]
    assert [list(c) for c in chunks(130)] == [list(range(0, 63)), list(range(63, 126)), list(range(126, 130))]


class FakeModel:
    """Sequences whose next token is given the number of the step as its "logits"; counts steps and their sizes."""

    def __init__(self, sequences: int):
        self.busy = [False] * sequences
        self.decoding: dict[int, Decode] = {}
        self.steps: list[int] = []  # sequences decoded per step
        self.thread_names: set[str] = set()

    def has_free_sequence(self):
        return not all(self.busy)

    def claim(self, command):
        target = self.busy.index(False)
        self.busy[target] = True
        return Sequence(target), 0

    def start_decoding(self, command):
        self.decoding[command.sequence.seq_id] = command

    def step(self):
        time.sleep(0.01)  # as long as a real step, so that calls arrive while others decode
        self.thread_names.add(threading.current_thread().name)
        self.steps.append(len(self.decoding))
        finished = []
        for seq_id, command in list(self.decoding.items()):
            try:
                more = command.next_token(np.array([len(self.steps)]))
            except Exception as error:
                finished.append((seq_id, error))
                del self.decoding[seq_id]
                continue
            if more is None:
                finished.append((seq_id, None))
                del self.decoding[seq_id]
        return finished


class Sequence:
    def __init__(self, seq_id):
        self.seq_id = seq_id


def counting_job(model: FakeModel, length: int, fail_at: int | None = None):
    seen = []

    def next_token(logits):
        if len(seen) == fail_at:
            raise RuntimeError(f"failed after {fail_at} tokens")
        seen.append(int(logits[0]))
        return 0 if len(seen) < length else None

    sequence, _ = yield Claim([1, 2, 3], reuse=True)
    try:
        yield Decode(sequence, 0, 3, next_token)
    finally:
        model.busy[sequence.seq_id] = False
    return seen


def test_jobs_from_many_threads_share_steps_on_one_thread_and_wait_for_a_free_sequence():
    engine, model = Engine(), FakeModel(sequences=3)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda length: engine.run(model, counting_job(model, length)), [5, 5, 5, 5, 5, 5]))
    assert all(len(seen) == 5 and seen == sorted(seen) for seen in results)
    assert max(model.steps) == 3 and sum(model.steps) == 30  # never more sequences than it has, every token decoded once
    assert len(model.steps) < 30  # steps were shared
    assert model.thread_names == {"llama.cpp"}


def test_an_error_in_one_sequences_step_reaches_its_caller_only():
    engine, model = Engine(), FakeModel(sequences=2)
    with ThreadPoolExecutor(2) as pool:
        failing = pool.submit(engine.run, model, counting_job(model, 6, fail_at=2))
        fine = pool.submit(engine.run, model, counting_job(model, 6))
        with pytest.raises(RuntimeError, match="failed after 2 tokens"):
            failing.result()
        assert len(fine.result()) == 6
    assert model.busy == [False, False]  # the failed job released its sequence
    assert len(engine.run(model, counting_job(model, 1))) == 1  # and the engine goes on

"""An in-process fake provider behind the provider interface: whole pipelines in a fraction of a second.

Each fake model is a small word-level language model whose next-token distribution is a pure function of
(model, context, previous tokens); generation samples from it at the request's temperature and teacher
forcing sums the same log-probs, so a policy's teacher-forced log-prob equals its sampled one exactly and a
clone's log-ratio is exactly 0, as with the embedded model. A judge request (one asking for top log-probs)
gets a digit reply with a digit distribution. Every call is recorded, so tests can count them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from arena10k.config import ModelConfig
from arena10k.providers.base import (GENERATE, TEACHER_FORCE, TOP_LOGPROBS, Generation, GenerationRequest,
                                     ForcedLogprob, TeacherForceRequest)
from arena10k.sampling import Distribution

WORDS = ("the", "answer", "is", "simple", "because", "data", "shows", "it", "so", "we", "can", "see", "why", "here")
END = len(WORDS)  # the end-of-turn token


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Call:
    kind: str  # "generate" or "teacher_force"
    model: str
    messages: tuple[dict, ...]
    temperature: float

    @property
    def system_prompt(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)


@dataclass
class FakeModels:
    """The factory for `providers.substituted`, and the record of every call made through it."""

    latency: float = 0.0  # seconds each call takes, for tests that need a run to last
    calls: list[Call] = field(default_factory=list)

    def __call__(self, model: ModelConfig) -> FakeProvider:
        return FakeProvider(model.model, self._record)

    def _record(self, call: Call) -> None:
        time.sleep(self.latency)
        self.calls.append(call)

    def count(self, kind: str, where: Callable[[Call], bool] = lambda call: True) -> int:
        return sum(call.kind == kind and where(call) for call in self.calls)


class FakeProvider:
    capabilities = frozenset({GENERATE, TEACHER_FORCE, TOP_LOGPROBS})

    def __init__(self, model: str, record: Callable[[Call], None]):
        self.model = model
        self.tokenizer = "fake-words"  # every fake model shares the vocabulary, so token ids carry over
        self._record = record

    def _distribution(self, messages: tuple[dict, ...], previous: list[int], temperature: float) -> Distribution:
        logits = np.random.default_rng(_seed(self.model, messages, previous)).normal(0, 2, END + 1)
        return Distribution(logits, temperature)

    def generate(self, request: GenerationRequest) -> Generation:
        self._record(Call("generate", self.model, request.messages, request.temperature))
        if request.top_logprobs:
            return self._judge(request)
        rng = np.random.default_rng(request.seed)
        tokens: list[int] = []
        logprobs: list[float] = []
        while len(tokens) < request.max_tokens:
            distribution = self._distribution(request.messages, tokens, request.temperature)
            token = distribution.sample(rng)
            if token == END:
                return self._generation(tokens, logprobs, distribution.logprob(END))
            tokens.append(token)
            logprobs.append(distribution.logprob(token))
        return self._generation(tokens, logprobs, None)

    def _generation(self, tokens: list[int], logprobs: list[float], stop_logprob: float | None) -> Generation:
        return Generation(
            text=" ".join(WORDS[t] for t in tokens), finish_reason="length" if stop_logprob is None else "stop",
            tokenizer=self.tokenizer, token_ids=tokens, token_texts=[WORDS[t] for t in tokens], token_logprobs=logprobs,
            stop_token_id=None if stop_logprob is None else END, stop_logprob=stop_logprob,
        )

    def _judge(self, request: GenerationRequest) -> Generation:
        weights = np.random.default_rng(_seed(self.model, request.messages)).dirichlet(np.ones(10))
        digit = int(weights.argmax())
        top = {str(d): float(np.log(w)) for d, w in enumerate(weights)}
        return Generation(text=str(digit), finish_reason="stop", tokenizer=self.tokenizer, token_ids=[digit],
                          token_texts=[str(digit)], token_logprobs=[top[str(digit)]], stop_token_id=END,
                          stop_logprob=0.0, top_logprobs=[top])

    def teacher_force(self, request: TeacherForceRequest) -> ForcedLogprob:
        self._record(Call("teacher_force", self.model, request.messages, request.temperature))
        tokens = list(request.response_token_ids) if request.response_tokenizer == self.tokenizer else [
            WORDS.index(word) for word in request.response_text.split()]
        targets = tokens + ([END] if request.ended_turn else [])
        total = sum(self._distribution(request.messages, targets[:i], request.temperature).logprob(t) for i, t in enumerate(targets))
        return ForcedLogprob(total, len(targets), "sampled_token_ids" + ("+end_of_turn" if request.ended_turn else ""))

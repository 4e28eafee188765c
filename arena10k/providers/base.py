"""The narrow interface every provider implements, and the requests and results that cross it.

A provider turns a chat (system + user messages) into a sampled response, and scores a given response
by teacher forcing. Everything else (stages, checkpoints, judging) is built on these two calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from arena10k.providers.certified import Interval

GENERATE = "generate"
TEACHER_FORCE = "teacher_force"
TOP_LOGPROBS = "top_logprobs"


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[dict, ...]
    temperature: float  # 0 means greedy; log-probs are then reported at temperature 1
    max_tokens: int
    seed: int
    top_logprobs: int = 0  # alternatives to report per generated token
    logprobs: bool = True  # False: ask for none (endpoints of reasoning models reject the parameter)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "stop" or "length"
    tokenizer: str
    token_ids: list[int]
    token_texts: list[str]
    token_logprobs: list[float] | None
    stop_token_id: int | None
    stop_logprob: float | None
    top_logprobs: list[dict[str, float]] = field(default_factory=list)  # per token: text -> log-prob
    reported_tokens: int | None = None  # the provider's count of generated tokens (usage), for APIs without ids

    @property
    def n_tokens(self) -> int | None:
        """Response tokens, without the end-of-turn token; None when the provider says nothing of them."""
        return len(self.token_ids) or len(self.token_texts) or self.reported_tokens


@dataclass(frozen=True)
class TeacherForceRequest:
    messages: tuple[dict, ...]
    temperature: float  # the scoring policy's sampling temperature
    response_text: str
    response_tokenizer: str  # lets a provider with the same tokenizer score the exact sampled ids
    response_token_ids: tuple[int, ...]
    stop_token_id: int | None  # the sampled end-of-turn token, when the provider reports ids
    ended_turn: bool  # the response ended its turn (finish_reason "stop"): the end of turn is scored too
    # An endpoint that reports temperature-1 log-probs only (the preflight found it): score at temperature 1 with this
    # many alternatives per token and certify the log-prob at `temperature` (providers/certified.py). None: exact.
    certify_from_top_k: int | None = None


@dataclass(frozen=True)
class ForcedLogprob:
    logprob: float  # exact, or the midpoint of `interval`
    n_tokens: int
    method: str
    interval: Interval | None = None  # certified bounds of the log-prob, where it was not computed exactly
    top_k: int | None = None  # alternatives per token the interval was computed from
    temperature_one_logprob: float | None = None  # the echoed temperature-1 log-prob the interval was computed from

    def difference_from(self, sampled: float) -> float:
        """This log-prob minus the sampled one. For a certified interval, the distance from the interval (0 inside it),
        or from the echoed temperature-1 log-prob where that is nearer: an endpoint that reports temperature-1 echo
        log-probs may report its sampled ones at temperature 1 too (llama-cpp-python's and vLLM's do by default)."""
        if self.interval is None:
            return self.logprob - sampled
        inside = min(max(sampled, self.interval.low), self.interval.high)
        return min(inside - sampled, self.temperature_one_logprob - sampled, key=abs)


@dataclass(frozen=True)
class ItemCalls:
    """A work item's generation requests to one model (a key of the config's models), and the item's record made from
    their results in order: sent online one after another, or in a provider's batch (arena10k/batches.py)."""

    model: str
    requests: tuple[GenerationRequest, ...]
    record: Callable[[list[Generation]], dict]  # raises ItemError when the results make no record (a reply without a score)


class Provider(Protocol):
    capabilities: frozenset[str]

    def generate(self, request: GenerationRequest) -> Generation: ...

    def teacher_force(self, request: TeacherForceRequest) -> ForcedLogprob: ...

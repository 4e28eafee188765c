"""Typed records that the stages write. Checkpoint lines carry SCHEMA_VERSION; a change to any
record's fields bumps it, and an old checkpoint is then refused rather than misread. A field added with a default
that means what records without it meant (an exact log-prob has no interval) reads old lines right and bumps nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

SCHEMA_VERSION = 1

T = TypeVar("T")


def to_dict(record: Any) -> dict:
    return asdict(record)


def from_dict(cls: type[T], data: dict) -> T:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Prompt:
    prompt_id: str  # derived from the text, so it is stable across dataset versions and sample sizes
    prompt: str
    source_id: str | None  # the dataset's question_id


@dataclass(frozen=True)
class Response:
    prompt_id: str
    policy: str
    text: str
    finish_reason: str  # "stop" (the model ended its turn) or "length" (cut by max_tokens)
    n_tokens: int | None  # response tokens, without the end-of-turn token; None when the provider reports none
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    tokenizer: str  # identifies the tokenizer of token_ids, so teacher forcing knows when it may reuse them
    stop_token_id: int | None  # the end-of-turn token sampled when finish_reason == "stop"
    token_ids: list[int]
    token_logprobs: list[float] | None  # sampled tokens' log-probs, when the provider gives them
    stop_logprob: float | None  # log-prob of the end-of-turn token when finish_reason == "stop"


@dataclass(frozen=True)
class TeacherForced:
    prompt_id: str
    policy: str  # the policy whose log-prob of the P0 response this is
    logprob: float | None  # log pi(response | prompt), <= 0, at the policy's sampling temperature; None: probability 0
    n_tokens: int  # scored tokens, including the end-of-turn token when the response stopped
    method: str  # how the number was produced: api_echo_* (providers/hosted.py) or the embedded models' (providers/local.py)
    # The logging policy only, where its response's sampled log-probs are known: logprob minus their sum (0 when
    # scoring reproduces sampling), and the difference allowed (0 on the embedded models, rounding on an API).
    sampled_difference: float | None = None
    sampled_tolerance: float | None = None
    not_compared: str | None = None  # the logging policy only: why its sampled log-probs could not be compared
    # Certified rather than exact (an endpoint that reports temperature-1 log-probs only; providers/certified.py): the
    # bounds of the log-prob at the policy's temperature, of which `logprob` is the midpoint, and the alternatives per
    # token they were computed from. None for an exact log-prob.
    logprob_low: float | None = None
    logprob_high: float | None = None
    top_k: int | None = None
    temperature_one_logprob: float | None = None  # the echoed temperature-1 log-prob the bounds were computed from
    # Why the policy cannot give this response at all (its max_tokens), where it cannot: its probability is exactly 0,
    # and `logprob` is None (log 0 has no finite value).
    zero_probability: str | None = None


@dataclass(frozen=True)
class Judgement:
    prompt_id: str
    policy: str
    model: str
    raw_text: str  # the judge's reply, kept so any score can be audited
    score: float  # greedy (deterministic) score in [0, 1]
    score_mean: float  # mean of the score-token distribution, in [0, 1]
    score_variance: float  # variance of that distribution
    probability_mass: float  # share of probability on valid score tokens (sampled: share of replies with a score)
    method: str
    sampled_replies: list[str] | None = None  # method sampled: the replies the mean and variance come from

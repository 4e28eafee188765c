"""Faults the server injects, the way hosted providers fail: latency, rate limits, 5xx errors, timeouts,
dropped connections and malformed bodies. Only the completion endpoints are affected."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from arena10k.server.backends import ModelInput

WINDOW_SECONDS = 60.0


def _option(default: float | int | None, help: str) -> Any:
    """A field that is also a command-line option of the server (see run.py)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FaultConfig:
    """Rates are fractions of the requests admitted by the rate limits; their sum is at most 1."""

    latency_ms: float = _option(0.0, "mean latency added to each admitted request (ms)")
    latency_jitter_ms: float = _option(0.0, "latency is uniform in latency-ms ± this (ms)")
    rpm: int | None = _option(None, "requests per minute, server-wide, sliding 60 s window; beyond it 429 + Retry-After")
    tpm: int | None = _option(None, "tokens per minute, likewise (prompt characters / 4, or token ids, + max_tokens)")
    throttle_rate: float = _option(0.0, "share answered 429 as if over a limit, with Retry-After")
    throttle_retry_after_ms: float = _option(1000.0, "the wait a throttled request is told (ms)")
    quota_exhausted: bool = _option(
        False, "every request is answered 429 insufficient_quota, with no Retry-After, as OpenAI answers an account out "
        "of credit")
    error_rate: float = _option(0.0, "share answered 500 or 503 (equally often)")
    timeout_rate: float = _option(0.0, "share held for timeout-seconds (longer than a client waits), then closed unanswered")
    timeout_seconds: float = _option(120.0, "how long a timed-out request is held (s)")
    drop_rate: float = _option(0.0, "share whose connection is closed at once without a response")
    malformed_rate: float = _option(0.0, "share answered 200 with a body that is not valid JSON")
    fault_seed: int = _option(0, "seed of the latency and fault draws, made in order of arrival")
    echo_at_temperature_one: bool = _option(
        False, "echo log-probs at temperature 1 whatever the request's temperature, as vLLM and SGLang report them by default")
    echo_continuation_tokens: int = _option(
        0, "an echo request generates at least this many tokens after the prompt, whatever its max_tokens, as "
        "llama-cpp-python's server does when it reads max_tokens=0 as no limit")
    echo_refused: bool = _option(
        False, "completions with echo and log-probs are refused (400), as OpenAI's completions models refuse them")
    chat_without_logprobs: bool = _option(False, "chat completions return no token log-probs even when asked for")
    echo_shifted: bool = _option(
        False, "each echoed token carries the next position's log-prob, as llama-cpp-python's server does for a text "
        "that does not start with its BOS token")
    colliding_alternatives: bool = _option(
        False, "alternatives are keyed by token text with letters folded to lower case, so tokens that print alike "
        "collide (the less probable overwrites the other) and each token's own entry is written last, as llama-cpp-python's "
        "server keys them by the text a token prints")
    top_logprobs_cap: int | None = _option(None, "more alternatives per token than this are refused (400), as some providers cap them at 5")
    logprob_noise: float = _option(
        0.0, "standard deviation (nats) of seeded noise added to every log-prob returned, as batched GPU servers vary")

    batch_step_seconds: float = _option(0.2, "Batch API: seconds a batch spends validating, and finalizing")
    batch_line_ms: float = _option(0.0, "Batch API: time each line of a batch takes (ms; four lines at a time)")
    batch_slow_first: int = _option(0, "Batch API: batch_line_ms holds the lines of the first this many batches only (0: of every batch)")
    batch_expire_first: int = _option(0, "Batch API: the first this many batches expire with half their lines done")
    batch_line_error_rate: float = _option(0.0, "Batch API: share of requests answered 500 in the error file the first time they are sent (seeded by the request)")
    batch_fail: bool = _option(False, "Batch API: every batch fails validation")

    def __post_init__(self) -> None:
        if not 0 <= self.batch_line_error_rate <= 1:
            raise ValueError(f"batch_line_error_rate must be in [0, 1], got {self.batch_line_error_rate}")
        rates = (self.throttle_rate, self.error_rate, self.timeout_rate, self.drop_rate, self.malformed_rate)
        if any(not 0 <= rate <= 1 for rate in rates) or sum(rates) > 1:
            raise ValueError(f"fault rates must be in [0, 1] and sum to at most 1, got {rates}")
        if self.latency_jitter_ms > self.latency_ms or self.latency_ms < 0:
            raise ValueError("latency_jitter_ms must be between 0 and latency_ms")


def estimate_tokens(prompt: ModelInput, max_tokens: int) -> int:
    """What a request counts against the TPM limit, known before it is served: as OpenAI estimates it,
    a token per 4 characters of text (token ids count as they are), plus max_tokens."""
    if isinstance(prompt, list):
        return len(prompt) + max_tokens
    characters = len(prompt) if isinstance(prompt, str) else sum(len(message["content"]) for message in prompt)
    return -(-characters // 4) + max_tokens


class Quota:
    """Requests and tokens admitted in the last WINDOW_SECONDS; a request that would exceed a limit is refused."""

    def __init__(self, rpm: int | None, tpm: int | None):
        self._rpm, self._tpm = rpm, tpm
        self._admitted: deque[tuple[float, int]] = deque()  # (time, tokens), oldest first
        self._tokens = 0

    def admit(self, tokens: int) -> tuple[str, float] | None:
        """None when admitted; otherwise the limit hit ("requests" or "tokens") and the seconds until the
        window has room (the full window for a request larger than the token limit itself)."""
        now = time.monotonic()
        while self._admitted and self._admitted[0][0] <= now - WINDOW_SECONDS:
            self._tokens -= self._admitted.popleft()[1]
        if self._rpm is not None and len(self._admitted) >= self._rpm:
            return "requests", self._admitted[len(self._admitted) - self._rpm][0] + WINDOW_SECONDS - now
        if self._tpm is not None and self._tokens + tokens > self._tpm:
            return "tokens", self._wait_for_tokens(self._tokens + tokens - self._tpm, now)
        self._admitted.append((now, tokens))
        self._tokens += tokens
        return None

    def _wait_for_tokens(self, excess: int, now: float) -> float:
        freed = 0
        for admitted_at, tokens in self._admitted:
            freed += tokens
            if freed >= excess:
                return admitted_at + WINDOW_SECONDS - now
        return WINDOW_SECONDS


class FaultPlan:
    """Seeded draws: the same sequence of requests meets the same latencies and faults."""

    def __init__(self, config: FaultConfig):
        self._config = config
        self._rng = random.Random(config.fault_seed)
        self._faults = (("throttled", config.throttle_rate), ("error_500", config.error_rate / 2), ("error_503", config.error_rate / 2),
                        ("timeout", config.timeout_rate), ("dropped", config.drop_rate),
                        ("malformed", config.malformed_rate))

    def draw(self) -> tuple[float, str | None]:
        """The next admitted request's latency in seconds, and its fault (None: serve it)."""
        spread = self._config.latency_jitter_ms
        latency = self._rng.uniform(self._config.latency_ms - spread, self._config.latency_ms + spread) / 1000
        draw = self._rng.random()
        for fault, rate in self._faults:
            if draw < rate:
                return latency, fault
            draw -= rate
        return latency, None

"""Providers reached over an OpenAI-style HTTP API (the openai and fireworks-ai SDKs share this shape).

What is retryable is decided here, once: a 429 is retried once the server's Retry-After has passed (the rate
limiter holds every call to the endpoint until then), or with backoff where it sends none; 5xx, timeouts, dropped
connections and malformed bodies are retried with exponential backoff and jitter; 400/404/422 fail the item at once with
the provider's reason; 401/403, and a 429 for an account out of credit (insufficient_quota), stop the
stage (AccountRefusedError). Failures of the second kind that go on
with no call to the endpoint succeeding for `outage_seconds`, or that outlast an item's retries with none
succeeding, are an outage: the stage stops (EndpointDownError). An item whose retries ran out on the endpoint alone
(unreachable, gateway errors, rate limits) is not charged with it either (ItemError.unreachable).

Teacher forcing uses the completions endpoint with echo and log-probs on the policy's rendered chat
template. The prompt/response boundary is found in the returned tokens' text offsets and verified: a
token must start exactly where the response starts, and there must be one log-prob per token. Where a
token straddles the boundary (".Here"), it falls back to log P(prompt + response) - log P(prompt), two calls.
Log-probs are whatever the server reports for the request's temperature: our loopback server and the
embedded model report the sampling distribution; hosted APIs typically report temperature-1 log-probs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import jinja2

from arena10k.errors import AccountRefusedError, EndpointDownError, ItemError
from arena10k.providers.batch_api import BatchAPI
from arena10k.providers.certified import Interval, response_interval
from arena10k.providers.base import (
    Generation,
    GenerationRequest,
    ForcedLogprob,
    TeacherForceRequest,
)
from arena10k.ratelimit import RateLimiter

log = logging.getLogger("arena10k.providers")

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
GATEWAY_ERRORS = (502, 503, 504)  # a proxy or load balancer with no server behind it: the endpoint, not the request
PROBE_OTHER_TEXT = "A different text, scored between two requests so that no server answers the second from its cache."


class HostedProvider:
    def __init__(self, sdk: ModuleType, client: Any, model: str, limiter: RateLimiter, max_retries: int,
                 chat_template: str | None, end_of_turn: str | None, capabilities: frozenset[str],
                 endpoint: str, outage_seconds: float):
        self._sdk, self._client, self.model = sdk, client, model
        self._limiter, self._max_retries = limiter, max_retries
        self._endpoint, self._outage_seconds = endpoint, outage_seconds
        self._template = None if chat_template is None else jinja2.Environment().from_string(chat_template)
        self._end_of_turn = end_of_turn or ""
        self._markup = (chat_template or "") + self._end_of_turn  # text of the template's own, not of any message
        self.tokenizer = f"api:{model}"
        self.capabilities = capabilities

    # ------------------------------------------------------------ the provider interface

    def generate(self, request: GenerationRequest) -> Generation:
        arguments = self.chat_arguments(request)
        tokens = _estimate_tokens(json.dumps(request.messages)) + request.max_tokens
        return self.generation(self._call(lambda: self._client.chat.completions.create(**arguments), tokens), request)

    def chat_arguments(self, request: GenerationRequest) -> dict:
        """The chat completion's body, the same online and in a batch's input file."""
        arguments = dict(model=self.model, messages=list(request.messages), temperature=request.temperature,
                         max_tokens=request.max_tokens, seed=request.seed)
        if request.logprobs:
            # llama-cpp-python's server returns token log-probs only when alternatives are asked for too.
            arguments |= dict(logprobs=True, top_logprobs=max(1, request.top_logprobs))
        return arguments

    def generation(self, response: Any, request: GenerationRequest) -> Generation:
        """A chat completion, as the SDK parsed it online or as a batch's output line holds it (a dict)."""
        choice = (_field(response, "choices") or [None])[0]
        if choice is None:
            raise ItemError("malformed response body: no choices", retryable=True)
        content = _field(_field(choice, "logprobs"), "content") or []
        return Generation(
            text=_field(_field(choice, "message"), "content") or "",
            finish_reason="length" if _field(choice, "finish_reason") == "length" else "stop",
            tokenizer=self.tokenizer,
            token_ids=[],  # an API returns token texts, not ids
            token_texts=[_field(t, "token") for t in content],
            token_logprobs=[_field(t, "logprob") for t in content] or None,
            stop_token_id=None,
            stop_logprob=None,
            top_logprobs=[{_field(top, "token"): _field(top, "logprob") for top in _field(t, "top_logprobs") or []}
                          for t in content] if request.top_logprobs else [],
            reported_tokens=_field(_field(response, "usage"), "completion_tokens"),
        )

    def batch_api(self) -> BatchAPI:
        """The provider's Batch API for this model (Files + Batches, OpenAI's shape), through this provider's retries."""
        return BatchAPI(self._client, self.model, self._call)

    def teacher_force(self, request: TeacherForceRequest) -> ForcedLogprob:
        prompt = self._render(request.messages)
        response = request.response_text + (self._end_of_turn if request.ended_turn else "")
        top_k = request.certify_from_top_k
        temperature, alternatives = (1.0, top_k) if top_k else (request.temperature, 1)
        full = self._echo(prompt + response, temperature, alternatives)
        if len(prompt) in full.offsets:
            scored, subtracted, method = full.tokens_from(full.offsets.index(len(prompt))), None, "api_echo_boundary_verified"
        else:  # a token straddles the boundary: log P(prompt + response) - log P(prompt), over where the two differ
            alone = self._echo(prompt, temperature, alternatives)
            shared = alone.shared_start(full)
            scored, subtracted, method = full.tokens_from(shared), alone.tokens_from(shared), "api_echo_difference"
        n_tokens = len(scored.logprobs) - (len(subtracted.logprobs) if subtracted else 0)
        echoed = scored.total() - (subtracted.total() if subtracted else 0.0)  # at `temperature`
        if not top_k:
            return ForcedLogprob(echoed, n_tokens, method)
        interval = scored.certified(top_k, request.temperature)
        if subtracted:
            other = subtracted.certified(top_k, request.temperature)
            interval = Interval(interval.low - other.high, interval.high - other.low)
        return ForcedLogprob(interval.midpoint, n_tokens, f"{method}:certified_from_temperature_1", interval, top_k, echoed)

    def alternatives(self, messages: tuple[dict, ...] | None, text: str, asked: int) -> Echo:
        """The echo of `text` with `asked` temperature-1 alternatives per token: as a response in the context of
        `messages` (its tokens from the first that starts at or after the response), or alone (messages None)."""
        prompt = "" if messages is None else self._render(messages)
        echo = self._echo(prompt + text, 1.0, asked)
        return echo.tokens_from(next((i for i, offset in enumerate(echo.offsets) if offset >= len(prompt)), len(echo.offsets)))

    def evict_cache(self) -> None:
        """One generated token after an unrelated text, without log-probs (a cheap call): a server that reuses the
        cached start of the previous prompt (llama-cpp-python's) then computes the next prompt from its start."""
        self._call(lambda: self._client.completions.create(model=self.model, prompt=PROBE_OTHER_TEXT, max_tokens=1,
                                                           temperature=0.0), _estimate_tokens(PROBE_OTHER_TEXT) + 1)

    def greedy_continuation(self, messages: tuple[dict, ...], max_tokens: int) -> str:
        """The completions endpoint's greedy continuation of the policy's context rendered with the configured
        template, up to the end of the turn: what the chat endpoint answers greedily when the templates agree."""
        text = self._render(messages)
        response = self._call(lambda: self._client.completions.create(
            model=self.model, prompt=text, max_tokens=max_tokens, temperature=0.0, seed=0),
            _estimate_tokens(text) + max_tokens)
        continuation = response.choices[0].text or ""
        return continuation.split(self._end_of_turn)[0] if self._end_of_turn else continuation

    def score_text(self, text: str, temperature: float) -> list[float]:
        """The echo log-probs of every token of a text after the first, as teacher forcing gets them (the preflight)."""
        return self._echo(text, temperature).logprobs

    def sampling_difference(self, messages: tuple[dict, ...], max_tokens: int, seed: int) -> list[float]:
        """Per token, how far the log-prob of a token as the endpoint samples it (one at a time) is from its echo
        log-prob (the whole text at once), on the completions endpoint with the configured template on both sides, so
        that the template cannot be to blame. Position by position: an echo one token off (each token carrying the next
        position's log-prob) can keep the sum close while every token's value is another's."""
        text = self._render(messages)
        response = self._call(lambda: self._client.completions.create(
            model=self.model, prompt=text, max_tokens=max_tokens, logprobs=1, temperature=1.0, seed=seed),
            _estimate_tokens(text) + max_tokens)
        choice = response.choices[0]
        sampled = _field(_field(choice, "logprobs"), "token_logprobs") or []
        if not sampled or any(value is None for value in sampled):
            raise ItemError("the completions endpoint returned no log-probs for the tokens it sampled", retryable=False)
        sampled_tokens = list(_field(_field(choice, "logprobs"), "tokens") or [])
        self.evict_cache()  # so that a server that caches the sampled logits (llama-cpp-python's) recomputes them
        echo = self._echo(text + choice.text, 1.0)
        inside = [i for i, offset in enumerate(echo.offsets) if offset >= len(text)]
        if len(inside) != len(sampled):
            raise ItemError(f"the {len(sampled)} sampled tokens came back as {len(inside)} when echoed", retryable=False)
        if sampled_tokens and [echo.tokens[i] for i in inside] != sampled_tokens:
            raise ItemError("the echoed tokens of a sampled continuation are not the tokens sampled, position by position",
                            retryable=False)
        return [echo.logprobs[i] - value for i, value in zip(inside, sampled)]

    def _render(self, messages: tuple[dict, ...]) -> str:
        """The policy's context as the server samples in it, by the configured chat template."""
        if self._template is None:
            raise ItemError(f"no chat template is configured for {self.model}", retryable=False)
        return self._template.render(messages=list(messages), add_generation_prompt=True)

    # ------------------------------------------------------------ calls

    def _echo(self, text: str, temperature: float, alternatives: int = 1) -> Echo:
        """Every token of `text` after the first (which has no log-prob): offsets, log-probs and alternatives.

        Asks for one generated token, not max_tokens=0, which some servers read as "no limit"
        (llama-cpp-python's), and keeps only the tokens that lie inside the text sent, checking that they spell it
        exactly: anything else fails the item with the reason, never a number.
        """
        response = self._call(lambda: self._client.completions.create(
            model=self.model, prompt=text, max_tokens=1, echo=True, logprobs=alternatives, temperature=temperature),
            _estimate_tokens(text))
        result = _field(response.choices[0], "logprobs")
        if result is None or _field(result, "token_logprobs") is None:
            raise ItemError("the server returned no prompt log-probs for an echo request", retryable=False)
        tokens = list(_field(result, "tokens") or [])
        offsets, logprobs = list(_field(result, "text_offset") or []), list(_field(result, "token_logprobs"))
        tops = list(_field(result, "top_logprobs") or [None] * len(tokens))
        if not (len(tokens) == len(offsets) == len(logprobs) == len(tops)) or offsets != sorted(offsets):
            raise ItemError("the server's echo returned tokens, offsets and log-probs that do not line up", retryable=True)
        starts = _token_starts(tokens, text, self._markup) or _tiling(tokens, offsets, text)
        if starts is None:
            raise ItemError("the server's echoed tokens do not spell the text that was sent, so their log-probs are "
                            "not those of this text", retryable=False)
        inside = len(starts)  # what follows is the generated continuation
        echo = Echo(starts, tokens[:inside], logprobs[:inside], tops[:inside])
        if echo.logprobs and echo.logprobs[0] is None:
            echo = echo.tokens_from(1)
        if any(value is None for value in echo.logprobs):
            raise ItemError("the server's echo left a token of the text without a log-prob", retryable=False)
        return Echo(echo.offsets, echo.tokens, [float(v) for v in echo.logprobs], echo.alternatives)

    def _call(self, send: Callable[[], Any], tokens: int, valid: Callable[[Any], bool] = lambda r: bool(getattr(r, "choices", None))
              ) -> Any:
        sdk = self._sdk
        started = self._limiter.now()
        unreachable = True  # every attempt so far failed for the endpoint, none for the request
        for attempt in range(self._max_retries + 1):
            self._limiter.acquire(tokens)
            told_to_wait = None  # the Retry-After of a 429: acquire() waits it out, with every other call
            try:
                response = send()
            except (sdk.AuthenticationError, sdk.PermissionDeniedError) as error:
                self._limiter.release()
                raise AccountRefusedError(
                    f"{self.model}: the provider rejected the API key (HTTP {error.status_code}). "
                    "Check the key's environment variable; the stage stopped so that no item is recorded as failed."
                ) from None
            except sdk.RateLimitError as error:
                if getattr(error, "code", None) == "insufficient_quota":  # OpenAI's answer to an account out of credit
                    self._limiter.release()
                    raise AccountRefusedError(
                        f"{self.model}: the provider refused the account for its quota (HTTP 429 insufficient_quota: "
                        f"{_message(error)}). Add credit or raise the account's limit, then rerun the same command; the "
                        "stage stopped so that no item is recorded as failed.") from None
                told_to_wait = _retry_after(error)
                self._limiter.release(throttled=True, retry_after=told_to_wait)
                reason = "rate limited (HTTP 429)"
            except (sdk.BadRequestError, sdk.NotFoundError, sdk.UnprocessableEntityError) as error:
                self._limiter.release()
                raise ItemError(f"HTTP {error.status_code}: {_message(error)}", retryable=False) from None
            except (sdk.InternalServerError, sdk.APITimeoutError, sdk.APIConnectionError,
                    sdk.APIResponseValidationError, json.JSONDecodeError) as error:
                self._limiter.release()
                reason = f"{type(error).__name__}: {_message(error)}"
                unreachable &= isinstance(error, sdk.APIConnectionError) or getattr(error, "status_code", None) in GATEWAY_ERRORS
                self._failed(reason, started=None)
            else:
                self._limiter.release()
                if not valid(response):
                    reason, unreachable = "malformed response body", False
                    self._failed(reason, started=None)
                else:
                    self._limiter.record_outcome(succeeded=True)
                    return response
            if attempt == self._max_retries:
                break
            if told_to_wait:
                log.info("%s: %s; retry %d after the server's Retry-After, %.2fs", self.model, reason, attempt + 1, told_to_wait)
            else:
                delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** attempt) * random.uniform(0.5, 1.0)
                log.info("%s: %s; retry %d in %.1fs", self.model, reason, attempt + 1, delay)
                time.sleep(delay)
        if reason != "rate limited (HTTP 429)":
            self._failed(reason, started=started)  # no call succeeded while this one retried: an outage
        raise ItemError(f"{reason} (gave up after {self._max_retries + 1} attempts)", retryable=True, unreachable=unreachable)

    def _failed(self, reason: str, started: float | None) -> None:
        """Records a failure of the endpoint's kind and stops the stage when it is an outage: failures for
        outage_seconds with no success, or (given `started`) none since this item's first attempt."""
        self._limiter.record_outcome(succeeded=False)
        down = self._limiter.seconds_down(since=started)
        if down >= self._outage_seconds or (started is not None and down > 0):
            raise EndpointDownError(
                f"{self._endpoint} ({self.model}) is not answering: no call has succeeded for {down:.0f} s "
                f"(last error: {reason}). The stage stopped and no item was recorded as failed; rerun the same "
                "command once the endpoint is back.")


@dataclass(frozen=True)
class Echo:
    """An echo's tokens inside the text sent, from the second on: where each starts, its text, its log-prob and the
    alternatives listed at its position (text -> log-prob; None where the server listed none)."""

    offsets: list[int]
    tokens: list[str]
    logprobs: list[float]
    alternatives: list[dict[str, float] | None]

    def tokens_from(self, start: int) -> Echo:
        return Echo(self.offsets[start:], self.tokens[start:], self.logprobs[start:], self.alternatives[start:])

    def shared_start(self, other: Echo) -> int:
        """How many leading tokens the two echoes share (same text at the same offset): their log-probs are of the same
        positions in the same context, so a difference of two echoes needs only what follows."""
        shared = 0
        for mine, theirs in zip(zip(self.offsets, self.tokens), zip(other.offsets, other.tokens)):
            if mine != theirs:
                break
            shared += 1
        return shared

    def total(self) -> float:
        return sum(self.logprobs)

    def certified(self, asked: int, temperature: float) -> Interval:
        if any(not listed for listed in self.alternatives):
            raise ItemError("the server listed no alternatives for a token of the text, so its log-prob at the policy's "
                            "temperature cannot be bounded", retryable=False)
        return response_interval(self.tokens, self.logprobs, self.alternatives, asked, temperature)


def _token_starts(tokens: list[str], text: str, markup: str) -> list[int] | None:
    """Where each echoed token that lies inside `text` starts in it, or None when the tokens do not spell it.

    Tokens after the text are the continuation the server generated. Some servers do not print special tokens:
    llama-cpp-python's shows <|im_end|> as "" and leaves its BOS token (SmolLM2's <|im_start|>) out with its
    log-prob. So text may be passed over where it is chat-template markup (it occurs in the configured template
    or end_of_turn), never message text; a token shown as "" covers the markup up to the next printed token.
    """
    def is_markup(span: str) -> bool:
        return bool(span) and span in markup

    starts: list[int] = []
    position = 0
    for token in tokens:
        if position == len(text):
            break
        if token == "":
            starts.append(position)
            continue
        found = position if text.startswith(token, position) else text.find(token, position)
        if found < 0 and starts and tokens[len(starts) - 1] == "" and is_markup(text[position:]):
            position = len(text)  # the text ends in a token shown as ""; this one is the continuation
            break
        if found < 0 or (found > position and not is_markup(text[position:found])):
            return None
        starts.append(found)
        position = found + len(token)
    ends_in_markup = starts and tokens[len(starts) - 1] == "" and is_markup(text[position:])
    return starts if starts and (position == len(text) or ends_in_markup) else None


def _tiling(tokens: list[str], offsets: list[int], text: str) -> list[int] | None:
    """The server's own offsets where it shows a token it cannot print (part of a character, an unknown byte)
    by a placeholder: they must tile the text end to end."""
    inside = sum(offset < len(text) for offset in offsets)
    tokens, offsets = tokens[:inside], offsets[:inside]
    ends = [offset + len(token) for offset, token in zip(offsets, tokens)]
    tiles = bool(tokens) and offsets[0] == 0 and ends[-1] == len(text) and all(end == start for end, start in zip(ends, offsets[1:]))
    return offsets if tiles else None


def _field(value: Any, name: str) -> Any:
    """Log-prob objects are typed in the openai SDK and plain dicts in fireworks-ai's."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _retry_after(error: Any) -> float | None:
    """The server's requested wait: OpenAI's exact retry-after-ms where sent, else HTTP's whole-second Retry-After."""
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
    return None


def _message(error: Any) -> str:
    """The provider's own message: the openai SDK keeps the body's "error" object as `body`, other SDKs the body."""
    body = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(error)[:300]


def _estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1  # for rate limits only: about four characters per token in English


def key_fingerprint(api_key: str) -> str:
    """Identifies a key (so two keys get two limiters) without the key appearing anywhere."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:8]

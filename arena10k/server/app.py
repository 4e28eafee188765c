"""The HTTP layer: authentication, rate limits and injected faults, counters, and the routes.

Every request to a counted endpoint ends with exactly one outcome in the counters (GET /stats), recorded when
its response is decided, so a client can reconcile what it saw with what the server did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

import arena10k.server.protocol as protocol
from arena10k.server.backends import Backend, Completion, RequestError, Tokens
from arena10k.server.batches import BatchService, Refused
from arena10k.server.faults import FaultConfig, FaultPlan, Quota, estimate_tokens

log = logging.getLogger("arena10k.server")

CHAT, COMPLETIONS, MODELS, TOKENIZE, DETOKENIZE = (
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize")
ENDPOINTS = (CHAT, COMPLETIONS, MODELS, TOKENIZE, DETOKENIZE)
# rate_limited: over the configured RPM/TPM; throttled and the ones after it: injected faults.
OUTCOMES = ("ok", "bad_request", "unauthorized", "not_found", "rate_limited", "throttled", "quota_exhausted", "error_500",
            "error_503", "timeout", "dropped", "malformed", "internal_error")
# Cut inside a string: what a client gets when a response is truncated on the way.
MALFORMED_BODY = b'{"id": "chatcmpl-truncated", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "'

Request = TypeVar("Request", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Stats:
    def __init__(self, backend: str):
        self._backend = backend
        self._started = time.monotonic()
        self._received: Counter[str] = Counter()
        self._outcomes = {endpoint: Counter[str]() for endpoint in ENDPOINTS}
        self._served: dict[str, set[bytes]] = {endpoint: set() for endpoint in ENDPOINTS}  # digests of ok bodies
        self._tokens: Counter[str] = Counter()
        self.in_flight = 0

    def received(self, endpoint: str) -> None:
        self._received[endpoint] += 1

    def finished(self, endpoint: str, outcome: str, body: bytes = b"", usage: dict | None = None) -> None:
        self._outcomes[endpoint][outcome] += 1
        if outcome == "ok":
            self._served[endpoint].add(hashlib.sha256(body).digest()[:16])
        if usage:
            self._tokens.update(prompt=usage["prompt_tokens"], completion=usage["completion_tokens"])

    def snapshot(self) -> dict:
        """completions: requests received by the two completion endpoints, whatever came of them.
        ok - ok_unique: successful requests that repeated an earlier successful one byte for byte."""
        return {
            "backend": self._backend,
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "in_flight": self.in_flight,
            "completions": self._received[CHAT] + self._received[COMPLETIONS],
            "endpoints": {endpoint: {"received": self._received[endpoint], "ok_unique": len(self._served[endpoint]),
                                     **{outcome: self._outcomes[endpoint][outcome] for outcome in OUTCOMES}}
                          for endpoint in ENDPOINTS},
            "tokens": {"prompt": self._tokens["prompt"], "completion": self._tokens["completion"]},
        }


class _Refusal(Exception):
    def __init__(self, status: int, outcome: str, body: dict, headers: dict[str, str] | None = None):
        super().__init__(body["error"]["message"])
        self.status, self.outcome, self.body, self.headers = status, outcome, body, headers


class Server:
    def __init__(self, backend: Backend, faults: FaultConfig, api_key: str | None):
        self.backend = backend
        self.stats = Stats(backend.name)
        self._api_key = api_key  # None: any non-empty key is accepted
        self._limiter = Quota(faults.rpm, faults.tpm)
        self._plan = FaultPlan(faults)
        self._hold_seconds = faults.timeout_seconds
        self._throttle_wait = faults.throttle_retry_after_ms / 1000
        self._echo_continuation = faults.echo_continuation_tokens
        self._echo_at_temperature_one = faults.echo_at_temperature_one
        self._echo_refused = faults.echo_refused
        self._quota_exhausted = faults.quota_exhausted
        self._chat_without_logprobs = faults.chat_without_logprobs
        self._top_logprobs_cap = faults.top_logprobs_cap
        self._echo_shifted = faults.echo_shifted
        self._colliding_alternatives = faults.colliding_alternatives
        self._logprob_noise = faults.logprob_noise
        self._noise = random.Random(faults.fault_seed)
        self.batches = BatchService(self._serve_batch_line, faults)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._counted])
        app.add_routes([
            web.post(CHAT, functools.partial(self._handle, parse=protocol.ChatRequest, serve=self._generate, faulty=True)),
            web.post(COMPLETIONS, functools.partial(self._handle, parse=protocol.CompletionRequest, serve=self._generate,
                                                    faulty=True)),
            web.post(TOKENIZE, functools.partial(self._handle, parse=protocol.TokenizeRequest, serve=self._tokenize)),
            web.post(DETOKENIZE, functools.partial(self._handle, parse=protocol.DetokenizeRequest, serve=self._detokenize)),
            web.get(MODELS, self._models),
            web.get("/stats", self._stats),
            *self.batches.routes(),
        ])
        return app

    @web.middleware
    async def _counted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts, authenticates, and turns refusals and unexpected errors into OpenAI-style error responses."""
        endpoint = request.path
        if endpoint.startswith(("/v1/files", "/v1/batches")):
            try:
                self._authenticate(request)
                return await handler(request)
            except Refused as refusal:
                return web.json_response(protocol.error_body(str(refusal), "invalid_request_error"), status=refusal.status)
            except _Refusal as refusal:
                return web.json_response(refusal.body, status=refusal.status)
        if endpoint not in ENDPOINTS:
            return await handler(request)
        self.stats.received(endpoint)
        self.stats.in_flight += 1
        try:
            self._authenticate(request)
            return await handler(request)
        except _Refusal as refusal:
            self.stats.finished(endpoint, refusal.outcome)
            return web.json_response(refusal.body, status=refusal.status, headers=refusal.headers)
        except web.HTTPException:  # aiohttp's own refusals, such as a body over its size limit
            self.stats.finished(endpoint, "bad_request")
            raise
        # A server answers every request: a bug of ours is logged with its traceback and answered 500, as a hosted API's is.
        except Exception:  # noqa: BLE001
            log.exception("%s failed", endpoint)
            self.stats.finished(endpoint, "internal_error")
            return web.json_response(protocol.error_body("Internal server error.", "server_error"), status=500)
        finally:
            self.stats.in_flight -= 1

    async def _handle(self, request: web.Request, parse: type[Request], serve: Callable[[Request], Awaitable[dict]],
                      faulty: bool = False) -> web.StreamResponse:
        body = await request.read()
        parsed = _parse(parse, body)
        fault = await self._admit(parsed) if faulty else None
        if fault in ("timeout", "dropped"):
            self.stats.finished(request.path, fault)
            if fault == "timeout":
                await asyncio.sleep(self._hold_seconds)
            if request.transport is not None:  # None when the client has given up already
                request.transport.close()
            return web.Response()  # never sent: the connection is closed
        if fault == "malformed":
            self.stats.finished(request.path, fault)
            return web.Response(body=MALFORMED_BODY, content_type="application/json")
        if fault:
            raise _Refusal(int(fault.removeprefix("error_")), fault, protocol.error_body(
                "The server had an error while processing your request (injected).", "server_error"))
        payload = await serve(parsed)
        self.stats.finished(request.path, "ok", body, payload.get("usage"))
        return web.json_response(payload)

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or (self._api_key is not None and key != self._api_key):
            raise _Refusal(401, "unauthorized", protocol.error_body(
                "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))

    async def _admit(self, parsed: protocol.ChatRequest | protocol.CompletionRequest) -> str | None:
        """An account out of credit, the rate limits, then latency; returns the fault to inject, if any."""
        if self._quota_exhausted:
            raise _Refusal(429, "quota_exhausted", protocol.error_body(
                "You exceeded your current quota, please check your plan and billing details (injected).",
                "insufficient_quota", "insufficient_quota"))
        call = parsed.backend_call()
        refused = self._limiter.admit(estimate_tokens(call.prompt, call.max_tokens))
        if refused:
            raise _too_many_requests("rate_limited", *refused)
        latency, fault = self._plan.draw()
        if fault == "throttled":  # at once, as a real limit answers
            raise _too_many_requests(fault, "requests", self._throttle_wait)
        await asyncio.sleep(latency)
        return fault

    async def _complete(self, model: str, call: protocol.BackendCall, temperature: float = 1.0,
                        seed: int | None = None) -> Completion:
        """The blocking backend call, in a worker thread so the event loop keeps serving."""
        work = functools.partial(self.backend.complete, model, call.prompt, call.max_tokens, temperature,
                                 secrets.randbits(32) if seed is None else seed, call.top_logprobs, call.echo)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, work)
        except RequestError as error:
            raise _refusal(error) from None

    async def _generate(self, parsed: protocol.ChatRequest | protocol.CompletionRequest) -> dict:
        call = parsed.backend_call()
        if call.echo and call.max_tokens < self._echo_continuation:
            call = dataclasses.replace(call, max_tokens=self._echo_continuation)
        if call.echo and self._echo_refused:
            raise _Refusal(400, "bad_request", protocol.error_body(
                "This model does not support echo with logprobs (injected).", "invalid_request_error"))
        if self._top_logprobs_cap is not None and call.top_logprobs > self._top_logprobs_cap:
            raise _Refusal(400, "bad_request", protocol.error_body(
                f"top_logprobs must be at most {self._top_logprobs_cap} (injected).", "invalid_request_error"))
        if isinstance(parsed, protocol.ChatRequest) and self._chat_without_logprobs:
            parsed = parsed.model_copy(update={"logprobs": False})
        temperature = 1.0 if call.echo and self._echo_at_temperature_one else parsed.temperature
        completion = await self._complete(parsed.model, call, temperature, parsed.seed)
        if call.echo and self._echo_shifted and completion.prompt.logprobs:
            # The last token gets its own log-prob again: what follows it depends on the sampled continuation.
            shifted = [None, *completion.prompt.logprobs[2:], completion.prompt.logprobs[-1]]
            completion = dataclasses.replace(completion, prompt=dataclasses.replace(completion.prompt, logprobs=shifted))
        if self._colliding_alternatives:
            completion = dataclasses.replace(completion, prompt=_collided(completion.prompt),
                                             completion=_collided(completion.completion))
        if self._logprob_noise:
            completion = dataclasses.replace(completion, prompt=self._noisy(completion.prompt),
                                             completion=self._noisy(completion.completion))
        return parsed.response(completion)

    async def _serve_batch_line(self, body: dict) -> tuple[int, dict]:
        """A batch's line, answered as the chat endpoint answers it, without the online limits and faults."""
        try:
            return 200, await self._generate(protocol.ChatRequest.model_validate(body))
        except ValidationError as error:
            return 400, protocol.error_body(protocol.describe(error), "invalid_request_error")
        except _Refusal as refusal:
            return refusal.status, refusal.body

    def _noisy(self, tokens: Tokens) -> Tokens:
        if tokens.logprobs is None:
            return tokens
        noisy = [None if v is None else min(0.0, v + self._noise.gauss(0.0, self._logprob_noise)) for v in tokens.logprobs]
        return dataclasses.replace(tokens, logprobs=noisy)

    async def _tokenize(self, parsed: protocol.TokenizeRequest) -> dict:
        prompt = (await self._complete(parsed.model, parsed.backend_call())).prompt
        return {"count": len(prompt.ids), "max_model_len": self.backend.context_size(parsed.model),
                "tokens": prompt.ids, "token_strs": prompt.texts if parsed.return_token_strs else None}

    async def _detokenize(self, parsed: protocol.DetokenizeRequest) -> dict:
        completion = await self._complete(parsed.model, protocol.BackendCall(parsed.tokens, 0, 0, echo=False))
        return {"prompt": completion.prompt_text}

    async def _models(self, request: web.Request) -> web.Response:
        self.stats.finished(MODELS, "ok")
        return web.json_response({"object": "list", "data": self.backend.model_cards()})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.snapshot() | {"batch_api": self.batches.stats()})


def _collided(tokens: Tokens) -> Tokens:
    """Alternatives keyed by text folded to lower case, most probable first so that a less probable token that prints
    alike overwrites it, and the token's own entry last."""
    if not tokens.top or tokens.logprobs is None:
        return tokens
    collided = []
    for text, logprob, top in zip(tokens.texts, tokens.logprobs, tokens.top):
        if top is None or logprob is None:
            collided.append(top)
            continue
        keyed = {alternative.lower(): value for alternative, value in sorted(top.items(), key=lambda item: -item[1])}
        collided.append({**keyed, text: logprob})
    return dataclasses.replace(tokens, top=collided)


def _parse(parse: type[Request], body: bytes) -> Request:
    try:
        return parse.model_validate(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _Refusal(400, "bad_request", protocol.error_body(
            f"The body is not valid JSON: {error}", "invalid_request_error")) from None
    except ValidationError as error:
        raise _Refusal(400, "bad_request", protocol.error_body(protocol.describe(error), "invalid_request_error")) from None


def _too_many_requests(outcome: str, limit: str, wait: float) -> _Refusal:
    """A 429 as OpenAI sends it. Retry-After is whole seconds (HTTP's format); retry-after-ms is exact."""
    return _Refusal(429, outcome, protocol.error_body(
        f"Rate limit reached on {limit} per minute. Please try again in {wait:.3f}s.", limit, "rate_limit_exceeded"),
        {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(round(wait * 1000))})


def _refusal(error: RequestError) -> _Refusal:
    outcome = "not_found" if error.status == 404 else "bad_request"
    return _Refusal(error.status, outcome, protocol.error_body(str(error), "invalid_request_error", error.code))

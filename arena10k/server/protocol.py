"""The wire format: requests as the OpenAI API (and vLLM's /tokenize, /detokenize) define them, and responses
in exactly the shapes the official `openai` SDK parses."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from arena10k.server.backends import Completion, ModelInput, Tokens

DEFAULT_CHAT_MAX_TOKENS = 256
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs, as OpenAI caps it
# Legacy completions' logprobs: alternatives per token, as many as a self-hosted server raised with vLLM's
# --max-logprobs lists (the vocabulary bounds what is listed); the top_logprobs_cap fault sets a provider's cap.
MAX_ECHO_ALTERNATIVES = 1000


class _Request(BaseModel):
    # Unknown fields are ignored, like the options of other servers a client may send.
    model_config = ConfigDict(extra="ignore")

    model: str

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """Clients send null for an option they leave at its default."""
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class BackendCall:
    prompt: ModelInput
    max_tokens: int
    top_logprobs: int
    echo: bool  # score the prompt's tokens


class _Sampling(_Request):
    temperature: float = Field(1.0, ge=0, le=2)
    seed: int | None = None
    n: int = 1
    top_p: float = 1.0
    stream: bool = False
    stop: str | list[str] = []

    @model_validator(mode="after")
    def _supported(self) -> _Sampling:
        if self.n != 1:
            raise ValueError("only n=1 is supported")
        if self.top_p != 1:
            raise ValueError("only top_p=1 is supported: log-probs are those of the full distribution")
        if self.stream:
            raise ValueError("streaming is not supported")
        if self.stop:
            raise ValueError("stop sequences are not supported")
        return self


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)

    def backend_call(self) -> BackendCall:
        limit = self.max_completion_tokens or self.max_tokens or DEFAULT_CHAT_MAX_TOKENS
        messages = tuple(message.model_dump() for message in self.messages)
        return BackendCall(messages, limit, self.top_logprobs if self.logprobs else 0, echo=False)

    def response(self, completion: Completion) -> dict:
        content = [_chat_token(text, logprob, top)
                   for text, logprob, top in _entries(completion.completion)] if self.logprobs else None
        choice = {"index": 0, "message": {"role": "assistant", "content": completion.text},
                  "logprobs": None if content is None else {"content": content, "refusal": None},
                  "finish_reason": completion.finish_reason}
        return _envelope("chatcmpl", "chat.completion", self.model, choice, completion)


class CompletionRequest(_Sampling):
    prompt: str | list[int]
    max_tokens: int = Field(16, ge=0)  # 0 with echo: only score the prompt
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_ECHO_ALTERNATIVES)  # how many alternatives per token

    def backend_call(self) -> BackendCall:
        return BackendCall(self.prompt, self.max_tokens, self.logprobs or 0, echo=self.echo and self.logprobs is not None)

    def response(self, completion: Completion) -> dict:
        prompt = completion.prompt if self.echo else Tokens([], [], [], [])
        choice = {"index": 0, "text": (completion.prompt_text if self.echo else "") + completion.text,
                  "logprobs": None if self.logprobs is None else _legacy_logprobs(prompt, completion),
                  "finish_reason": completion.finish_reason}
        return _envelope("cmpl", "text_completion", self.model, choice, completion)


class TokenizeRequest(_Request):
    """vLLM's /tokenize: a chat is rendered with the model's chat template, generation prompt included."""

    prompt: str | None = None
    messages: list[Message] | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self

    def backend_call(self) -> BackendCall:
        prompt = self.prompt if self.messages is None else tuple(message.model_dump() for message in self.messages)
        return BackendCall(prompt, 0, 0, echo=False)


class DetokenizeRequest(_Request):
    """vLLM's /detokenize."""

    tokens: list[int]


def describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}" for e in error.errors())


def error_body(message: str, type_: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _envelope(prefix: str, object_: str, model: str, choice: dict, completion: Completion) -> dict:
    prompt_tokens, completion_tokens = len(completion.prompt.ids), len(completion.completion.ids)
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": object_, "created": int(time.time()), "model": model,
            "choices": [choice], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                           "total_tokens": prompt_tokens + completion_tokens}}


def _entries(tokens: Tokens) -> list[tuple[str, float | None, dict[str, float] | None]]:
    """(text, log-prob, alternatives) per token; alternatives are empty where none were asked for."""
    tops = tokens.top or [{}] * len(tokens.ids)
    return list(zip(tokens.texts, tokens.logprobs or [None] * len(tokens.ids), tops))


def _ranked(top: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(top.items(), key=lambda item: -item[1])


def _chat_token(text: str, logprob: float | None, top: dict[str, float] | None) -> dict:
    return {"token": text, "bytes": list(text.encode()), "logprob": logprob,
            "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": lp} for t, lp in _ranked(top or {})]}


def _legacy_logprobs(prompt: Tokens, completion: Completion) -> dict:
    """The legacy completions format; with echo the prompt's tokens come first, the very first without a log-prob.
    text_offset counts characters from the start of the echoed prompt (or of the prompt, without echo)."""
    entries = _entries(prompt) + _entries(completion.completion)
    offset = 0 if prompt.ids else len(completion.prompt_text)
    offsets = []
    for text, _, _ in entries:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": [text for text, _, _ in entries], "token_logprobs": [logprob for _, logprob, _ in entries],
            "top_logprobs": [None if logprob is None else dict(_ranked(top or {})) for _, logprob, top in entries],
            "text_offset": offsets}

"""What the server needs from a model, and the two backends that provide it.

A backend does one thing: complete a prompt (a chat, text or token ids), optionally scoring the prompt's
tokens (echo). Chat completions, legacy completions, /tokenize and /detokenize are all views of that call.
`complete` blocks and must be safe to call from several threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

ModelInput = tuple[dict, ...] | str | list[int]  # a chat, text, or token ids


@dataclass(frozen=True)
class Tokens:
    ids: list[int]
    texts: list[str]  # each token's text; concatenated they give the sequence's text
    logprobs: list[float | None] | None  # None when not scored; an entry is None for a prompt's first token
    top: list[dict[str, float] | None]  # per token, the most likely alternatives (empty when none were asked for)


@dataclass(frozen=True)
class Completion:
    prompt_text: str
    prompt: Tokens  # scored only when echo was asked for
    text: str
    completion: Tokens
    finish_reason: str  # "stop" (end of turn) or "length"


class RequestError(Exception):
    """A request the backend cannot serve as asked; becomes an OpenAI-style 4xx error."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class Backend(Protocol):
    name: str

    def model_cards(self) -> list[dict]:
        """The /v1/models entries (OpenAI's fields plus backend metadata such as the chat template)."""
        ...

    def context_size(self, model: str) -> int:
        """Tokens of prompt plus completion; raises RequestError(404) for a model it does not serve."""
        ...

    def complete(self, model: str, prompt: ModelInput, max_tokens: int, temperature: float, seed: int,
                 top_logprobs: int, echo: bool) -> Completion: ...

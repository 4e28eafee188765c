"""The `local` backend: the embedded llama.cpp models, through LocalProvider (which is safe to call from the
server's threads: it runs one llama.cpp computation at a time)."""

from __future__ import annotations

import time

from arena10k.errors import ItemError
from arena10k.providers.base import Generation
from arena10k.providers.local import LocalProvider
from arena10k.server.backends import Completion, ModelInput, RequestError, Tokens

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_CONTEXT = 4096


class LocalBackend:
    name = "local"

    def __init__(self, models: list[str], n_ctx: int | None):
        self._created = int(time.time())
        # Loaded up front: a missing model should stop the server at start, not fail the first request.
        self._providers = {model: LocalProvider(model, n_ctx or DEFAULT_CONTEXT) for model in models or [DEFAULT_MODEL]}

    def model_cards(self) -> list[dict]:
        return [{"id": model, "object": "model", "created": self._created, "owned_by": "arena10k",
                 "backend": self.name, "tokenizer": provider.tokenizer, "context_size": provider.n_ctx}
                for model, provider in self._providers.items()]

    def context_size(self, model: str) -> int:
        return self._provider(model).n_ctx

    def complete(self, model: str, prompt: ModelInput, max_tokens: int, temperature: float, seed: int,
                 top_logprobs: int, echo: bool) -> Completion:
        provider = self._provider(model)
        try:
            scored, sampled = provider.complete(prompt, max_tokens, temperature, seed, top_logprobs, echo)
        except ItemError as error:
            raise RequestError(400, str(error)) from None
        return Completion(prompt_text=scored.text, prompt=_tokens(scored, first_unscored=True), text=sampled.text,
                          completion=_tokens(sampled, first_unscored=False), finish_reason=sampled.finish_reason)

    def _provider(self, model: str) -> LocalProvider:
        if model not in self._providers:
            raise RequestError(404, f"The model '{model}' does not exist; this server has {', '.join(self._providers)}.",
                               "model_not_found")
        return self._providers[model]


def _tokens(generation: Generation, first_unscored: bool) -> Tokens:
    """LocalProvider leaves out a prompt's first token, which nothing precedes; the API reports it as null."""
    head: list = [None] if first_unscored else []
    logprobs = generation.token_logprobs
    return Tokens(ids=generation.token_ids, texts=generation.token_texts,
                  logprobs=None if logprobs is None else head + logprobs,
                  top=head + generation.top_logprobs if generation.top_logprobs else [])

"""What model calls cost in tokens, without calling a model: the accounting that the estimate of a run (what is left)
and its usage (what it spent) share, and that each checkpoint's `cost` applies to its items.

Input tokens are counted on the real texts: with a local model's own tokenizer (only the vocabulary of its GGUF file
is loaded), and at CHARS_PER_TOKEN for hosted models, whose tokenizers are not available offline. Chat templates add
about TOKENS_PER_MESSAGE per message (within 3% of SmolLM2's real prompt lengths). A response not generated yet counts
at its policy's max_tokens, an upper bound; a generated one at its recorded length.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from arena10k.checkpoint import ItemState
from arena10k.config import ExperimentConfig, ModelConfig
from arena10k.providers.local import chat_format
from arena10k.records import Prompt
from arena10k.workspace import policy_of, prompt_of

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with GPT-style tokenizers
TOKENS_PER_MESSAGE = 5  # role markers and separators that a chat template wraps around each message
TOKENS_TO_OPEN_REPLY = 4  # the template's opening of the assistant's turn
LARGE_FIELDS = ("text", "token_ids", "token_logprobs", "raw_text")  # counting needs lengths, not contents


@dataclass
class Usage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, calls: int, input_tokens_per_call: int, output_tokens: int) -> None:
        self.calls += calls
        self.input_tokens += calls * input_tokens_per_call
        self.output_tokens += output_tokens

    def merge(self, other: Usage) -> None:
        self.add(other.calls, 0, other.output_tokens)
        self.input_tokens += other.input_tokens

    def cost(self, model: ModelConfig) -> float:
        """US dollars at the model's configured prices."""
        return (self.input_tokens * model.price_per_million_input_tokens
                + self.output_tokens * model.price_per_million_output_tokens) / 1e6


@dataclass(frozen=True)
class Calls:
    """What one work item costs: `calls` calls to `model` (a key of the config's models), each with the same input."""

    model: str
    calls: int
    input_tokens_per_call: int
    output_tokens: int


class TokenCounts:
    """Tokens of the texts a run's items send. Each text is tokenized once per model."""

    def __init__(self, config: ExperimentConfig, prompts: dict[str, Prompt], generated: dict[str, ItemState]):
        self.config = config
        self.prompts = prompts
        self.generated = generated  # the responses' checkpoint states, for their recorded lengths
        self._counts: dict[tuple[str, str], int] = {}  # (model, text) -> tokens

    def prompt(self, key: str) -> str:
        """The prompt text of an item."""
        return self.prompts[prompt_of(key)].prompt

    def response(self, key: str) -> int:
        """Tokens of the response an item's policy gave (generated, or its max_tokens while it is not)."""
        state = self.generated.get(key)
        if state is None or state.record is None or state.record["n_tokens"] is None:
            return self.config.policies[policy_of(key)].max_tokens
        return state.record["n_tokens"] + (state.record["finish_reason"] == "stop")  # the end-of-turn token

    def messages(self, model: str, messages: tuple[dict, ...]) -> int:
        return sum(self.text(model, m["content"]) + TOKENS_PER_MESSAGE for m in messages) + TOKENS_TO_OPEN_REPLY

    def text(self, model: str, text: str) -> int:
        if (model, text) not in self._counts:
            self._counts[model, text] = token_counter(self.config.models[model])(text)
        return self._counts[model, text]


@functools.cache  # a vocabulary is loaded once per process, and lives as long as it
def token_counter(model: ModelConfig) -> Callable[[str], int]:
    if model.provider != "local":
        return lambda text: math.ceil(len(text) / CHARS_PER_TOKEN)
    tokenizer = chat_format(model.model)  # its vocabulary only: no weights, no context
    return lambda text: len(tokenizer.tokenize(text, special=False)) if text else 0

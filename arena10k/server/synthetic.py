"""The `synthetic` backend: a model without weights, fast enough for load and fault tests, deterministic given
the request seed, and self-consistent: the log-prob it reports for a text is exactly the log of the probability
with which it samples that text.

Tokenizer: one token per character. The vocabulary (VOCABULARY, ids in order) is the special tokens
<|end|> <|system|> <|user|> <|assistant|>, an unknown token (text U+FFFD) standing for any character outside
the alphabet, then the alphabet: tab, newline and printable ASCII except '|'. A special token's text inside a
prompt is read as that token. As '|' is outside the alphabet, no sampled characters can spell a special token,
so a sampled text tokenizes back into exactly the tokens it was sampled as, and echo scores what was sampled.

Chat template (CHAT_TEMPLATE, Jinja, also under "chat_template" in /v1/models): `<|role|>content<|end|>` for
each message, then `<|assistant|>`; the reply ends with <|end|>, which ends generation (finish_reason "stop").

Next-token distribution: log_softmax((base + model perturbation + context perturbation) / temperature). The
base has English-like letter frequencies and ends the turn with probability about 1/40; the model perturbation
is drawn from a hash of the model id (so every model id is a different model); the context perturbation from a
hash of every token so far (so a different system prompt changes every token's distribution). Sampling is
LocalProvider's: numpy's generator seeded with the request seed; greedy at temperature 0, log-probs then at
temperature 1.

Judging: an assistant turn that follows a user turn containing SCORE_MARKER starts with a digit, then ends. Other
tokens there get PENALTY nats less: in practice never sampled, yet finite, so any text can be scored. The digit is
centred on the answer's `quality` (how much it looks like words: vowels, and spaces between words) as that model sees
it: each model id grades through a monotone distortion of its own (a slope and an offset drawn from a hash of the id)
with noise from a hash of the model and the request. So every model is a judge that tracks one true quality
imperfectly, as an LLM judge tracks a stronger oracle, and policies whose texts differ have different true values
(at the loopback test config's settings: the bigger model above P0, the unhelpful policy below it).
"""

from __future__ import annotations

import functools
import hashlib
import re
import time

import jinja2
import numpy as np

from arena10k.sampling import Distribution, Sampling
from arena10k.server.backends import Completion, ModelInput, RequestError, Tokens

SPECIAL_TOKENS = ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
END, SYSTEM, USER, ASSISTANT, UNKNOWN = range(5)
ALPHABET = "\t\n" + "".join(chr(code) for code in range(32, 127) if chr(code) != "|")
VOCABULARY = (*SPECIAL_TOKENS, "\ufffd", *ALPHABET)
TOKENIZER = "arena10k-synthetic-characters-v1"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SCORE_MARKER = "Score (one digit, 0-9):"
DEFAULT_MODEL = "synthetic"
DEFAULT_CONTEXT = 32768
PENALTY = 100.0  # nats taken from the tokens a scoring answer cannot have at its position
SCORE_SPREAD = 2.0  # standard deviation of a judge's digit around the answer's quality
JUDGE_NOISE = 0.15  # amplitude of a model's uniform error in grading one answer, on the 0-1 scale of quality
_ANSWER = re.compile(r"Assistant answer:\n(.*)\n\nScore \(one digit, 0-9\):\s*$", re.DOTALL)
# Amplitudes of the uniform perturbations of the logits. Contexts differ less than models, so that a different
# system prompt gives importance weights that vary, but not so much that a few of them carry all the mass.
MODEL_SPREAD = 1.0
CONTEXT_SPREAD = 0.5

_IDS = {text: token for token, text in enumerate(VOCABULARY)}
_PIECES = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)) + "|.", re.DOTALL)
_DIGITS = np.array([_IDS[digit] for digit in "0123456789"])
_DIGIT_IDS = frozenset(_DIGITS.tolist())
_MASK = (1 << 64) - 1
_FNV_PRIME = 0x100000001B3


def tokenize(text: str) -> list[int]:
    return [_IDS.get(piece, UNKNOWN) for piece in _PIECES.findall(text)]


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _uniform(keys: np.ndarray) -> np.ndarray:
    """splitmix64 of each key, as a float in [-1, 1): cheap, vectorized, well-mixed noise."""
    x = keys + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0


_TOKEN_KEYS = np.arange(len(VOCABULARY), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # one distinct key per token


def _base_logits() -> np.ndarray:
    weights = np.full(len(VOCABULARY), 0.02)
    weights[[SYSTEM, USER, ASSISTANT, UNKNOWN]] = 0.001
    weights[_IDS[" "]] = 5.0
    for rank, letter in enumerate("etaoinshrdlcumwfgypbvkjxqz"):
        weights[_IDS[letter]] = 3.0 / (1 + rank / 3)
    weights[[_IDS[","], _IDS["."]]] = 0.4
    weights[END] = (weights.sum() - weights[END]) / 39
    return np.log(weights / weights.sum())


_BASE = _base_logits()


@functools.lru_cache(maxsize=256)
def _model_logits(model: str) -> np.ndarray:
    return _BASE + MODEL_SPREAD * _uniform(np.uint64(_digest("model:" + model)) ^ _TOKEN_KEYS)


def quality(answer: str) -> float:
    """What every synthetic judge grades, in [0, 1]: twice the share of vowels plus the share of spaces, rescaled (at
    the loopback config's settings, about 0.5 for P0's answers with a spread of 0.25 between answers)."""
    if not answer:
        return 0.0
    vowels, spaces = sum(c in "aeiou" for c in answer) / len(answer), answer.count(" ") / len(answer)
    return min(max((2 * vowels + spaces - 0.3) / 0.9, 0.0), 1.0)


def _unit(text: str) -> float:
    return _digest(text) / _MASK


def score_centre(model: str, request: str) -> float:
    """The digit a model's grade of this request centres on: the answer's quality through the model's own distortion,
    plus its noise for this request. A request not in judging.py's shape is graded as a whole."""
    match = _ANSWER.search(request)
    slope, offset = 0.6 + 0.4 * _unit("judge slope:" + model), 0.2 * _unit("judge offset:" + model)
    seen = slope * quality(match.group(1) if match else request) + offset + JUDGE_NOISE * (2 * _unit(model + ":" + request) - 1)
    return 9 * min(max(seen, 0.0), 1.0)


class _Context:
    """What the next token's distribution depends on, fed one token at a time."""

    def __init__(self, model: str):
        self.model = model
        self.hash = _digest("context:" + model)
        self.score_centre: float | None = None  # right after <|assistant|> that answers a scoring request
        self.must_end = False  # right after that answer's digit
        self._role: int | None = None
        self._content: list[str] = []
        self._last_user = ""

    def feed(self, token: int) -> None:
        self.hash = ((self.hash ^ token) * _FNV_PRIME) & _MASK
        self.must_end = self.score_centre is not None and token in _DIGIT_IDS
        self.score_centre = None
        if token in (SYSTEM, USER, ASSISTANT):
            if token == ASSISTANT and SCORE_MARKER in self._last_user:
                self.score_centre = score_centre(self.model, self._last_user)
            self._role, self._content = token, []
        elif token == END:
            if self._role == USER:
                self._last_user = "".join(self._content)
            self._role = None
        else:
            self._content.append(VOCABULARY[token])

    def state(self) -> tuple[int, float | None, bool]:
        return self.hash, self.score_centre, self.must_end


def _logits(model: str, states: list[tuple[int, float | None, bool]]) -> np.ndarray:
    """One row of logits per context state, computed together."""
    noise = _uniform(np.array([h for h, _, _ in states], dtype=np.uint64)[:, None] ^ _TOKEN_KEYS)
    logits = _model_logits(model) + CONTEXT_SPREAD * noise
    for row, (_, centre, must_end) in enumerate(states):
        if centre is not None:
            digits = -0.5 * ((np.arange(10) - centre) / SCORE_SPREAD) ** 2 + CONTEXT_SPREAD * noise[row, _DIGITS]
            logits[row] -= PENALTY
            logits[row, _DIGITS] = digits
        elif must_end:
            logits[row] -= PENALTY
            logits[row, END] = 0.0
    return logits


def _top(dist: Distribution, k: int) -> dict[str, float]:
    return {VOCABULARY[t]: logprob for t, logprob in dist.top(k)}


class SyntheticBackend:
    name = "synthetic"

    def __init__(self, models: list[str], n_ctx: int | None):
        self._models = models  # empty: any model id is served
        self._n_ctx = n_ctx or DEFAULT_CONTEXT
        self._created = int(time.time())
        self._template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(CHAT_TEMPLATE)

    def model_cards(self) -> list[dict]:
        return [{"id": model, "object": "model", "created": self._created, "owned_by": "arena10k",
                 "backend": self.name, "tokenizer": TOKENIZER, "context_size": self._n_ctx,
                 "chat_template": CHAT_TEMPLATE, "special_tokens": list(SPECIAL_TOKENS)}
                for model in self._models or [DEFAULT_MODEL]]

    def context_size(self, model: str) -> int:
        if self._models and model not in self._models:
            raise RequestError(404, f"The model '{model}' does not exist; this server has {', '.join(self._models)}.",
                               "model_not_found")
        return self._n_ctx

    def complete(self, model: str, prompt: ModelInput, max_tokens: int, temperature: float, seed: int,
                 top_logprobs: int, echo: bool) -> Completion:
        n_ctx = self.context_size(model)
        if isinstance(prompt, tuple):
            prompt = self._template.render(messages=list(prompt), add_generation_prompt=True)
        ids = tokenize(prompt) if isinstance(prompt, str) else prompt
        if not ids or not all(0 <= t < len(VOCABULARY) for t in ids):
            raise RequestError(400, f"The prompt must be 1 or more token ids in [0, {len(VOCABULARY)}).")
        if len(ids) + max_tokens > n_ctx:
            raise RequestError(400, f"This model's maximum context length is {n_ctx} tokens; the prompt has {len(ids)} "
                               f"and max_tokens is {max_tokens}.", "context_length_exceeded")
        scale = temperature or 1.0
        context = _Context(model)
        states = []
        for token in ids:
            context.feed(token)
            states.append(context.state())
        prompt_logprobs: list[float | None] | None = None
        prompt_top: list[dict[str, float] | None] = []
        if echo:
            # Row by row with the same function sampling uses, so both give the same bits.
            dists = [Distribution(row, scale) for row in _logits(model, states[:-1])]
            prompt_logprobs = [None, *(dist.logprob(t) for dist, t in zip(dists, ids[1:]))]
            prompt_top = [None, *(_top(dist, top_logprobs) for dist in dists)] if top_logprobs else []
        sampling = Sampling(temperature, seed, max_tokens, top_logprobs, END.__eq__, VOCABULARY.__getitem__)
        token = sampling(_logits(model, [context.state()])[0]) if max_tokens else None
        while token is not None:
            context.feed(token)
            token = sampling(_logits(model, [context.state()])[0])
        prompt_texts = [VOCABULARY[t] for t in ids]
        sampled_texts = [VOCABULARY[t] for t in sampling.tokens]
        return Completion(
            prompt_text="".join(prompt_texts), prompt=Tokens(ids, prompt_texts, prompt_logprobs, prompt_top),
            text="".join(sampled_texts),
            completion=Tokens(sampling.tokens, sampled_texts, sampling.logprobs, sampling.top_logprobs),
            finish_reason="length" if sampling.stop_token is None else "stop",
        )

"""The embedded provider: a GGUF model run in-process by llama-cpp-python, deterministic by construction.

Sampling is done here, not by llama.cpp's sampler, so that the sampled tokens' log-probs and the
teacher-forced log-probs come from one function applied to the same logits. llama.cpp gives
bit-identical logits for a token whether it is decoded alone or inside a batch as long as the
micro-batch stays under 64 tokens with flash attention; hence N_BATCH. With that, P0's teacher-forced
log-prob equals the sum of its sampled log-probs exactly, and a clone's weight is exactly 1.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import jinja2
import numpy as np

from arena10k.errors import ItemError
from arena10k.models import LOCAL_MODELS, gguf_path
from arena10k.providers.base import (
    GENERATE,
    TEACHER_FORCE,
    TOP_LOGPROBS,
    Generation,
    GenerationRequest,
    TeacherForced,
    TeacherForceRequest,
)

N_BATCH = 32


def log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    shifted = scaled - scaled.max()
    return shifted - np.log(np.exp(shifted).sum())


def sample(logprobs: np.ndarray, rng: np.random.Generator) -> int:
    cumulative = np.cumsum(np.exp(logprobs))
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, len(cumulative) - 1)


class LocalProvider:
    capabilities = frozenset({GENERATE, TEACHER_FORCE, TOP_LOGPROBS})

    def __init__(self, model: str, n_ctx: int, reuse_prefix: bool = True):
        import llama_cpp

        path = gguf_path(model)
        self._llama_cpp = llama_cpp
        self._llm = llama_cpp.Llama(
            str(path), n_ctx=n_ctx, n_batch=N_BATCH, n_ubatch=N_BATCH, flash_attn=True,
            n_threads=len(os.sched_getaffinity(0)), verbose=False,
        )
        self.n_ctx = n_ctx
        self.n_vocab = self._llm.n_vocab()
        self.reuse_prefix = reuse_prefix
        # The prompt tokens whose keys and values are in the cache as a fresh evaluation computes them: whole
        # N_BATCH chunks from position 0. A later prompt that starts with some of those chunks starts after them.
        self._cached_prompt: list[int] = []
        # What prompts held, what was computed of them and how long that took (for benchmarks/quick_start.py).
        self.prompt_tokens = self.prompt_tokens_evaluated = 0
        self.prompt_seconds = 0.0
        self.tokenizer = f"{path.name}:{_file_digest(path)}"
        registered = LOCAL_MODELS.get(model)
        template = (registered and registered.chat_template) or self._llm.metadata["tokenizer.chat_template"]
        self._template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template)
        self._bos = self._piece(self._llm.token_bos())
        # The token that ends an assistant turn is what the template puts right after a message.
        closing = self._render(({"role": "user", "content": "x"},), add_generation_prompt=False)
        self._end_of_turn = self._llm.tokenize(closing.encode(), add_bos=False, special=True)[-2 if closing.endswith("\n") else -1]

    def _piece(self, token: int) -> str:
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _render(self, messages: tuple[dict, ...], add_generation_prompt: bool = True) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     bos_token=self._bos, eos_token=self._piece(self._llm.token_eos()))

    def _prompt_ids(self, messages: tuple[dict, ...], room: int) -> list[int]:
        ids = self._llm.tokenize(self._render(messages).encode(), add_bos=False, special=True)
        self._check_room(ids, room)
        return ids

    def _check_room(self, ids: list[int], room: int) -> None:
        if len(ids) + room > self.n_ctx:
            raise ItemError(
                f"prompt is {len(ids)} tokens; with {room} more it exceeds the model's context of {self.n_ctx} "
                "(raise n_ctx in the model config)", retryable=False)

    def _prompt_logits(self, ids: list[int]) -> np.ndarray:
        """The logits after a prompt (one row), reusing the cached chunks it starts with.

        A prompt is always evaluated in N_BATCH chunks aligned at position 0, and only whole chunks are
        reused, so every chunk is computed exactly as a fresh evaluation computes it: the logits are
        bit-identical with or without reuse, whatever the model's batch invariance (tested on both
        embedded models). Judge calls share a 239-token rubric and examples, which this evaluates once.
        """
        reused = 0
        if self.reuse_prefix:
            common = next((i for i, (a, b) in enumerate(zip(self._cached_prompt, ids)) if a != b),
                          min(len(self._cached_prompt), len(ids)))
            reused = min(common, len(ids) - 1) // N_BATCH * N_BATCH  # at least one token is evaluated, for its logits
        started = time.perf_counter()
        self._llm._ctx.kv_cache_seq_rm(-1, reused, -1)
        logits = self._forward(ids[reused:], reused, all_logits=False)
        self.prompt_seconds += time.perf_counter() - started
        self.prompt_tokens += len(ids)
        self.prompt_tokens_evaluated += len(ids) - reused
        self._cached_prompt = ids[: len(ids) // N_BATCH * N_BATCH]
        return logits

    def _forward(self, tokens: list[int], n_past: int, all_logits: bool) -> np.ndarray:
        """Decode tokens after n_past cached ones (chunks start at n_past); logits of every token, or only of the last."""
        if n_past == 0:
            self._llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            self._cached_prompt = []
        rows = []
        for start in range(0, len(tokens), N_BATCH):
            chunk = tokens[start:start + N_BATCH]
            self._llm._batch.set_batch(chunk, n_past=n_past + start, logits_all=all_logits)
            self._llm._ctx.decode(self._llm._batch)
            n_rows = len(chunk) if all_logits else 1
            rows.append(np.ctypeslib.as_array(self._llm._ctx.get_logits(), shape=(n_rows, self.n_vocab)).copy())
        return np.concatenate(rows) if all_logits else rows[-1]

    def _is_end(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token))

    def generate(self, request: GenerationRequest) -> Generation:
        return self.complete(request.messages, request.max_tokens, request.temperature, request.seed, request.top_logprobs)[1]

    def teacher_force(self, request: TeacherForceRequest) -> TeacherForced:
        if request.response_tokenizer == self.tokenizer:
            # The exact ids that were sampled: no tokenization boundary to get wrong.
            response, method = list(request.response_token_ids), "sampled_token_ids"
            stop = request.stop_token_id
        else:
            response, method = self._retokenize(request)
            stop = self._end_of_turn if request.ended_turn else None
        targets = response + ([stop] if stop is not None else [])
        prompt = self._prompt_ids(request.messages, room=len(targets))
        first = self._prompt_logits(prompt)
        rest = self._forward(targets[:-1], len(prompt), all_logits=True) if len(targets) > 1 else first[:0]
        logprob = sum(float(log_softmax(row, request.temperature)[t]) for row, t in zip(np.vstack([first, rest]), targets))
        return TeacherForced(logprob=logprob, n_tokens=len(targets), method=method + ("+end_of_turn" if stop is not None else ""))

    def _retokenize(self, request: TeacherForceRequest) -> tuple[list[int], str]:
        """Another model's response, in this model's tokens. The boundary is verified: the prompt's
        tokens must be a prefix of the tokens of prompt + response, or the pieces are tokenized apart."""
        prompt_text = self._render(request.messages)
        prompt = self._llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
        full = self._llm.tokenize((prompt_text + request.response_text).encode(), add_bos=False, special=True)
        if full[: len(prompt)] == prompt:
            return full[len(prompt):], "retokenized_boundary_verified"
        return self._llm.tokenize(request.response_text.encode(), add_bos=False, special=False), "retokenized_separately"

    def complete(self, prompt: tuple[dict, ...] | str | list[int], max_tokens: int, temperature: float, seed: int,
                 top_logprobs: int = 0, echo: bool = False) -> tuple[Generation, Generation]:
        """A raw completion, as an OpenAI-compatible server serves one (arena10k.server): the prompt, and up to
        max_tokens tokens sampled after it exactly as generate() samples them.

        The prompt is a chat (rendered with the chat template, as generate() renders it), text (tokenized as a
        rendered chat is, special tokens included) or token ids. The first Generation is the prompt; with echo,
        its token_logprobs and top_logprobs are those of each token after the first, given the tokens before it,
        at the sampling temperature. Scoring a rendered chat plus a sampled response this way gives back the
        response's sampled log-probs bit for bit, because both come from logits of the same decode.
        """
        if isinstance(prompt, tuple):
            prompt = self._render(prompt)
        ids = self._llm.tokenize(prompt.encode(), add_bos=False, special=True) if isinstance(prompt, str) else list(prompt)
        if not ids or not all(0 <= t < self.n_vocab for t in ids):
            raise ItemError(f"the prompt must be 1 or more token ids in [0, {self.n_vocab})", retryable=False)
        self._check_room(ids, max_tokens)

        def top(dist: np.ndarray) -> dict[str, float]:
            return {self._piece(int(t)): float(dist[t]) for t in np.argsort(-dist, kind="stable")[:top_logprobs]}

        scale = temperature or 1.0
        prompt_logprobs: list[float] = []
        prompt_top: list[dict[str, float]] = []
        logits = None
        if echo:
            # Chunk by chunk, so a long prompt never holds more than N_BATCH rows of vocabulary-sized logits.
            for start in range(0, len(ids), N_BATCH):
                # The last row, after the whole prompt, is left in `logits` for the first sampled token.
                for position, logits in enumerate(self._forward(ids[start:start + N_BATCH], start, all_logits=True), start + 1):
                    if position < len(ids):
                        dist = log_softmax(logits, scale)
                        prompt_logprobs.append(float(dist[ids[position]]))
                        if top_logprobs:
                            prompt_top.append(top(dist))
        elif max_tokens:
            logits = self._prompt_logits(ids)[-1]
        rng = np.random.default_rng(seed)
        sampled: list[int] = []
        logprobs: list[float] = []
        sampled_top: list[dict[str, float]] = []
        stop_token = stop_logprob = None
        for step in range(max_tokens):
            dist = log_softmax(logits, scale)
            token = int(np.argmax(dist)) if temperature == 0 else sample(dist, rng)
            if self._is_end(token):
                stop_token, stop_logprob = token, float(dist[token])
                break
            sampled.append(token)
            logprobs.append(float(dist[token]))
            if top_logprobs:
                sampled_top.append(top(dist))
            if step + 1 < max_tokens:
                logits = self._forward([token], len(ids) + step, all_logits=False)[-1]
        prompt_generation = Generation(
            text=self._llm.detokenize(ids, special=True).decode("utf-8", errors="replace"), finish_reason="length",
            tokenizer=self.tokenizer, token_ids=ids, token_texts=[self._piece(t) for t in ids],
            token_logprobs=prompt_logprobs if echo else None, stop_token_id=None, stop_logprob=None,
            top_logprobs=prompt_top)
        return prompt_generation, Generation(
            text=self._llm.detokenize(sampled).decode("utf-8", errors="replace"),
            finish_reason="length" if stop_token is None else "stop", tokenizer=self.tokenizer, token_ids=sampled,
            token_texts=[self._piece(t) for t in sampled], token_logprobs=logprobs, stop_token_id=stop_token,
            stop_logprob=stop_logprob, top_logprobs=sampled_top)


def _file_digest(path: Path) -> str:
    """A cheap identity for a model file: its size and the digest of its first megabyte (the header and vocabulary start)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return f"{path.stat().st_size}-{hashlib.sha256(head).hexdigest()[:12]}"

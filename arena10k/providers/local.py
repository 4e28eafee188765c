"""The embedded provider: a GGUF model run in-process by llama-cpp-python, deterministic by construction.

Sampling is done here (arena10k/sampling.py), not by llama.cpp's sampler, so that the sampled tokens' log-probs and the
teacher-forced log-probs come from one function applied to the same logits.

With flash attention, micro-batches under 64 tokens (hence N_BATCH), one thread for single-token steps, and neither
weight repacking nor the tiled K-quant kernel (see LocalProvider.__init__), a registered model gets bit-identical
logits for a token whether it is decoded alone, in a chunk of its own sequence or beside other sequences' tokens (up
to `LocalModel.most_sequences` of them), at any context length. So it decodes up to `sequences` responses in one
llama.cpp batch: each call is a job of the engine (engine.py), the one thread that runs llama.cpp, and calls from
several threads join the same steps, each sequence in a cache stream of its own (its cells stay in position order, as
in a fresh evaluation; slots.py plans them). It teacher-forces a response in chunks and starts a prompt
after the longest prefix that any of its sequences holds (the judge's rubric and examples). A GGUF path, never
measured, decodes alone, teacher-forces one token a step, as it samples, and reuses only whole N_BATCH chunks from
position 0, as a fresh evaluation computes them. Either way P0's teacher-forced log-prob equals the sum of its
sampled log-probs exactly, and a clone's weight is exactly 1 (tests/test_local_model.py checks all of it).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from arena10k.errors import ItemError
from arena10k.models import LOCAL_MODELS, LocalModel, gguf_path, sequences_decoded_together
from arena10k.providers.engine import Claim, Decode, Job, engine
from arena10k.providers.slots import N_BATCH, plan_claim, plan_step, reusable
from arena10k.sampling import Distribution, Forcing, Sampling
from arena10k.providers.base import (
    GENERATE,
    TEACHER_FORCE,
    TOP_LOGPROBS,
    Generation,
    GenerationRequest,
    ForcedLogprob,
    TeacherForceRequest,
)

# From 8 rows llama.cpp multiplies K-quant weights (Gemma's Q4_K and Q6_K) with a tiled kernel whose sums round
# otherwise than the one-row kernel's, so a token's logits depended on how many tokens were decoded with it (Gemma: up
# to 1.1 apart, measured). llama.cpp reads this switch once, at the first such multiplication in the process.
os.environ["GGML_CPU_TILED_MM"] = "0"


# What a decoding sequence does with the logits after each of its tokens: the token to decode next, or None when done.
NextToken = Callable[[np.ndarray], "int | None"]


@dataclass
class _Sequence:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # the prompt tokens at its positions 0.. that can be reused
    busy: bool = False
    token: int = 0  # while decoding: the token the next step decodes, at `position`
    position: int = 0
    next_token: NextToken | None = None


class ChatFormat:
    """A local model's tokenizer and chat template: how a policy's context becomes the tokens the model generates
    after. `chat_format` loads it without the weights, for counting a prompt's tokens before any model runs."""

    def __init__(self, model, registered: LocalModel | None):
        self._model = model
        template = (registered and registered.chat_template) or model.metadata()["tokenizer.chat_template"]
        self._template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template)
        self._bos, self._eos = self.piece(model.token_bos()), self.piece(model.token_eos())

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self._model.tokenize(text.encode(), add_bos=False, special=special)

    def text(self, ids: list[int], special: bool = False) -> str:
        return self._model.detokenize(ids, special=special).decode("utf-8", errors="replace")

    def piece(self, token: int) -> str:
        return self.text([token], special=True)

    def render(self, messages: tuple[dict, ...], add_generation_prompt: bool = True) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     bos_token=self._bos, eos_token=self._eos)

    def prompt_ids(self, messages: tuple[dict, ...]) -> list[int]:
        """The tokens of a policy's context, up to where the model starts its response."""
        return self.tokenize(self.render(messages))


def _llama_cpp():
    """llama-cpp-python, quiet and with its backend initialised."""
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(False)
    llama_cpp.llama_backend_init()
    return llama_cpp


def chat_format(model: str) -> ChatFormat:
    """A registered model's or GGUF file's chat format, its vocabulary loaded without its weights (a second at most)."""
    from llama_cpp import _internals

    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    return ChatFormat(_internals.LlamaModel(path_model=str(gguf_path(model)), params=params, verbose=False),
                      LOCAL_MODELS.get(model))


class LocalProvider:
    capabilities = frozenset({GENERATE, TEACHER_FORCE, TOP_LOGPROBS})

    def __init__(self, model: str, n_ctx: int, reuse_prefix: bool = True, sequences: int = 1):
        from llama_cpp import _internals

        llama_cpp = _llama_cpp()
        path = gguf_path(model)
        registered = LOCAL_MODELS.get(model)
        self.chunk_invariant = registered is not None
        self.sequences = sequences_decoded_together(model, sequences)
        self._llama_cpp = llama_cpp
        model_params = llama_cpp.llama_model_default_params()
        # Repacked Q4_K weights are multiplied by another kernel from 4 rows, whose sums round otherwise (Gemma: a
        # token's logits up to 1.8 apart in a chunk of 4 and in a step of its own, measured).
        model_params.use_extra_bufts = False
        self._model = _internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * self.sequences
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = self.sequences
        params.kv_unified = False  # a cache stream per sequence
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.n_threads_batch = len(os.sched_getaffinity(0))
        # A step of one token beside 512 or more cached ones takes llama.cpp's split-KV attention, which adds up
        # the threads' parts of the cache in another order than a chunk, or a step of several sequences, is computed
        # in (measured: 0.26 to 3.8 nats over 48 tokens after prompts of 301 to 581 tokens). With one thread it is
        # one part, the same. (A GGUF path always decodes alone, so its results do not depend on this.)
        params.n_threads = 1 if registered else params.n_threads_batch
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=N_BATCH, embd=0, n_seq_max=1, verbose=False)
        self._slots = [_Sequence(i) for i in range(self.sequences)]
        self._decoding: dict[int, _Sequence] = {}  # the sequences with a token waiting for the next step
        self._engine = engine()
        self.n_ctx = n_ctx
        self.n_vocab = self._model.n_vocab()
        self.reuse_prefix = reuse_prefix
        # What prompts held, what was computed of them and how long that took (for benchmarks/quick_start.py).
        self.prompt_tokens = self.prompt_tokens_evaluated = 0
        # Prompts evaluated on their own (not teacher forcing's, evaluated with the response): tokens and seconds.
        self.prompt_tokens_timed, self.prompt_seconds = 0, 0.0
        self.decode_steps = self.decoded_tokens = 0  # steps decoding sampled tokens, and the tokens they decoded
        self.placeholder_tokens = 0  # decoded in those steps to keep their sequences' ids consecutive (_step)
        self.tokenizer = f"{path.name}:{_file_digest(path)}"
        self._format = ChatFormat(self._model, registered)
        # The token that ends an assistant turn is what the template puts right after a message.
        closing = self._format.render(({"role": "user", "content": "x"},), add_generation_prompt=False)
        self._end_of_turn = self._format.tokenize(closing)[-2 if closing.endswith("\n") else -1]

    def _prompt_ids(self, messages: tuple[dict, ...], room: int) -> list[int]:
        ids = self._format.prompt_ids(messages)
        self._check_room(ids, room)
        return ids

    def _check_room(self, ids: list[int], room: int) -> None:
        if len(ids) + room > self.n_ctx:
            raise ItemError(
                f"prompt is {len(ids)} tokens; with {room} more it exceeds the model's context of {self.n_ctx} "
                "(raise n_ctx in the model config)", retryable=False)

    # The engine's side (providers/engine.py): every method below that touches the context runs on its thread.

    def has_free_sequence(self) -> bool:
        return not all(s.busy for s in self._slots)

    def claim(self, command: Claim) -> tuple[_Sequence, int]:
        """A free sequence for the prompt, holding the longest start of it it can (slots.plan_claim), and how many
        prompt tokens need no evaluation."""
        plan = plan_claim([s.cached for s in self._slots], [s.busy for s in self._slots], command.prompt,
                          command.reuse and self.reuse_prefix, self.chunk_invariant)
        target, memory = self._slots[plan.target], self._ctx.memory
        if plan.copy_from is not None:
            self._llama_cpp.llama_memory_seq_cp(memory, plan.copy_from, plan.target, -1, -1)
        self._llama_cpp.llama_memory_seq_rm(memory, plan.target, plan.held, -1)
        target.busy, target.cached = True, command.prompt[:plan.held]
        return target, plan.held

    def start_decoding(self, command: Decode) -> None:
        sequence = command.sequence
        sequence.token, sequence.position, sequence.next_token = command.token, command.position, command.next_token
        self._decoding[sequence.seq_id] = sequence

    def step(self) -> list[tuple[int, BaseException | None]]:
        """Decodes the waiting token of every decoding sequence in one llama.cpp micro-batch (slots.plan_step, with
        placeholders in the free sequences between them), passes each one's logits to its next_token, and returns the
        sequences that are done, each with the error its next_token raised, if any."""
        memory = self._ctx.memory
        ends = {s.seq_id: self._llama_cpp.llama_memory_seq_pos_max(memory, s.seq_id) + 1 for s in self._slots
                if s.seq_id not in self._decoding}
        plan = plan_step({i: (s.token, s.position) for i, s in self._decoding.items()}, ends, self.n_ctx, self._end_of_turn)
        self._fill_batch(plan.tokens)
        try:
            self._decode()
        except BaseException:
            self._decoding.clear()  # the engine fails every job that was decoding on this model
            raise
        for seq_id, end in plan.placeholders:
            self._llama_cpp.llama_memory_seq_rm(memory, seq_id, end, -1)
        ids = sorted(self._decoding)
        self.decode_steps, self.decoded_tokens = self.decode_steps + 1, self.decoded_tokens + len(ids)
        self.placeholder_tokens += len(plan.placeholders)
        finished = []
        for seq_id, logits in zip(ids, self._logits(len(ids))):
            sequence = self._decoding[seq_id]
            try:
                token = sequence.next_token(logits)
            except Exception as error:  # raised in its own job
                finished.append((self._decoding.pop(seq_id).seq_id, error))
                continue
            if token is None:
                finished.append((self._decoding.pop(seq_id).seq_id, None))
            else:
                sequence.token, sequence.position = token, sequence.position + 1
        return finished

    def _release(self, sequence: _Sequence) -> None:
        sequence.busy = False

    def _evaluate(self, sequence: _Sequence, tokens: list[int], n_past: int, first_scored: int) -> Iterator[np.ndarray]:
        """Decodes tokens after n_past cached ones, in N_BATCH chunks from n_past, and yields each chunk's logits rows,
        one per token from tokens[first_scored] on (none for the tokens before). Views of llama.cpp's buffer, valid
        until the next decode: copying Gemma's rows (1 MB each) into fresh arrays took longer than scoring them (up to
        0.2 s a teacher-forced response)."""
        for start in range(0, len(tokens), N_BATCH):
            chunk = tokens[start:start + N_BATCH]
            self._fill_batch([(token, n_past + start + i, sequence.seq_id, start + i >= first_scored)
                              for i, token in enumerate(chunk)])
            self._decode()
            yield self._logits(max(0, start + len(chunk) - max(first_scored, start)))

    def _evaluate_prompt(self, sequence: _Sequence, prompt: list[int], held: int) -> np.ndarray:
        """The logits after the whole prompt; the prompt becomes the sequence's reusable cache."""
        started = time.perf_counter()
        *_, logits = self._evaluate(sequence, prompt[held:], held, first_scored=len(prompt) - held - 1)
        self.prompt_seconds += time.perf_counter() - started
        self.prompt_tokens_timed += len(prompt) - held
        self._count_prompt(sequence, prompt, held)
        return logits[-1].copy()

    def _count_prompt(self, sequence: _Sequence, prompt: list[int], held: int) -> None:
        """An evaluated prompt becomes the sequence's reusable cache, and is counted."""
        self.prompt_tokens += len(prompt)
        self.prompt_tokens_evaluated += len(prompt) - held
        sequence.cached = reusable(prompt, self.chunk_invariant)

    def _fill_batch(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """Tokens as (token, position, sequence, whether its logits are wanted)."""
        batch = self._batch.batch
        batch.n_tokens = len(tokens)
        for i, (token, position, seq_id, wanted) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.seq_id[i][0], batch.n_seq_id[i], batch.logits[i] = token, position, seq_id, 1, wanted

    def _decode(self) -> None:
        self._ctx.decode(self._batch)

    def _logits(self, n_rows: int) -> np.ndarray:
        """The last decode's logits rows: a view of llama.cpp's buffer."""
        return np.ctypeslib.as_array(self._ctx.get_logits(), shape=(n_rows, self.n_vocab))

    def _echo(self, sequence: _Sequence, ids: list[int], scale: float, top: int, logprobs: list, tops: list) -> np.ndarray:
        """Scores every prompt token after the first into logprobs (and its `top` most likely tokens into tops);
        returns the logits after the prompt. Chunk by chunk, so a long prompt never holds more than N_BATCH rows of
        vocabulary-sized logits."""
        position = 0
        for rows in self._evaluate(sequence, ids, 0, first_scored=0):
            for logits in rows:
                position += 1
                if position < len(ids):
                    dist = Distribution(logits, scale)
                    logprobs.append(dist.logprob(ids[position]))
                    if top:
                        tops.append({self._format.piece(t): logprob for t, logprob in dist.top(top)})
        sequence.cached = reusable(ids, self.chunk_invariant)
        return logits.copy()

    def _is_end(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._model.vocab, token))

    def generate(self, request: GenerationRequest) -> Generation:
        return self.complete(request.messages, request.max_tokens, request.temperature, request.seed, request.top_logprobs)[1]

    def teacher_force(self, request: TeacherForceRequest) -> ForcedLogprob:
        if request.response_tokenizer == self.tokenizer:
            # The exact ids that were sampled: no tokenization boundary to get wrong.
            response, method = list(request.response_token_ids), "sampled_token_ids"
            stop = request.stop_token_id
        else:
            response, method = self._retokenize(request)
            stop = self._end_of_turn if request.ended_turn else None
        targets = response + ([stop] if stop is not None else [])
        if not targets:
            raise ItemError("the response has no tokens and did not end its turn: it has no log-probability to compute",
                            retryable=False)
        prompt = self._prompt_ids(request.messages, room=len(targets))
        forcing = Forcing(targets, request.temperature)
        self._engine.run(self, self._forcing_job(prompt, targets, forcing))
        return ForcedLogprob(logprob=forcing.logprob, n_tokens=len(targets),
                             method=method + ("+end_of_turn" if stop is not None else ""))

    def _forcing_job(self, prompt: list[int], targets: list[int], forcing: Forcing) -> Job:
        sequence, held = yield Claim(prompt, reuse=True)
        try:
            if self.chunk_invariant:
                # The rest of the prompt and the response (each token gives the logits that score the next) in one
                # run of chunks, scored from the prompt's last token: a clone's prompt, cached but for its last token,
                # then costs no decode of its own.
                for chunk in self._evaluate(sequence, prompt[held:] + targets[:-1], held, first_scored=len(prompt) - held - 1):
                    for row in chunk:
                        forcing(row)
                self._count_prompt(sequence, prompt, held)
            # A model whose chunks were never measured against its steps decodes the response a token a step, as it
            # samples (before llama.cpp's tiled kernel and repacking were turned off, Gemma's chunks were 0.49 nats a
            # response off in the median, up to 2.4, on the quick start's P0 responses).
            elif (first := forcing(self._evaluate_prompt(sequence, prompt, held))) is not None:
                yield Decode(sequence, first, len(prompt), forcing)
        finally:
            self._release(sequence)

    def _completion_job(self, ids: list[int], max_tokens: int, temperature: float, top_logprobs: int, echo: bool,
                        sampling: Sampling, prompt_logprobs: list[float], prompt_top: list[dict[str, float]]) -> Job:
        # Echo needs the logits of every prompt token, so it reuses nothing.
        sequence, held = yield Claim(ids, reuse=not echo)
        try:
            if max_tokens and self.chunk_invariant and held == len(ids) - 1:
                # All of it cached but its last token (a clone's prompt): that token joins the other sequences' next
                # step instead of taking a decode of its own.
                yield Decode(sequence, ids[-1], held, sampling)
                self._count_prompt(sequence, ids, held)
            elif echo or max_tokens:
                logits = (self._echo(sequence, ids, temperature or 1.0, top_logprobs, prompt_logprobs, prompt_top)
                          if echo else self._evaluate_prompt(sequence, ids, held))
                if max_tokens and (first := sampling(logits)) is not None:
                    yield Decode(sequence, first, len(ids), sampling)
        finally:
            self._release(sequence)

    def _retokenize(self, request: TeacherForceRequest) -> tuple[list[int], str]:
        """Another model's response, in this model's tokens. The boundary is verified: the prompt's
        tokens must be a prefix of the tokens of prompt + response, or the pieces are tokenized apart."""
        prompt_text = self._format.render(request.messages)
        prompt = self._format.tokenize(prompt_text)
        full = self._format.tokenize(prompt_text + request.response_text)
        if full[: len(prompt)] == prompt:
            return full[len(prompt):], "retokenized_boundary_verified"
        return self._format.tokenize(request.response_text, special=False), "retokenized_separately"

    def complete(self, prompt: tuple[dict, ...] | str | list[int], max_tokens: int, temperature: float, seed: int,
                 top_logprobs: int = 0, echo: bool = False) -> tuple[Generation, Generation]:
        """A raw completion, as an OpenAI-compatible server serves one (arena10k.server): the prompt, and up to
        max_tokens tokens sampled after it exactly as generate() samples them.

        The prompt is a chat (rendered with the chat template, as generate() renders it), text (tokenized as a
        rendered chat is, special tokens included) or token ids. The first Generation is the prompt; with echo,
        its token_logprobs and top_logprobs are those of each token after the first, given the tokens before it,
        at the sampling temperature. On a chunk-invariant model, scoring a rendered chat plus a sampled response
        this way gives back the response's sampled log-probs bit for bit, because both come from the same logits.
        """
        if isinstance(prompt, tuple):
            prompt = self._format.render(prompt)
        ids = self._format.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids or not all(0 <= t < self.n_vocab for t in ids):
            raise ItemError(f"the prompt must be 1 or more token ids in [0, {self.n_vocab})", retryable=False)
        self._check_room(ids, max_tokens)

        sampling = Sampling(temperature, seed, max_tokens, top_logprobs, self._is_end, self._format.piece)
        prompt_logprobs: list[float] = []
        prompt_top: list[dict[str, float]] = []
        self._engine.run(self, self._completion_job(ids, max_tokens, temperature, top_logprobs, echo, sampling,
                                                    prompt_logprobs, prompt_top))
        prompt_generation = Generation(
            text=self._format.text(ids, special=True), finish_reason="length", tokenizer=self.tokenizer, token_ids=ids,
            token_texts=[self._format.piece(t) for t in ids], token_logprobs=prompt_logprobs if echo else None,
            stop_token_id=None, stop_logprob=None, top_logprobs=prompt_top)
        sampled = sampling.tokens
        return prompt_generation, Generation(
            text=self._format.text(sampled), finish_reason="length" if sampling.stop_token is None else "stop",
            tokenizer=self.tokenizer, token_ids=sampled, token_texts=[self._format.piece(t) for t in sampled],
            token_logprobs=sampling.logprobs, stop_token_id=sampling.stop_token, stop_logprob=sampling.stop_logprob,
            top_logprobs=sampling.top_logprobs)


def instruction_sets() -> str:
    """The CPU instruction sets the installed llama.cpp was built with, e.g. "AVX2, AVX512, AVX512_VNNI"."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    return ", ".join(name.strip() for name, _, on in (part.partition("=") for part in info.split("|"))
                     if on.strip() == "1" and name.strip().startswith(("AVX", "AMX", "NEON", "SVE")))


def _file_digest(path: Path) -> str:
    """A cheap identity for a model file: its size and the digest of its first megabyte (the header and vocabulary start)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return f"{path.stat().st_size}-{hashlib.sha256(head).hexdigest()[:12]}"

"""The embedded models' cache plan, as pure functions: which sequence (a llama.cpp cache stream) a prompt takes and how
much of it is already cached there, and which tokens a decode step holds. No model: tests/test_slots.py checks them
directly, and providers/local.py applies them to llama.cpp's cache."""

from __future__ import annotations

from dataclasses import dataclass

N_BATCH = 63  # micro-batches under 64 tokens keep a registered model's logits batch-invariant
# Copying a sequence's cache stream (all n_ctx cells) costs about as much as evaluating 5 tokens (measured: 16 ms
# for SmolLM2 at n_ctx 4096); a cached prefix that saves fewer tokens than this is evaluated again instead.
COPY_MIN_TOKENS = 16


@dataclass(frozen=True)
class Claim:
    """Where a prompt is evaluated: in sequence `target`, whose first `held` tokens need no evaluation, after copying
    sequence `copy_from`'s cache into it (None: its own cache is used)."""

    target: int
    held: int
    copy_from: int | None = None


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def plan_claim(cached: list[list[int]], busy: list[bool], prompt: list[int], reuse: bool, chunk_invariant: bool) -> Claim:
    """A free sequence holding the longest start of `prompt` it can (`cached[i]`: the prompt tokens at sequence i's
    positions 0.. that may be reused). A free sequence's own cache is used; another sequence's (busy ones too: a
    prompt's start never changes) is copied over when it holds COPY_MIN_TOKENS more of the prompt, since llama.cpp
    copies a whole cache stream. One token is always evaluated, for its logits; a model that is not chunk-invariant
    reuses whole N_BATCH chunks only, as a fresh evaluation computes them."""
    free = [i for i, taken in enumerate(busy) if not taken]
    if not free:
        raise ValueError("no free sequence")

    def held_by(sequence: int) -> int:
        if not reuse:
            return 0
        held = min(common_prefix(cached[sequence], prompt), len(prompt) - 1)
        return held if chunk_invariant else held // N_BATCH * N_BATCH

    held = [held_by(i) for i in range(len(cached))]
    target = max(free, key=lambda i: held[i])
    source = max(range(len(cached)), key=lambda i: held[i])
    if held[source] >= held[target] + COPY_MIN_TOKENS:
        return Claim(target, held[source], source)
    return Claim(target, held[target])


def reusable(prompt: list[int], chunk_invariant: bool) -> list[int]:
    """What a later prompt may reuse of an evaluated one: all of it, or (not chunk-invariant) its whole chunks."""
    return prompt if chunk_invariant else prompt[: len(prompt) // N_BATCH * N_BATCH]


def chunks(n_tokens: int) -> list[range]:
    """The micro-batches a run of tokens is decoded in."""
    return [range(start, min(start + N_BATCH, n_tokens)) for start in range(0, n_tokens, N_BATCH)]


@dataclass(frozen=True)
class Step:
    """One decode step: (token, position, sequence, whether its logits are wanted) per batch row, and the placeholder
    tokens (sequence, position) to remove from the cache after it."""

    tokens: list[tuple[int, int, int, bool]]
    placeholders: list[tuple[int, int]]


def plan_step(decoding: dict[int, tuple[int, int]], cache_end: dict[int, int], n_ctx: int, placeholder: int) -> Step:
    """The step that decodes the waiting token of every decoding sequence (`decoding`: sequence -> (token, position)).
    llama.cpp puts only consecutive sequence ids in one micro-batch, and steps across gaps took one micro-batch per
    run of ids (8 SmolLM2 sequences at every other id 242 ms, 8 consecutive ones 53 ms, measured). So a sequence in a
    gap decodes a placeholder token after its cache (`cache_end`: sequence -> its first free position), without logits,
    removed after the step; the other sequences' logits do not depend on it (batch invariance). A sequence whose cache
    is full has no room for one and is left out."""
    ids = sorted(decoding)
    tokens, placeholders = [], []
    for seq_id in range(ids[0], ids[-1] + 1):
        if seq_id in decoding:
            token, position = decoding[seq_id]
            tokens.append((token, position, seq_id, True))
        elif (end := cache_end[seq_id]) < n_ctx:
            tokens.append((placeholder, end, seq_id, False))
            placeholders.append((seq_id, end))
    return Step(tokens, placeholders)

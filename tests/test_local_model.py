"""The embedded model: deterministic sampling, and teacher forcing that reproduces sampled log-probs exactly."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import pytest

from arena10k.errors import ItemError
from arena10k.judging import JUDGE_RUBRIC, ORACLE_RUBRIC, judge_messages
from arena10k.models import gguf_path
from arena10k.providers.base import GenerationRequest, TeacherForceRequest
from arena10k.providers.local import LocalProvider
from arena10k.providers.slots import N_BATCH
from arena10k.sampling import Distribution

SYSTEM = "You are a helpful assistant."
PROMPTS = ["Write a single dot.", "Why is the sky blue?", "def f(x):\n    return x * 2\n\nWhat does f(3) return?", "🍕 or 🍔?"]
# Over 256 tokens of context: llama.cpp then attends with 512 or more cache cells, where it splits the work otherwise.
LONG_PROMPT = "Summarise this in one sentence:\n" + "The committee met on Tuesday to discuss next year's budget. " * 24


MODELS = {"smollm": "smollm2-135m-instruct", "gemma": "gemma3-270m"}


@pytest.fixture(scope="module")
def smollm():
    return LocalProvider(MODELS["smollm"], n_ctx=2048)


@pytest.fixture(scope="module")
def gemma():
    return LocalProvider(MODELS["gemma"], n_ctx=2048)


@pytest.fixture(scope="module")
def smollm_by_path():
    """SmolLM2 given as a GGUF path, as an unregistered model is: never measured, so it teacher-forces a token a step."""
    return LocalProvider(str(gguf_path(MODELS["smollm"])), n_ctx=2048)


def messages(prompt, system=SYSTEM):
    return ({"role": "system", "content": system}, {"role": "user", "content": prompt})


def teacher_force(provider, generation, prompt, temperature=0.7, system=SYSTEM):
    return provider.teacher_force(TeacherForceRequest(
        messages(prompt, system), temperature, generation.text, generation.tokenizer,
        tuple(generation.token_ids), generation.stop_token_id, generation.finish_reason == "stop"))


@pytest.mark.parametrize("model, prompt", [("smollm", p) for p in PROMPTS + [LONG_PROMPT]]
                         + [("gemma", p) for p in PROMPTS[:2] + [LONG_PROMPT]] + [("smollm_by_path", PROMPTS[1])])
def test_teacher_forced_logprob_equals_sum_of_sampled_logprobs(request, model, prompt):
    """Registered models teacher-force the response in chunks (Gemma's differed from its steps by up to 1.1 in a
    logit, until llama.cpp's tiled K-quant kernel and weight repacking were turned off); a GGUF path in steps."""
    provider = request.getfixturevalue(model)
    assert provider.chunk_invariant == (model != "smollm_by_path")
    generation = provider.generate(GenerationRequest(messages(prompt), 0.7, 32, seed=3))
    sampled = sum(generation.token_logprobs) + (generation.stop_logprob or 0.0)
    forced = teacher_force(provider, generation, prompt)
    assert forced.logprob == sampled  # bit for bit, not approximately
    assert forced.logprob < 0
    assert forced.n_tokens == len(generation.token_ids) + (generation.stop_token_id is not None)
    assert forced.method.startswith("sampled_token_ids")


def test_the_distribution_is_softmax_of_logits_over_temperature_in_log_probs_and_in_samples():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(5000) * 3).astype(np.float32)  # not a whole number of sampling blocks
    dist = Distribution(logits, 0.7)
    exact = logits.astype(np.float64) / 0.7
    exact -= exact.max() + np.log(np.exp(exact - exact.max()).sum())
    assert np.abs([dist.logprob(t) - exact[t] for t in range(5000)]).max() < 1e-5
    order = np.argsort(-exact, kind="stable")
    assert dist.greedy() == order[0] and [t for t, _ in dist.top(5)] == list(order[:5])
    draws = np.bincount([dist.sample(rng) for _ in range(20000)], minlength=5000)
    p = np.exp(exact)
    for tokens in ([order[0]], [order[1]], range(4096, 5000), range(0, 2048)):  # the last block holds 904 tokens
        share = p[list(tokens)].sum()
        assert abs(draws[list(tokens)].sum() - 20000 * share) < 4 * np.sqrt(20000 * share * (1 - share)) + 1


def test_pi_clone_log_ratio_is_exactly_zero_and_sampling_is_seeded(smollm):
    first = smollm.generate(GenerationRequest(messages(PROMPTS[1]), 0.7, 32, seed=11))
    again = smollm.generate(GenerationRequest(messages(PROMPTS[1]), 0.7, 32, seed=11))
    other = smollm.generate(GenerationRequest(messages(PROMPTS[1]), 0.7, 32, seed=12))
    assert first == again and first.text != other.text
    p0 = teacher_force(smollm, first, PROMPTS[1])
    clone = teacher_force(smollm, first, PROMPTS[1])
    assert clone.logprob - p0.logprob == 0.0
    bad = teacher_force(smollm, first, PROMPTS[1], temperature=1.0, system="You are an unhelpful assistant.")
    assert bad.logprob != p0.logprob


def test_length_cut_is_recorded_and_scored_without_end_of_turn(smollm):
    generation = smollm.generate(GenerationRequest(messages("Write a long story about a dragon."), 0.7, 5, seed=1))
    assert generation.finish_reason == "length" and generation.stop_token_id is None and len(generation.token_ids) == 5
    forced = teacher_force(smollm, generation, "Write a long story about a dragon.")
    assert forced.n_tokens == 5 and forced.method == "sampled_token_ids"


def test_another_tokenizer_scores_the_text_with_a_verified_boundary(smollm, gemma):
    generation = smollm.generate(GenerationRequest(messages(PROMPTS[1]), 0.7, 24, seed=5))
    forced = teacher_force(gemma, generation, PROMPTS[1])
    assert forced.method.startswith("retokenized_boundary_verified")
    assert forced.logprob < 0
    assert forced.logprob == teacher_force(gemma, generation, PROMPTS[1]).logprob  # deterministic


def test_prompt_beyond_the_context_fails_the_item_permanently(smollm):
    from arena10k.errors import ItemError

    with pytest.raises(ItemError) as error:
        smollm.generate(GenerationRequest(messages("word " * 3000), 0.7, 16, seed=0))
    assert not error.value.retryable and "context" in str(error.value)


def test_gemma_context_carries_the_system_prompt(gemma):
    rendered = gemma._format.render(messages("hi", system="SYSTEM TEXT"))
    assert rendered == "<bos><start_of_turn>user\nSYSTEM TEXT\n\nhi<end_of_turn>\n<start_of_turn>model\n"


def calls_sharing_prefixes(provider):
    """Judge calls (a long shared rubric), then generation and teacher forcing under two system prompts."""
    results = []
    for response in ("The sky is blue because of Rayleigh scattering.", "No idea."):
        reply = provider.generate(GenerationRequest(judge_messages(JUDGE_RUBRIC, PROMPTS[1], response), 0, 4, 0, top_logprobs=20))
        results.append((reply.token_ids, reply.token_logprobs, reply.top_logprobs))
    for system in (SYSTEM, SYSTEM + " Think step by step before answering, and explain your reasoning in detail."):
        for prompt in PROMPTS[1:3]:
            generation = provider.generate(GenerationRequest(messages(prompt, system), 0.7, 8, seed=5))
            forced = teacher_force(provider, generation, prompt, system=system)
            results.append((generation.token_ids, generation.token_logprobs, generation.stop_logprob, forced.logprob))
    return results


@pytest.mark.parametrize("model", ["smollm", "gemma", "smollm_by_path"])
def test_prefix_reuse_gives_bit_identical_results(model, request):
    provider = request.getfixturevalue(model)
    provider.reuse_prefix = False
    fresh = calls_sharing_prefixes(provider)
    provider.reuse_prefix = True
    before = (provider.prompt_tokens, provider.prompt_tokens_evaluated)
    reused = calls_sharing_prefixes(provider)
    assert reused == fresh  # every token id, log-prob and top log-prob, exactly
    held, evaluated = provider.prompt_tokens - before[0], provider.prompt_tokens_evaluated - before[1]
    first, second = (provider._prompt_ids(judge_messages(JUDGE_RUBRIC, PROMPTS[1], r), 0) for r in ("A.", "B."))
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)  # the rubric and examples
    # The second judge call started after all of it, or (a GGUF path) after its whole chunks.
    assert evaluated <= held - (shared if provider.chunk_invariant else shared // N_BATCH * N_BATCH), (held, evaluated)


@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_responses_decoded_together_equal_responses_decoded_alone(request, model):
    """Calls from several threads share decode steps and copy each other's cached prompts; every result is still
    bit-identical to one computed alone, and P0's teacher-forced log-prob still equals its sampled one."""
    alone = request.getfixturevalue(model)
    together = LocalProvider(MODELS[model], n_ctx=2048, sequences=4)
    judge_calls = [GenerationRequest(judge_messages(rubric, prompt, "It is blue."), 0, 4, 0, top_logprobs=20)
                   for rubric in (JUDGE_RUBRIC, ORACLE_RUBRIC) for prompt in PROMPTS[:3]]
    prompts = PROMPTS + [LONG_PROMPT]
    generations = [GenerationRequest(messages(prompt), 0.7, 24, seed=seed) for seed in (1, 2) for prompt in prompts]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(together.generate, generations + judge_calls))
        forced = list(pool.map(lambda pair: teacher_force(together, pair[0], pair[1]),
                               zip(results, prompts + prompts)))
    assert results == [alone.generate(request) for request in generations + judge_calls]
    assert [f.logprob for f in forced] == [sum(g.token_logprobs) + (g.stop_logprob or 0.0) for g in results[:len(generations)]]
    assert together.decoded_tokens > together.decode_steps  # some steps decoded several sequences


@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_a_free_sequence_between_decoding_ones_changes_no_result(request, model):
    """A short response started second ends while the first and third still decode: their steps keep one micro-batch
    with a placeholder token in the freed sequence, and every result stays as computed alone."""
    alone = request.getfixturevalue(model)
    together = LocalProvider(MODELS[model], n_ctx=2048, reuse_prefix=False, sequences=3)
    count = messages("Count from 1 to 100, separated by commas.")
    calls = [GenerationRequest(count, 0.7, 24, seed=1), GenerationRequest(count, 0.7, 2, seed=2),
             GenerationRequest(count, 0.7, 24, seed=3)]
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for call in calls:  # in this order, so that they take sequences 0, 1 and 2
            futures.append(pool.submit(together.generate, call))
            time.sleep(0.05)
        results = [future.result() for future in futures]
    # The second ends first, while the others decode on (where they stop depends on the build's rounding: seen 24 and 14).
    first, second, third = (len(r.token_ids) for r in results)
    assert second == 2 < min(first, third)
    assert results == [alone.generate(call) for call in calls]
    assert together.placeholder_tokens > 0


def test_an_empty_response_that_did_not_end_its_turn_is_an_error_not_a_log_prob(smollm):
    request = TeacherForceRequest(messages(PROMPTS[0]), 0.7, "", smollm.tokenizer, (), None, False)
    with pytest.raises(ItemError, match="no log-probability"):
        smollm.teacher_force(request)


def test_a_failed_decode_step_fails_its_call_and_the_model_goes_on(smollm, monkeypatch):
    request = GenerationRequest(messages(PROMPTS[1]), 0.7, 8, seed=1)
    expected = smollm.generate(request)
    decodes, decode = [], smollm._decode

    def third_fails():  # the prompt, a step, then the next step fails
        decodes.append(1)
        if len(decodes) == 3:
            raise RuntimeError("llama_decode returned -1")
        decode()

    monkeypatch.setattr(smollm, "_decode", third_fails)
    with pytest.raises(RuntimeError, match="llama_decode returned -1"):
        smollm.generate(GenerationRequest(messages(PROMPTS[2]), 0.7, 8, seed=1))
    monkeypatch.undo()
    assert smollm.generate(request) == expected

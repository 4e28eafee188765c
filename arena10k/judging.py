"""LLM-as-judge scoring: a deterministic score and its uncertainty, by one of two methods.

The judge answers with a digit 0..9; the greedy reply's digit is the deterministic score. Its uncertainty
(the mean and variance of the score, the uncertainty variant) comes either from the judge's probabilities over
the ten digit tokens at that position (method top_logprobs: one call, for endpoints that return top log-probs),
or from the digits of a few replies sampled at a fixed temperature (method sampled: for models that return no
log-probs). A reply without a digit is never turned into a number: it fails the item with the raw text kept,
and is retried.
"""

from __future__ import annotations

import math
import re

from arena10k.config import ExperimentConfig, JudgeConfig, OracleConfig
from arena10k.errors import ItemError
from arena10k.providers import get_provider
from arena10k.providers.base import Generation, GenerationRequest

SCALE = 9  # scores are digit / SCALE, in [0, 1]

JUDGE_RUBRIC = (
    "You grade answers written by an AI assistant. Rate how helpful, correct and clear the answer is "
    "for the user's request: 0 means useless, wrong or refusing, 9 means excellent."
)
ORACLE_RUBRIC = (
    "You are an expert reviewer auditing an AI assistant. Check the answer carefully for factual errors, "
    "whether it does what the user asked, and whether it is complete and well written. "
    "Rate it from 0 (fails the request) to 9 (could not be better)."
)


# Worked examples as earlier turns: small models follow the reply format from examples far better
# than from instructions, and every chat API accepts them.
EXAMPLES = (
    ("How many days are in a week?", "A week has seven days.", "9"),
    ("Name a primary color.", "I don't want to talk about colors.", "0"),
    ("Give me a synonym for 'happy'.", "Sad.", "1"),
    ("Write a sentence about the sea.", "The sea is big and blue and has water.", "6"),
)


def _grading_request(prompt: str, response: str) -> str:
    return f"User request:\n{prompt}\n\nAssistant answer:\n{response}\n\nScore (one digit, 0-9):"


def judge_messages(rubric: str, prompt: str, response: str) -> tuple[dict, ...]:
    messages = [{"role": "system", "content": rubric}]
    for example_prompt, example_response, score in EXAMPLES:
        messages.append({"role": "user", "content": _grading_request(example_prompt, example_response)})
        messages.append({"role": "assistant", "content": score})
    messages.append({"role": "user", "content": _grading_request(prompt, response)})
    return tuple(messages)


def digit(token_text: str) -> int | None:
    """The score a token gives: one of the ASCII digits 0-9, spaces around it aside. Not any character Python calls a
    digit: a top alternative "²" (seen from SmolLM2) is no score and int() refuses it."""
    text = token_text.strip()
    return "0123456789".index(text) if len(text) == 1 and text in "0123456789" else None


def score_reply(generation: Generation) -> dict:
    """Scores from a greedy judge reply that carries top log-probs per token."""
    if generation.token_logprobs is None:
        raise ItemError("the judge's reply came without token log-probs, which its scores are read from (the endpoint "
                        "returned none)", retryable=False, raw=generation.text)
    for position, token in enumerate(generation.token_texts):
        greedy = digit(token)
        if greedy is None:
            continue
        probabilities = [0.0] * (SCALE + 1)
        for text, logprob in generation.top_logprobs[position].items():
            value = digit(text)
            if value is not None:
                probabilities[value] += math.exp(logprob)  # " 7" and "7" are the same score
        mass = sum(probabilities)
        mean = sum(p * v / SCALE for v, p in enumerate(probabilities)) / mass
        variance = sum(p * (v / SCALE - mean) ** 2 for v, p in enumerate(probabilities)) / mass
        return {
            "score": greedy / SCALE,
            "score_mean": mean,
            "score_variance": variance,
            "probability_mass": mass,
            "method": "greedy_digit+top_logprobs_distribution",
        }
    raise ItemError("the judge's reply contains no score digit", retryable=True, raw=generation.text)


_STANDALONE_DIGIT = re.compile(r"(?<![0-9])(?<![0-9][.,])[0-9](?![0-9])(?![.,][0-9])")  # not part of 10 or 7.5


def first_digit(text: str) -> int | None:
    """The first digit of a reply that stands alone ("Score: 7" gives 7; "10" and "7.5" are not scores)."""
    found = _STANDALONE_DIGIT.search(text)
    return None if found is None else int(found.group())


def score_samples(greedy_reply: str, sampled_replies: list[str], temperature: float) -> dict:
    """Scores from a greedy reply and replies sampled at `temperature` (method sampled): the mean and variance are
    those of the sampled replies' digits, the probability mass the share of them that gave one."""
    greedy = first_digit(greedy_reply)
    if greedy is None:
        raise ItemError("the judge's reply contains no score digit", retryable=True, raw=greedy_reply)
    values = [v / SCALE for v in map(first_digit, sampled_replies) if v is not None]
    if not values:
        raise ItemError(f"none of the judge's {len(sampled_replies)} sampled replies contains a score digit",
                        retryable=True, raw=" | ".join(sampled_replies))
    mean = sum(values) / len(values)
    return {
        "score": greedy / SCALE,
        "score_mean": mean,
        "score_variance": sum((v - mean) ** 2 for v in values) / len(values),
        "probability_mass": len(values) / len(sampled_replies),
        "method": f"greedy_digit+sampled_digits(n={len(sampled_replies)},T={temperature:g})",
        "sampled_replies": sampled_replies,
    }


# What a judge's score depends on besides its model and prompt; the oracle's slice settings choose items, they
# change no label.
JUDGE_SETTINGS = ("max_tokens", "top_logprobs")
SAMPLED_SETTINGS = ("method", "samples", "temperature")


def scoring_settings(judge: JudgeConfig) -> dict:
    """The sampled method's settings are added only where it is used, so that runs judged before it existed stay valid."""
    settings = {name: getattr(judge, name) for name in JUDGE_SETTINGS}
    return settings if judge.method == "top_logprobs" else settings | {name: getattr(judge, name) for name in SAMPLED_SETTINGS}


def rubric(judge: JudgeConfig) -> str:
    return judge.rubric or (ORACLE_RUBRIC if isinstance(judge, OracleConfig) else JUDGE_RUBRIC)


def calls_per_grading(judge: JudgeConfig) -> int:
    return 1 if judge.method == "top_logprobs" else 1 + judge.samples


def grading_requests(judge: JudgeConfig, prompt: str, response: str) -> tuple[GenerationRequest, ...]:
    """The calls of one grading: a greedy reply, and for the sampled method `samples` replies at its temperature."""
    messages = judge_messages(rubric(judge), prompt, response)
    if judge.method == "top_logprobs":
        return (GenerationRequest(messages, 0, judge.max_tokens, seed=0, top_logprobs=judge.top_logprobs),)
    return (GenerationRequest(messages, 0, judge.max_tokens, seed=0, logprobs=False),
            *(GenerationRequest(messages, judge.temperature, judge.max_tokens, seed, logprobs=False)
              for seed in range(1, judge.samples + 1)))


def scores(judge: JudgeConfig, replies: list[Generation]) -> tuple[str, dict]:
    """The judge's (greedy) reply and its scores, from the replies to grading_requests (ItemError when it holds no score)."""
    if judge.method == "top_logprobs":
        return replies[0].text, score_reply(replies[0])
    return replies[0].text, score_samples(replies[0].text, [reply.text for reply in replies[1:]], judge.temperature)


def grade(config: ExperimentConfig, judge: JudgeConfig, prompt: str, response: str) -> tuple[str, dict]:
    """One grading, online."""
    provider = get_provider(config, judge.model)
    return scores(judge, [provider.generate(request) for request in grading_requests(judge, prompt, response)])

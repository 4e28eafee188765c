"""The certified interval of a log-prob at T <= 1 from temperature-1 top-k alternatives (providers/certified.py), on
random distributions listed as the servers users have list them."""

import math

import numpy as np
import pytest

from arena10k.providers.certified import response_interval, token_interval, truncated

VOCABULARY = 300


def listed(logprobs: np.ndarray, token: int, k: int, style: str) -> tuple[str, dict[str, float]]:
    """(the token's text, the alternatives) as a server of this style lists them."""
    order = np.argsort(-logprobs)[:k]
    if style == "llama-cpp-python":  # keyed by text, tokens 0 and 150 print alike; the less probable overwrites; own last
        text = lambda t: str(t % 150)  # noqa: E731
        alternatives = {text(t): float(logprobs[t]) for t in order}
        alternatives[text(token)] = float(logprobs[token])
        return text(token), alternatives
    alternatives = {str(t): float(logprobs[t]) for t in order}
    if style == "vllm":  # the sampled token beside the top k
        alternatives[str(token)] = float(logprobs[token])
    return str(token), alternatives  # "openai": the top k only


@pytest.mark.parametrize("style", ["llama-cpp-python", "vllm", "openai"])
def test_the_interval_holds_the_exact_log_prob_at_every_temperature_up_to_one(style):
    rng = np.random.default_rng(0)
    for trial in range(600):
        logits = rng.normal(0, rng.choice([1.0, 3.0, 6.0]), VOCABULARY)
        temperature, k = float(rng.choice([0.3, 0.5, 0.7, 0.95, 1.0])), int(rng.choice([1, 5, 20, 100]))
        at_one = logits - np.logaddexp.reduce(logits)
        exact = logits / temperature - np.logaddexp.reduce(logits / temperature)
        token = int(np.argmax(logits)) if trial % 3 == 0 else int(rng.integers(VOCABULARY))
        text, alternatives = listed(at_one, token, k, style)
        interval = token_interval(text, float(at_one[token]), alternatives, k, temperature)
        assert interval.low - 1e-9 <= exact[token] <= interval.high + 1e-9, (trial, style, temperature, k)


def test_the_interval_closes_as_k_grows_and_is_exact_when_everything_is_listed():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, VOCABULARY)
    at_one = logits - np.logaddexp.reduce(logits)
    exact = 2 * logits - np.logaddexp.reduce(2 * logits)
    tokens = [int(t) for t in rng.integers(VOCABULARY, size=30)]
    widths = []
    for k in (5, 20, 100, VOCABULARY):
        alternatives = [listed(at_one, t, k, "vllm")[1] for t in tokens]
        interval = response_interval([str(t) for t in tokens], [float(at_one[t]) for t in tokens], alternatives, k, 0.5)
        assert interval.low - 1e-9 <= sum(exact[tokens]) <= interval.high + 1e-9
        widths.append(interval.width)
    assert widths == sorted(widths, reverse=True) and widths[0] > 0.1 and widths[-1] < 1e-9


def test_a_collision_widens_the_interval_rather_than_break_it():
    # Two tokens print as "a": the less probable one's value is listed, the more probable one is hidden.
    at_one = np.log(np.array([0.5, 0.3, 0.1, 0.05, 0.05]))
    exact = 2 * np.log([0.5, 0.3, 0.1, 0.05, 0.05]) - math.log(sum(p ** 2 for p in (0.5, 0.3, 0.1, 0.05, 0.05)))
    hidden = {"a": float(at_one[2]), "b": float(at_one[1])}  # token 0 ("a") overwritten by token 2 ("a")
    interval = token_interval("b", float(at_one[1]), hidden, 3, 0.5)
    assert interval.low <= exact[1] <= interval.high
    plain = token_interval("b", float(at_one[1]), {"a": float(at_one[0]), "b": float(at_one[1]), "c": float(at_one[2])}, 3, 0.5)
    assert interval.width > plain.width


def test_truncation_lists_what_a_smaller_k_would():
    alternatives = {"x": -0.1, "y": -2.0, "z": -3.0, "w": -5.0}
    assert truncated(alternatives, "w", -5.0, 2) == {"x": -0.1, "y": -2.0, "w": -5.0}
    assert truncated(alternatives, "x", -0.1, 2) == {"x": -0.1, "y": -2.0}


def test_above_temperature_one_there_is_no_interval():
    with pytest.raises(ValueError):
        token_interval("x", -0.1, {"x": -0.1}, 1, 1.3)

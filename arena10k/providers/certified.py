"""Certified log-probs at a temperature T <= 1 from an endpoint that reports only temperature-1 log-probs and the
top-k alternatives at each position (llama-cpp-python's server, vLLM and SGLang by default, Fireworks, Together).

With a = 1/T >= 1, p_T(x) = p_1(x)^a / sum_y p_1(y)^a. The listed tokens give their part S of that sum exactly;
the unlisted ones hold the mass m = 1 - (listed mass), each at most q (the least probable listed top-k token), so
their part lies in [0, q^(a-1) * m] (p^a <= q^(a-1) * p for p <= q). Hence, per token,

    log p_T(x) in [a * lp_x - log(S + U), a * lp_x - log(S)],   U = q^(a-1) * m,

and summed over a response, a certified interval for its log-prob. T > 1 has no useful bound: the unlisted tail
can spread over the whole vocabulary.

What real servers return is handled conservatively, so that the interval stays certified:
- alternatives keyed by token text (llama-cpp-python): tokens that print alike collide, so fewer than k distinct
  top-k tokens are listed and a hidden one may be more probable than q. With h >= 1 hidden, all of the unlisted mass
  could sit in one token, and U = max(q^(a-1) * m, m^a) (p^a is convex, so concentrating the mass maximises it);
- the sampled token among the alternatives or not (vLLM lists it beside the top k; OpenAI-style lists do not):
  it is counted once, matched by text and value;
- listed mass a little over 1 by rounding: m = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SAME_TOKEN_NATS = 1e-4  # an alternative with the token's own text and a log-prob this close is the token itself


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def midpoint(self) -> float:
        return (self.low + self.high) / 2

    def __add__(self, other: Interval) -> Interval:
        return Interval(self.low + other.low, self.high + other.high)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _others(token: str, logprob: float, alternatives: dict[str, float]) -> list[float]:
    """The listed log-probs of tokens other than this one."""
    own = alternatives.get(token)
    listed_itself = own is not None and abs(own - logprob) <= SAME_TOKEN_NATS
    return [lp for text, lp in alternatives.items() if not (listed_itself and text == token)]


def listed_top(token: str, logprob: float, alternatives: dict[str, float]) -> int:
    """How many distinct top-k tokens the alternatives show: the others, and the token itself when it outranks one of
    them (otherwise it may be the one a server appends below the top k)."""
    others = _others(token, logprob, alternatives)
    listed_itself = len(others) < len(alternatives)
    return len(others) + int(listed_itself and bool(others) and logprob > min(others))


def token_interval(token: str, logprob: float, alternatives: dict[str, float], asked: int, temperature: float) -> Interval:
    """The certified interval of one token's log-prob at `temperature` (<= 1), from its temperature-1 `logprob` and
    the `alternatives` the endpoint listed at its position (text -> temperature-1 log-prob; `asked` were asked for)."""
    if not 0 < temperature <= 1:
        raise ValueError(f"a certified interval exists for temperatures in (0, 1] only, not {temperature}")
    a = 1.0 / temperature
    others = _others(token, logprob, alternatives)
    hidden = max(0, asked - listed_top(token, logprob, alternatives))
    least = min(others) if others else logprob  # every unlisted token is at most this probable, bar the hidden ones
    log_s = _logsumexp([a * logprob, *(a * lp for lp in others)])
    unlisted = 1.0 - math.exp(logprob) - sum(math.exp(lp) for lp in others)
    high = a * logprob - log_s
    if unlisted <= 0:
        return Interval(high, high)
    log_u = (a - 1) * least + math.log(unlisted)
    if hidden:
        log_u = max(log_u, a * math.log(unlisted))
    return Interval(a * logprob - _logsumexp([log_s, log_u]), high)


def response_interval(tokens: list[str], logprobs: list[float], alternatives: list[dict[str, float]], asked: int,
                      temperature: float) -> Interval:
    """The certified interval of a sequence's log-prob at `temperature`: the sum of its tokens' intervals."""
    total = Interval(0.0, 0.0)
    for token, logprob, listed in zip(tokens, logprobs, alternatives, strict=True):
        total = total + token_interval(token, logprob, listed, asked, temperature)
    return total


def truncated(alternatives: dict[str, float], token: str, logprob: float, k: int) -> dict[str, float]:
    """About what an endpoint asked for k alternatives would list, from what it listed when asked for more: the k
    most probable, and the token itself (as llama-cpp-python and vLLM add it). For the preflight's choice of k only:
    where texts collided in the longer list, its k most probable distinct texts hide that collision from the
    interval, which a real list of k shows by listing fewer (so the expected width can be a little optimistic)."""
    top = dict(sorted(alternatives.items(), key=lambda item: -item[1])[:k])
    top[token] = logprob
    return top

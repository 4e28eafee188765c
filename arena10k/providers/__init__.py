"""Providers behind one interface (see base.py), created on first use, so a run with nothing left to do
loads no model and makes no call. `check_config` runs at start-up and refuses a config that asks a
provider for something it cannot do, or lacks a key, before any work starts."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from arena10k.config import ExperimentConfig, ModelConfig
from arena10k.errors import ConfigError
from arena10k.models import check_local_model, sequences_decoded_together
from arena10k.providers.base import GENERATE, TEACHER_FORCE, TOP_LOGPROBS, Provider
from arena10k.providers.hosted import HostedProvider, key_fingerprint
from arena10k.providers.local import LocalProvider
from arena10k.ratelimit import RateLimiter

_loaded: dict[str, Provider] = {}
_limiters: dict[tuple, RateLimiter] = {}
_substitute: list[Callable[[ModelConfig], Provider]] = []
_loading = threading.Lock()


def get_provider(config: ExperimentConfig, model_name: str) -> Provider:
    with _loading:  # a stage's threads ask at once; a model is loaded once
        if model_name not in _loaded:
            model = config.models[model_name]
            _loaded[model_name] = _substitute[-1](model) if _substitute else create(model)
        return _loaded[model_name]


def loaded() -> dict[str, Provider]:
    """The providers created so far in this process, by model key (benchmarks read their counters)."""
    return dict(_loaded)


@contextmanager
def substituted(factory: Callable[[ModelConfig], Provider]) -> Iterator[None]:
    """Every model is served by `factory(model)` instead of its provider (tests run stages in-process on a
    fake provider this way). Providers and rate limiters made before or inside are forgotten on both sides."""
    _loaded.clear()
    _limiters.clear()
    _substitute.append(factory)
    try:
        yield
    finally:
        _substitute.pop()
        _loaded.clear()
        _limiters.clear()


def stage_lanes(config: ExperimentConfig, model_names: set[str]) -> dict[str, int]:
    """Calls a stage keeps in flight per model (runner.run_items' lanes): as many as the model serves at once. An
    embedded model computes one call at a time but decodes several responses together (local.py); hosted models
    are bounded by their limiters."""
    return {name: _calls_at_once(config.models[name]) for name in sorted(model_names)}


def _calls_at_once(model: ModelConfig) -> int:
    return model.concurrency if model.provider != "local" else sequences_decoded_together(model.model, model.sequences)


def create(model: ModelConfig) -> Provider:
    """A new provider for `model` (get_provider keeps one per model for the process; a substitute may wrap this)."""
    if model.provider == "local":
        return LocalProvider(model.model, model.n_ctx, model.reuse_prefix, model.sequences)
    api_key = _api_key(model)
    # An SDK is imported when a model uses it: each takes about a second to import.
    if model.provider == "fireworks":
        import fireworks as sdk

        client = sdk.Fireworks(api_key=api_key, base_url=model.base_url, max_retries=0, timeout=model.request_timeout)
    else:
        import openai as sdk

        client = sdk.OpenAI(api_key=api_key, base_url=model.base_url, max_retries=0, timeout=model.request_timeout)
    # One limiter per (provider, endpoint, key, model): models sharing a key still have separate quotas.
    limiter_key = (model.provider, model.base_url, key_fingerprint(api_key), model.model)
    if limiter_key not in _limiters:
        _limiters[limiter_key] = RateLimiter(model.concurrency, model.requests_per_minute, model.tokens_per_minute)
    endpoint = model.base_url or f"{model.provider}'s API"
    return HostedProvider(sdk, client, model.model, _limiters[limiter_key], model.max_retries,
                          model.chat_template, model.end_of_turn, capabilities(model), endpoint, model.outage_seconds)


def _api_key(model: ModelConfig) -> str:
    if not model.api_key_env:
        raise ConfigError(f"Model {model.model} ({model.provider}) needs api_key_env: the environment variable holding its key.")
    key = os.environ.get(model.api_key_env)
    if not key:
        raise ConfigError(f"The environment variable {model.api_key_env} (API key for {model.model}) is not set.")
    return key


def capabilities(model: ModelConfig) -> frozenset[str]:
    if model.provider == "local":
        return frozenset({GENERATE, TEACHER_FORCE, TOP_LOGPROBS})
    # api.openai.com chat models return no prompt log-probs; OpenAI-compatible servers (base_url) and
    # Fireworks serve completions with echo, which teacher forcing needs, given the model's chat template.
    echo = model.provider == "fireworks" or model.base_url is not None
    return frozenset({GENERATE, TOP_LOGPROBS} | ({TEACHER_FORCE} if echo and model.chat_template else set()))


def check_config(config: ExperimentConfig, model_names: set[str] | None = None) -> None:
    """Checks the models that the stages about to run will call (`model_names`, default: every model the
    config uses); a stage that calls no model, such as stage 6, needs no key."""
    model_names = set(config.used_models()) if model_names is None else model_names
    problems = []
    for name, policy in config.policies.items():
        model = config.models[policy.model]
        if policy.model not in model_names:
            continue
        if TEACHER_FORCE not in capabilities(model):
            if model.provider == "openai" and model.base_url is None:
                why = ("OpenAI's chat models return no prompt log-probs, so P0's responses cannot be teacher-forced "
                       "under it; serve the policy from Fireworks or an OpenAI-compatible server (base_url) instead")
            else:
                why = "teacher forcing renders the policy's context with the model's chat_template, and none is configured"
            problems.append(f"policies.{name}: model '{policy.model}' cannot teacher-force: {why}.")
    for name, model in config.used_models().items():
        if model.provider == "local":  # every one, whether called now or by a later stage: it costs nothing
            try:
                check_local_model(model.model)
            except ConfigError as error:
                problems.append(f"models.{name}.model: {error}")
        elif name in model_names:
            try:
                _api_key(model)
            except ConfigError as error:
                problems.append(f"models.{name}: {error}")
    if problems:
        raise ConfigError("The config asks for something its providers cannot do:\n  " + "\n  ".join(problems))

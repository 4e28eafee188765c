"""What a run will take before it starts: calls, tokens, cost and rate-limited time, per stage and model.

No model is called. Input tokens are counted on the real prompts: with a local model's own tokenizer (only
the vocabulary of its GGUF file is loaded), and at CHARS_PER_TOKEN for hosted models, whose tokenizers are
not available offline. Chat templates add about TOKENS_PER_MESSAGE per message (within 3% of SmolLM2's real
prompt lengths). Output tokens are the configured max_tokens, an upper bound, except for responses already
generated, whose lengths are known. Items already done, or that the runner would not try again, are left
out, so on a run in progress this is the estimate of what is left.

The same accounting, applied to the items that were tried, gives the tokens a run used (`usage`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from arena10k import judging
from arena10k.checkpoint import ItemState, load_states
from arena10k.config import ExperimentConfig, JudgeConfig, ModelConfig
from arena10k.preflight import PROBE_MAX_TOKENS, PROBE_TEXT, certify_from_top_k, planned_calls
from arena10k.providers.local import chat_format
from arena10k.records import Prompt
from arena10k.stages import prompts
from arena10k.stages.base import Plan
from arena10k.stages.registry import STAGES
from arena10k.workspace import Workspace, item_key, policy_of

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


@dataclass
class RunEstimate:
    config: ExperimentConfig
    prompts: int
    items: int  # work items of the whole run
    done: int  # of those, already done
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)  # (checkpoint, model key) -> usage
    recomputed: list[str] = field(default_factory=list)  # "checkpoint: policies" that --force recomputes
    # policy -> (k, alternatives listed in all) for policies teacher-forced as certified intervals (the preflight's
    # findings on record): the responses the endpoint returns grow by k entries per token
    alternatives: dict[str, tuple[int, int]] = field(default_factory=dict)


def estimate_run(config: ExperimentConfig, workspace: Workspace, samples: int | str | None = None,
                 recompute: set[tuple[str, str]] = frozenset(), plan: Plan = STAGES) -> RunEstimate:
    """The calls and tokens still needed to finish the run in `workspace` with `samples` prompts
    (default: the prepared prompts, or the config's samples), counting the (checkpoint, policy) units in
    `recompute` as not done."""
    prompts = _prompts(config, workspace, samples)
    keys = plan.expected_keys(config, [p.prompt_id for p in prompts])
    states = {name: load_states(workspace.checkpoint_path(name), drop=LARGE_FIELDS)[0] for name in keys}
    for name, policy in recompute:
        states[name] = {key: state for key, state in states[name].items() if policy_of(key) != policy}
    estimate = RunEstimate(config, len(prompts), items=sum(map(len, keys.values())),
                           done=sum(_done(states[name].get(k)) for name, ks in keys.items() for k in ks),
                           recomputed=[f"{name}: {', '.join(p for p in config.policies if (name, p) in recompute)}"
                                       for name in keys if any((name, p) in recompute for p in config.policies)])
    for model, calls in planned_calls(config, workspace).items():
        estimate.usage.setdefault(("preflight", model), Usage()).add(
            calls, len(PROBE_TEXT) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE, calls * PROBE_MAX_TOKENS)
    accounting = _Accounting(config, {p.prompt_id: p for p in prompts}, states["generate"])
    for name, names_keys in keys.items():
        for key in names_keys:
            if plan.will_run(config, states, name, key):
                accounting.add(estimate.usage, name, key, calls=1, output_known=False)
    for name, policy in config.policies.items():
        top_k = certify_from_top_k(workspace, policy.model, policy.temperature)
        left = [key for key in keys["teacher_force"] if policy_of(key) == name and plan.will_run(config, states, "teacher_force", key)]
        if top_k and left:
            tokens = sum(accounting.response_tokens(item_key(key.partition("|")[0], config.logging_policy)) for key in left)
            estimate.alternatives[name] = (top_k, top_k * tokens)
    return estimate


def usage(config: ExperimentConfig, prompts: list[Prompt], states: dict[str, dict[str, ItemState]], plan: Plan = STAGES
          ) -> dict[tuple[str, str], Usage]:
    """The calls and tokens a run made so far, failed attempts included, from its checkpoints' states."""
    keys = plan.expected_keys(config, [p.prompt_id for p in prompts])
    accounting = _Accounting(config, {p.prompt_id: p for p in prompts}, states["generate"])
    used: dict[tuple[str, str], Usage] = {}
    for name, names_keys in keys.items():
        for key in names_keys:
            state = states[name].get(key)
            if state is not None:
                accounting.add(used, name, key, calls=state.attempts, output_known=_done(state))
    return used


def _prompts(config: ExperimentConfig, workspace: Workspace, samples: int | str | None) -> list[Prompt]:
    """The prompts the run has or will have; preparing them in memory, as stage 1 would, when needed."""
    if workspace.prompts_path.exists():
        prepared = workspace.load_prompts()
        if samples is None or (samples != "all" and int(samples) == len(prepared)):
            return prepared
    return prompts.sample(config, config.samples if samples is None else samples)[0]


def _done(state: ItemState | None) -> bool:
    return state is not None and state.record is not None


class _Accounting:
    """Tokens per work item. Each text is tokenized once per model; a response not generated yet counts at its
    policy's max_tokens, a generated one at its recorded length."""

    def __init__(self, config: ExperimentConfig, prompts: dict[str, Prompt], generated: dict[str, ItemState]):
        self.config = config
        self.prompts = prompts
        self.generated = generated
        self._token_counts: dict[tuple[str, str], int] = {}  # (model, text) -> tokens

    def add(self, usage: dict[tuple[str, str], Usage], name: str, key: str, calls: int, output_known: bool) -> None:
        prompt_id, policy = key.partition("|")[0], policy_of(key)
        if name in ("generate", "teacher_force"):
            settings = self.config.policies[policy]
            context = self._messages(settings.model, settings.messages(self.prompts[prompt_id].prompt))
            if name == "generate":
                output = self.response_tokens(key) if output_known else calls * settings.max_tokens
                usage.setdefault((name, settings.model), Usage()).add(calls, context, output)
            else:  # the logged response is scored, nothing is generated
                base = self.response_tokens(item_key(prompt_id, self.config.logging_policy))
                usage.setdefault((name, settings.model), Usage()).add(calls, context + base, 0)
            return
        judge: JudgeConfig = self.config.judge if name == "judge" else self.config.oracle
        # The response is counted by its recorded length rather than tokenized again: one number per response.
        context = (self._messages(judge.model, judging.judge_messages(judging.rubric(judge), "", ""))
                   + self._tokens(judge.model, self.prompts[prompt_id].prompt) + self.response_tokens(key))
        calls *= judging.calls_per_grading(judge)
        usage.setdefault((name, judge.model), Usage()).add(calls, context * calls, calls * judge.max_tokens)

    def response_tokens(self, key: str) -> int:
        state = self.generated.get(key)
        if state is None or state.record is None or state.record["n_tokens"] is None:
            return self.config.policies[policy_of(key)].max_tokens
        return state.record["n_tokens"] + (state.record["finish_reason"] == "stop")  # the end-of-turn token

    def _messages(self, model: str, messages: tuple[dict, ...]) -> int:
        return sum(self._tokens(model, m["content"]) + TOKENS_PER_MESSAGE for m in messages) + TOKENS_TO_OPEN_REPLY

    def _tokens(self, model: str, text: str) -> int:
        if (model, text) not in self._token_counts:
            self._token_counts[model, text] = token_counter(self.config.models[model])(text)
        return self._token_counts[model, text]


@functools.cache  # a vocabulary is loaded once per process, and lives as long as it
def token_counter(model: ModelConfig) -> Callable[[str], int]:
    if model.provider != "local":
        return lambda text: math.ceil(len(text) / CHARS_PER_TOKEN)
    tokenizer = chat_format(model.model)  # its vocabulary only: no weights, no context
    return lambda text: len(tokenizer.tokenize(text, special=False)) if text else 0


# ---------------------------------------------------------------- text


def describe(estimate: RunEstimate) -> str:
    config = estimate.config
    lines = [f"Estimate for experiment '{config.name}': {estimate.prompts} prompts, {estimate.items} work items, "
             f"{estimate.done} already done."]
    lines += [f"Recomputing (--force) {what}" for what in estimate.recomputed]
    if not estimate.usage:
        return "\n".join(lines + ["Nothing is left to run."])
    lines += [
        "What is left, without calling any model (output tokens: max_tokens per call, an upper bound, "
        "except for responses already generated):",
        "",
        *usage_table(config, estimate.usage),
        "",
        "Time implied by rate limits (stages run one after another; the slowest model of a stage sets its pace): "
        + _minutes(_stage_minutes(config, estimate.usage), none="no rate limits configured"),
        "Input tokens counted with: " + ", ".join(
            sorted({f"{m} ({'its own tokenizer' if config.models[m].provider == 'local' else f'{CHARS_PER_TOKEN} characters per token'})"
                    for _, m in estimate.usage})) + f", plus about {TOKENS_PER_MESSAGE} per chat message.",
    ]
    if estimate.alternatives:
        lines.append("Certified teacher forcing (the preflight found temperature-1 echo log-probs): " + "; ".join(
            f"{policy} asks for top-k={k}, {count:,} alternatives in all" for policy, (k, count) in estimate.alternatives.items())
            + ". No price is configured for alternatives (they are not input or output tokens); where a provider "
            "bills them, add their cost.")
    return "\n".join(lines)


def usage_table(config: ExperimentConfig, usage: dict[tuple[str, str], Usage]) -> list[str]:
    """Calls, tokens, cost and rate-limited time per stage and model, then totals per provider."""
    lines = [f"  {'stage':<20}{'model':<18}{'provider':<11}{'calls':>9}{'input tok':>13}{'output tok':>13}{'USD':>11}  time at rate limits"]
    providers: dict[str, Usage] = {}
    for (name, model), use in usage.items():
        settings = config.models[model]
        providers.setdefault(settings.provider, Usage()).merge(use)
        lines.append(f"  {name:<20}{model:<18}{settings.provider:<11}{use.calls:>9,}{use.input_tokens:>13,}"
                     f"{use.output_tokens:>13,}{use.cost(settings):>11.2f}  {_minutes(rate_limited_minutes(settings, use))}")
    for provider, use in providers.items():
        cost = sum(u.cost(config.models[m]) for (_, m), u in usage.items() if config.models[m].provider == provider)
        lines.append(f"  {'total ' + provider:<49}{use.calls:>9,}{use.input_tokens:>13,}{use.output_tokens:>13,}{cost:>11.2f}")
    return lines


def rate_limited_minutes(model: ModelConfig, use: Usage) -> float | None:
    """The least time the provider's limits allow for these calls; None when no limit is configured."""
    limits = [use.calls / model.requests_per_minute if model.requests_per_minute else None,
              (use.input_tokens + use.output_tokens) / model.tokens_per_minute if model.tokens_per_minute else None]
    known = [m for m in limits if m is not None]
    return max(known) if known else None


def _stage_minutes(config: ExperimentConfig, usage: dict[tuple[str, str], Usage]) -> float | None:
    per_stage: dict[str, list[float]] = {}
    for (name, model), use in usage.items():
        minutes = rate_limited_minutes(config.models[model], use)
        if minutes is not None:
            per_stage.setdefault(name, []).append(minutes)
    return sum(max(m) for m in per_stage.values()) if per_stage else None


def _minutes(minutes: float | None, none: str = "no limit set") -> str:
    if minutes is None:
        return none
    if minutes < 90:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"

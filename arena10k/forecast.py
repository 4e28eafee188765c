"""The forecast of a run (`--estimate`): what it will take, before it starts: calls, tokens, cost and rate-limited time,
per stage and model. (cje's estimates of the policies are stage 7's, analyze.py.)

No model is called. Each checkpoint prices its own items (`CheckpointSpec.cost`, with the token accounting of
tokens.py). Output tokens are the configured max_tokens, an upper bound, except for responses already generated,
whose lengths are known. Items already done, or that the runner would not try again, are left out, so on a run in
progress this is the estimate of what is left.

The same accounting, applied to the items that were tried, gives the tokens a run used (`usage`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from arena10k.checkpoint import ItemState, load_states
from arena10k.config import ExperimentConfig, ModelConfig
from arena10k.preflight import PROBE_MAX_TOKENS, PROBE_TEXT, certify_from_top_k, planned_calls
from arena10k.records import Prompt
from arena10k.stages import prompts
from arena10k.stages.base import CheckpointSpec, Plan, RESPONSES
from arena10k.stages.registry import STAGES
from arena10k.tokens import CHARS_PER_TOKEN, LARGE_FIELDS, TOKENS_PER_MESSAGE, TokenCounts, Usage
from arena10k.workspace import Workspace, item_key, policy_of, prompt_of


@dataclass
class Forecast:
    config: ExperimentConfig
    prompts: int
    items: int  # work items of the whole run
    done: int  # of those, already done
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)  # (checkpoint, model key) -> usage
    recomputed: list[str] = field(default_factory=list)  # "checkpoint: policies" that --force recomputes
    # policy -> (k, alternatives listed in all) for policies teacher-forced as certified intervals (the preflight's
    # findings on record): the responses the endpoint returns grow by k entries per token
    alternatives: dict[str, tuple[int, int]] = field(default_factory=dict)


def forecast(config: ExperimentConfig, workspace: Workspace, samples: int | str | None = None,
                 recompute: set[tuple[str, str]] = frozenset(), plan: Plan = STAGES) -> Forecast:
    """The calls and tokens still needed to finish the run in `workspace` with `samples` prompts
    (default: the prepared prompts, or the config's samples), counting the (checkpoint, policy) units in
    `recompute` as not done."""
    prompts = _prompts(config, workspace, samples)
    keys = plan.expected_keys(config, [p.prompt_id for p in prompts])
    states = {name: load_states(workspace.checkpoint_path(name), drop=LARGE_FIELDS)[0] for name in keys}
    for name, policy in recompute:
        states[name] = {key: state for key, state in states[name].items() if policy_of(key) != policy}
    result = Forecast(config, len(prompts), items=sum(map(len, keys.values())),
                           done=sum(_done(states[name].get(k)) for name, ks in keys.items() for k in ks),
                           recomputed=[f"{name}: {', '.join(p for p in config.policies if (name, p) in recompute)}"
                                       for name in keys if any((name, p) in recompute for p in config.policies)])
    for model, calls in planned_calls(config, workspace).items():
        result.usage.setdefault(("preflight", model), Usage()).add(
            calls, len(PROBE_TEXT) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE, calls * PROBE_MAX_TOKENS)
    counts = TokenCounts(config, {p.prompt_id: p for p in prompts}, states[RESPONSES])
    for name, names_keys in keys.items():
        for key in names_keys:
            if plan.will_run(config, states, name, key):
                _add(result.usage, plan.spec[name], counts, key, calls=1, output_known=False)
    for name, policy in config.policies.items():
        top_k = certify_from_top_k(workspace, policy.model, policy.temperature)
        left = [key for key in keys["teacher_force"] if policy_of(key) == name and plan.will_run(config, states, "teacher_force", key)]
        if top_k and left:
            tokens = sum(counts.response(item_key(prompt_of(key), config.logging_policy)) for key in left)
            result.alternatives[name] = (top_k, top_k * tokens)
    return result


def usage(config: ExperimentConfig, prompts: list[Prompt], states: dict[str, dict[str, ItemState]], plan: Plan = STAGES
          ) -> dict[tuple[str, str], Usage]:
    """The calls and tokens a run made so far, failed attempts included, from its checkpoints' states."""
    keys = plan.expected_keys(config, [p.prompt_id for p in prompts])
    counts = TokenCounts(config, {p.prompt_id: p for p in prompts}, states[RESPONSES])
    used: dict[tuple[str, str], Usage] = {}
    for name, names_keys in keys.items():
        for key in names_keys:
            state = states[name].get(key)
            if state is not None:
                _add(used, plan.spec[name], counts, key, calls=state.attempts, output_known=_done(state))
    return used


def _add(usage: dict[tuple[str, str], Usage], spec: CheckpointSpec, counts: TokenCounts, key: str, calls: int,
         output_known: bool) -> None:
    if spec.cost is not None:
        item = spec.cost(counts, key, calls, output_known)
        usage.setdefault((spec.name, item.model), Usage()).add(item.calls, item.input_tokens_per_call, item.output_tokens)


def _prompts(config: ExperimentConfig, workspace: Workspace, samples: int | str | None) -> list[Prompt]:
    """The prompts the run has or will have; preparing them in memory, as stage 1 would, when needed."""
    if workspace.prompts_path.exists():
        prepared = workspace.load_prompts()
        if samples is None or (samples != "all" and int(samples) == len(prepared)):
            return prepared
    return prompts.sample(config, config.samples if samples is None else samples)[0]


def _done(state: ItemState | None) -> bool:
    return state is not None and state.record is not None


# ---------------------------------------------------------------- text


def describe(result: Forecast, plan: Plan = STAGES) -> str:
    config = result.config
    batchable = plan.batchable
    lines = [f"Estimate for experiment '{config.name}': {result.prompts} prompts, {result.items} work items, "
             f"{result.done} already done."]
    lines += [f"Recomputing (--force) {what}" for what in result.recomputed]
    if not result.usage:
        return "\n".join(lines + ["Nothing is left to run."])
    lines += [
        "What is left, without calling any model (output tokens: max_tokens per call, an upper bound, "
        "except for responses already generated):",
        "",
        *usage_table(config, result.usage, batchable, compare=True),
        "",
        "Time implied by rate limits (stages run one after another; the slowest model of a stage sets its pace): "
        + _minutes(_stage_minutes(config, result.usage), none="no rate limits configured"),
        "With Batch APIs (batch: true, openai provider: OpenAI, Together, DeepInfra; Fireworks' batch jobs are priced, "
        "not sent): generate, judge and oracle each within its batch window, outside the online rate limits, at "
        "batch_price_factor of the online price; teacher forcing and the endpoint checks stay online ("
        + _minutes(_stage_minutes(config, {unit: use for unit, use in result.usage.items()
                                           if not _batched(config.models[unit[1]], unit[0], batchable)}),
                   none="no rate limits configured") + ").",
        "Input tokens counted with: " + ", ".join(
            sorted({f"{m} ({'its own tokenizer' if config.models[m].provider == 'local' else f'{CHARS_PER_TOKEN} characters per token'})"
                    for _, m in result.usage})) + f", plus about {TOKENS_PER_MESSAGE} per chat message.",
    ]
    if result.alternatives:
        lines.append("Certified teacher forcing (the preflight found temperature-1 echo log-probs): " + "; ".join(
            f"{policy} asks for top-k={k}, {count:,} alternatives in all" for policy, (k, count) in result.alternatives.items())
            + ". No price is configured for alternatives (they are not input or output tokens); where a provider "
            "bills them, add their cost.")
    return "\n".join(lines)


def usage_table(config: ExperimentConfig, usage: dict[tuple[str, str], Usage], batchable: frozenset[str], compare: bool
                ) -> list[str]:
    """Calls, tokens and cost per stage and model, then totals per provider. compare (the estimate): each row's cost and
    time online (at the rate limits) and through a Batch API (at the model's batch_price_factor, within its
    batch_window) side by side; otherwise (the report): the cost at the price the calls were made at."""
    header = f"  {'stage':<20}{'model':<18}{'provider':<11}{'calls':>9}{'input tok':>13}{'output tok':>13}"
    lines = [header + (f"{'online USD':>12}  {'online time':<14}{'batch USD':>11}  batch time" if compare
                       else f"{'USD':>11}  time at rate limits")]
    totals: dict[str, tuple[Usage, list[float]]] = {}  # provider -> usage, [online USD, batch USD, USD as made]
    for (name, model), use in usage.items():
        settings = config.models[model]
        batch = _batched(settings, name, batchable)
        online, batched = use.cost(settings), use.cost(settings) * (settings.batch_price_factor if batch else 1)
        total = totals.setdefault(settings.provider, (Usage(), [0.0, 0.0, 0.0]))
        total[0].merge(use)
        total[1][0] += online
        total[1][1] += batched
        made = batched if batch and settings.batch else online  # the price the calls were made at
        total[1][2] += made
        row = f"  {name:<20}{model:<18}{settings.provider:<11}{use.calls:>9,}{use.input_tokens:>13,}{use.output_tokens:>13,}"
        if compare:
            lines.append(row + f"{online:>12.2f}  {_minutes(rate_limited_minutes(settings, use)):<14}"
                         + (f"{batched:>11.2f}  {_batch_time(settings, use)}" if batch else f"{'':>11}  "
                            + ("online only" if settings.provider != "local" else "in-process")))
        else:
            lines.append(row + f"{made:>11.2f}  " + ("batch price" if batch and settings.batch
                                                      else _minutes(rate_limited_minutes(settings, use))))
    for provider, (use, (online, batched, made)) in totals.items():
        row = f"  {'total ' + provider:<49}{use.calls:>9,}{use.input_tokens:>13,}{use.output_tokens:>13,}"
        lines.append(row + (f"{online:>12.2f}  {'':<14}{batched:>11.2f}" if compare else f"{made:>11.2f}"))
    return lines


def _batched(model: ModelConfig, checkpoint: str, batchable: frozenset[str]) -> bool:
    """Whether a Batch API could serve these calls: a hosted model, in a stage whose calls are not echoes."""
    return model.provider != "local" and checkpoint in batchable


def _batch_time(model: ModelConfig, use: Usage) -> str:
    batches = -(-use.calls // model.batch_max_requests)
    text = f"{batches} batch{'es' if batches > 1 else ''} within {model.batch_window}"
    return text + ("" if model.provider == "openai" else " (not sent by arena10k yet)")


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

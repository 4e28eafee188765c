"""Stage 3: the log-probability of every logging-policy response under every policy, in the context and at
the temperature that policy samples with. A target's weight is exp(its log-prob - the logging policy's)."""

from __future__ import annotations

import threading

from arena10k.config import ExperimentConfig
from arena10k.errors import SelfCheckError
from arena10k.providers import get_provider
from arena10k.providers.base import TeacherForceRequest
from arena10k.preflight import ARITHMETIC_NATS_PER_TOKEN, certify_from_top_k
from arena10k.records import Prompt, Response, TeacherForced, to_dict
from arena10k.runner import run_items
from arena10k.stages.base import CheckpointSpec, Stage, StageRun, SyntheticItem
from arena10k.stages.generate import policy_lanes, responses
from arena10k.tokens import Calls, TokenCounts
from arena10k.workspace import item_key, policy_of, prompt_of


EARLY_ROWS = 5  # when the first this many logging-policy rows disagree with their sampled log-probs, the stage stops


def run(job: StageRun) -> str:
    config, workspace = job.config, job.workspace
    prompts = {p.prompt_id: p for p in workspace.load_prompts()}
    keys = CHECKPOINT.keys(config, list(prompts))
    with CHECKPOINT.open(workspace, config) as checkpoint:
        logged = responses(workspace, {_logged_key(config, key) for key in checkpoint.todo(keys, config.max_attempts)})
        self_check = _SelfCheck(stops=not workspace.is_dry_run)  # a dry run's server samples in its own template
        # Per policy, from the preflight's findings (read once, not per item): None where its log-probs are exact.
        top_k = {name: certify_from_top_k(workspace, p.model, p.temperature) for name, p in config.policies.items()}

        def make_work(key: str):
            response = logged.get(_logged_key(config, key))
            if response is None:
                return f"no {config.logging_policy} response"
            name = key.rpartition("|")[2]
            return _work(config, name, prompts[response.prompt_id], response, self_check, top_k[name])

        return run_items("teacher_force", checkpoint, keys, make_work, config.max_attempts,
                         *policy_lanes(config)).describe()


def _logged_key(config: ExperimentConfig, key: str) -> str:
    return item_key(prompt_of(key), config.logging_policy)


class _SelfCheck:
    """Counts the logging-policy rows whose teacher-forced log-prob disagrees with the sampled one, and stops
    the stage when the first EARLY_ROWS compared all do: a systematic error, not a stray row."""

    def __init__(self, stops: bool):
        self._stops = stops
        self._lock = threading.Lock()
        self._compared = self._disagreed = 0

    def record(self, difference: float, tolerance: float) -> None:
        with self._lock:
            self._compared += 1
            self._disagreed += abs(difference) > tolerance
            if self._stops and self._compared == self._disagreed == EARLY_ROWS:
                raise SelfCheckError(
                    f"teacher forcing disagrees with the logging policy's own sampled log-probs on the first {EARLY_ROWS} "
                    f"responses (the last by {difference:+.3f} nats, {tolerance:.2g} allowed): the scoring context, template "
                    "or temperature is not the one the policy samples with. The stage stopped before spending the rest of "
                    "its calls; check models.*.chat_template and end_of_turn, and the preflight's findings.")


def _sampled_logprob(response: Response) -> tuple[float | None, str | None]:
    """The response's log-prob as sampled, comparable with teacher forcing (which scores the end of turn too), or None
    and why not."""
    if response.token_logprobs is None:
        return None, "the endpoint returned no log-probs of the tokens it sampled"
    if response.finish_reason == "stop":
        if response.stop_logprob is None:
            return None, "the endpoint returned no log-prob of the end of turn it sampled"
        return sum(response.token_logprobs) + response.stop_logprob, None
    return sum(response.token_logprobs), None


def _work(config: ExperimentConfig, name: str, prompt: Prompt, logged: Response, self_check: _SelfCheck,
          top_k: int | None):
    policy = config.policies[name]
    ended = logged.finish_reason == "stop"

    # The response's length in the policy's own tokens as sampled, where it shares the logging policy's model (an echo
    # may tokenize a sampled text otherwise); else as teacher forcing scores it.
    sampled_length = logged.n_tokens if policy.model == config.policies[config.logging_policy].model else None

    def work() -> dict:
        request = TeacherForceRequest(
            messages=policy.messages(prompt.prompt), temperature=policy.temperature,
            response_text=logged.text, response_tokenizer=logged.tokenizer, response_token_ids=tuple(logged.token_ids),
            stop_token_id=logged.stop_token_id, ended_turn=ended, certify_from_top_k=top_k,
        )
        result = get_provider(config, policy.model).teacher_force(request)
        sampled, not_compared = _sampled_logprob(logged) if name == config.logging_policy else (None, None)
        difference = tolerance = None
        if sampled is not None:
            exact = config.models[policy.model].provider == "local"  # the embedded models reproduce sampling bit for bit
            difference = result.difference_from(sampled)
            tolerance = 0.0 if exact else ARITHMETIC_NATS_PER_TOKEN * result.n_tokens
            self_check.record(difference, tolerance)
        length = result.n_tokens - ended if sampled_length is None else sampled_length  # less its end of turn
        impossible = zero_probability(config, name, logged, length)
        if impossible:
            return to_dict(TeacherForced(prompt.prompt_id, name, None, result.n_tokens, result.method, difference, tolerance,
                                         not_compared, zero_probability=impossible))
        interval = result.interval
        return to_dict(TeacherForced(prompt.prompt_id, name, result.logprob, result.n_tokens, result.method,
                                     difference, tolerance, not_compared, None if interval is None else interval.low,
                                     None if interval is None else interval.high,
                                     result.top_k, result.temperature_one_logprob))

    return work


def zero_probability(config: ExperimentConfig, name: str, logged: Response, tokens: int) -> str | None:
    """Why policy `name` cannot give the logged response, `tokens` long in its own tokens (without the end of turn),
    by its max_tokens; None where it can. A policy stops after max_tokens tokens without sampling its end of turn: a
    response that ended its turn has fewer tokens than its max_tokens, and one cut by max_tokens exactly as many."""
    cap = config.policies[name].max_tokens
    ended = logged.finish_reason == "stop"
    if ended and tokens >= cap:
        return (f"longer than max_tokens: {tokens} tokens under {name}, whose max_tokens {cap} stops it before it can end "
                "its turn after them")
    if not ended and tokens != cap:
        return (f"cut at another max_tokens: the response was cut by {config.logging_policy}'s max_tokens, at {tokens} "
                f"tokens under {name}, which stops at {cap}: it never gives exactly this cut text")
    return None


def _fingerprint(config: ExperimentConfig, policy: str) -> dict:
    """The scoring policy's settings and the logged responses it scores."""
    scored = {config.logging_policy: config.policy_identity(config.logging_policy), policy: config.policy_identity(policy)}
    return {"seed": config.seed, "policies": scored}


def _cost(counts: TokenCounts, key: str, calls: int, output_known: bool) -> Calls:
    """The logged response is scored in the policy's context: it is input, and nothing is generated."""
    config = counts.config
    policy = config.policies[policy_of(key)]
    logged = counts.response(item_key(prompt_of(key), config.logging_policy))
    return Calls(policy.model, calls, counts.messages(policy.model, policy.messages(counts.prompt(key))) + logged, 0)


def _synthetic(item: SyntheticItem) -> dict:
    """The logging policy's log-prob, and each target's at its shape's distance from it (a clone's is equal)."""
    config = item.config
    base = item.records["teacher_force"].get(item_key(item.prompt.prompt_id, config.logging_policy))
    logprob = -abs(float(item.rng.normal(60, 20))) if base is None else base["logprob"]
    shift, spread, _ = item.shape
    if spread:
        logprob = min(logprob + float(item.rng.normal(shift, spread)), -1e-3)
    return to_dict(TeacherForced(item.prompt.prompt_id, item.policy, logprob, config.policies[config.logging_policy].max_tokens,
                                 "sampled_token_ids"))


CHECKPOINT = CheckpointSpec(
    name="teacher_force",
    policies=lambda config: config.policy_names,
    fingerprint=_fingerprint,
    reads=lambda config, policy: config.logging_policy,
    cost=_cost,
    synthetic=_synthetic,
)
STAGE = Stage("teacher_force", "the log-prob of every logged response under every policy", run, (CHECKPOINT,), ExperimentConfig.policy_models,
              preflighted=True)

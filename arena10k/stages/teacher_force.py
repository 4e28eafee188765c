"""Stage 3: the log-probability of every logging-policy response under every policy, in the context and at
the temperature that policy samples with. A target's weight is exp(its log-prob - the logging policy's)."""

from __future__ import annotations

from arena10k.config import ExperimentConfig
from arena10k.providers import get_provider, stage_concurrency
from arena10k.providers.base import TeacherForceRequest
from arena10k.records import Prompt, Response, TeacherForced, to_dict
from arena10k.runner import run_items
from arena10k.stages.base import CheckpointSpec, Stage
from arena10k.stages.generate import policy_messages, policy_models, responses
from arena10k.workspace import Workspace, item_key


def run(config: ExperimentConfig, workspace: Workspace, samples: int | str | None = None) -> str:
    prompts = {p.prompt_id: p for p in workspace.load_prompts()}
    keys = CHECKPOINT.keys(config, list(prompts))
    with workspace.open_checkpoint(CHECKPOINT, config) as checkpoint:
        logged = responses(workspace, {_logged_key(config, key) for key in checkpoint.todo(keys, config.max_attempts)})

        def make_work(key: str):
            response = logged.get(_logged_key(config, key))
            if response is None:
                return f"no {config.logging_policy} response"
            return _work(config, key.rpartition("|")[2], prompts[response.prompt_id], response)

        return run_items("teacher_force", checkpoint, keys, make_work, config.max_attempts,
                         stage_concurrency(config, policy_models(config))).describe()


def _logged_key(config: ExperimentConfig, key: str) -> str:
    return item_key(key.rpartition("|")[0], config.logging_policy)


def _work(config: ExperimentConfig, name: str, prompt: Prompt, logged: Response):
    policy = config.policies[name]

    def work() -> dict:
        request = TeacherForceRequest(
            messages=policy_messages(policy, prompt.prompt), temperature=policy.temperature,
            response_text=logged.text, response_tokenizer=logged.tokenizer, response_token_ids=tuple(logged.token_ids),
            stop_token_id=logged.stop_token_id, ended_turn=logged.finish_reason == "stop",
        )
        result = get_provider(config, policy.model).teacher_force(request)
        return to_dict(TeacherForced(prompt.prompt_id, name, result.logprob, result.n_tokens, result.method))

    return work


def _fingerprint(config: ExperimentConfig, policy: str) -> dict:
    """The scoring policy's settings and the logged responses it scores."""
    scored = {config.logging_policy: config.policy_identity(config.logging_policy), policy: config.policy_identity(policy)}
    return {"seed": config.seed, "policies": scored}


CHECKPOINT = CheckpointSpec(
    name="teacher_force",
    policies=lambda config: config.policy_names,
    fingerprint=_fingerprint,
    reads=lambda config, policy: config.logging_policy,
)
STAGE = Stage("teacher_force", "the log-prob of every logged response under every policy", run, (CHECKPOINT,), policy_models)

"""The work of stages 1-5. Each stage lists its work items, keyed by prompt and policy, and hands
them to the runner; each stage's fingerprint holds exactly the configuration its results depend on."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import asdict

from arena10k import data, judging
from arena10k.checkpoint import read_records
from arena10k.config import LOGGING_POLICY, TARGET_POLICIES, ExperimentConfig, JudgeConfig, PolicyConfig
from arena10k.providers import get_provider, stage_concurrency
from arena10k.providers.base import GenerationRequest, TeacherForceRequest
from arena10k.records import Judgement, Prompt, Response, TeacherForced, from_dict, to_dict
from arena10k.runner import StageReport, WorkItem, run_items
from arena10k.workspace import Workspace, derive_seed, item_key

log = logging.getLogger("arena10k.stages")

POLICIES = (LOGGING_POLICY, *TARGET_POLICIES)
LANGUAGE_FILTER_VERSION = 1  # bump when arena10k.language changes what it keeps


def policy_messages(policy: PolicyConfig, prompt: str) -> tuple[dict, ...]:
    """The exact context a policy generates in; teacher forcing reuses it."""
    system = () if policy.system_prompt is None else ({"role": "system", "content": policy.system_prompt},)
    return (*system, {"role": "user", "content": prompt})


# ---------------------------------------------------------------- stage 1


def prepare(config: ExperimentConfig, workspace: Workspace, samples: int | str) -> tuple[list[Prompt], dict | None]:
    """Returns the prompts and the filter report, or None as report when the prompts were already prepared."""
    fingerprint = {"dataset": config.dataset, "seed": config.seed, "language_filter": LANGUAGE_FILTER_VERSION}
    if workspace.check_prepare_fingerprint(fingerprint):
        prompts = workspace.load_prompts()
        if samples != "all" and len(prompts) == int(samples):
            return prompts, None
    prompts, report = data.prepare_prompts(data.load_conversations(config.dataset), samples, config.seed)
    report_dict = {"dataset": config.dataset, "samples": samples, "seed": config.seed, **asdict(report)}
    workspace.save_prompts(prompts, report_dict, fingerprint)
    return prompts, report_dict


# ---------------------------------------------------------------- stage 2


def _generation_fingerprint(config: ExperimentConfig) -> dict:
    return {
        "seed": config.seed,
        "policies": {name: {**p.model_dump(), "model": config.models[p.model].model_dump()} for name, p in config.policies.items()},
    }


def generate(config: ExperimentConfig, workspace: Workspace) -> StageReport:
    prompts = workspace.load_prompts()
    items: list[WorkItem] = []
    for prompt in prompts:
        for name in POLICIES:
            items.append((item_key(prompt.prompt_id, name), _generation_work(config, name, prompt)))
    parallel = stage_concurrency(config, {p.model for p in config.policies.values()})
    with workspace.open_checkpoint("generate", "generate", _generation_fingerprint(config)) as checkpoint:
        return run_items("generate", checkpoint, items, config.max_attempts, concurrency=parallel)


def _generation_work(config: ExperimentConfig, name: str, prompt: Prompt):
    policy = config.policies[name]

    def work() -> dict:
        seed = derive_seed(config.seed, "generate", name, prompt.prompt_id)
        request = GenerationRequest(policy_messages(policy, prompt.prompt), policy.temperature, policy.max_tokens, seed)
        result = get_provider(config, policy.model).generate(request)
        return to_dict(Response(
            prompt_id=prompt.prompt_id, policy=name, text=result.text, finish_reason=result.finish_reason,
            n_tokens=len(result.token_ids), model=config.models[policy.model].model, temperature=policy.temperature,
            top_p=policy.top_p, max_tokens=policy.max_tokens, seed=seed, tokenizer=result.tokenizer,
            token_ids=result.token_ids, token_logprobs=result.token_logprobs, stop_token_id=result.stop_token_id,
            stop_logprob=result.stop_logprob,
        ))

    return work


def responses(workspace: Workspace) -> dict[str, Response]:
    return {key: from_dict(Response, r) for key, r in read_records(workspace.checkpoint_path("generate")).items()}


# ---------------------------------------------------------------- stage 3


def teacher_force(config: ExperimentConfig, workspace: Workspace) -> StageReport:
    prompts = workspace.load_prompts()
    generated = responses(workspace)
    items: list[WorkItem] = []
    blocked: Counter = Counter()
    for prompt in prompts:
        base = generated.get(item_key(prompt.prompt_id, LOGGING_POLICY))
        for name in POLICIES:
            if base is None:
                blocked["no P0 response"] += 1
            else:
                items.append((item_key(prompt.prompt_id, name), _teacher_force_work(config, name, prompt, base)))
    fingerprint = {"generation": _generation_fingerprint(config)}
    parallel = stage_concurrency(config, {p.model for p in config.policies.values()})
    with workspace.open_checkpoint("teacher_force", "teacher_force", fingerprint) as checkpoint:
        return run_items("teacher_force", checkpoint, items, config.max_attempts, blocked, parallel)


def _teacher_force_work(config: ExperimentConfig, name: str, prompt: Prompt, base: Response):
    policy = config.policies[name]

    def work() -> dict:
        request = TeacherForceRequest(
            messages=policy_messages(policy, prompt.prompt), temperature=policy.temperature,
            response_text=base.text, response_tokenizer=base.tokenizer, response_token_ids=tuple(base.token_ids),
            stop_token_id=base.stop_token_id, ended_turn=base.finish_reason == "stop",
        )
        result = get_provider(config, policy.model).teacher_force(request)
        return to_dict(TeacherForced(prompt.prompt_id, name, result.logprob, result.n_tokens, result.method))

    return work


# ---------------------------------------------------------------- stages 4 and 5


def _judge_fingerprint(config: ExperimentConfig, judge: JudgeConfig, rubric: str) -> dict:
    prompt_digest = hashlib.sha256(repr(judging.judge_messages(rubric, "{prompt}", "{response}")).encode()).hexdigest()[:16]
    return {
        "generation": _generation_fingerprint(config),
        "judge": {**judge.model_dump(), "model": config.models[judge.model].model_dump()},
        "judge_prompt": prompt_digest,
    }


def _judge_items(config: ExperimentConfig, judge: JudgeConfig, rubric: str, keys: list[str],
                 generated: dict[str, Response], prompts: dict[str, Prompt]) -> tuple[list[WorkItem], Counter]:
    items: list[WorkItem] = []
    blocked: Counter = Counter()
    for key in keys:
        response = generated.get(key)
        if response is None:
            blocked["no response"] += 1
        else:
            items.append((key, _judge_work(config, judge, rubric, prompts[response.prompt_id], response)))
    return items, blocked


def _judge_work(config: ExperimentConfig, judge: JudgeConfig, rubric: str, prompt: Prompt, response: Response):
    def work() -> dict:
        messages = judging.judge_messages(rubric, prompt.prompt, response.text)
        request = GenerationRequest(messages, temperature=0, max_tokens=judge.max_tokens, seed=0, top_logprobs=judge.top_logprobs)
        reply = get_provider(config, judge.model).generate(request)
        scores = judging.score_reply(reply)
        return to_dict(Judgement(prompt.prompt_id, response.policy, config.models[judge.model].model, reply.text, **scores))

    return work


def judge(config: ExperimentConfig, workspace: Workspace) -> StageReport:
    prompts = {p.prompt_id: p for p in workspace.load_prompts()}
    keys = [item_key(pid, name) for pid in prompts for name in POLICIES]
    items, blocked = _judge_items(config, config.judge, judging.JUDGE_RUBRIC, keys, responses(workspace), prompts)
    fingerprint = _judge_fingerprint(config, config.judge, judging.JUDGE_RUBRIC)
    with workspace.open_checkpoint("judge", "judge", fingerprint) as checkpoint:
        return run_items("judge", checkpoint, items, config.max_attempts, blocked, stage_concurrency(config, {config.judge.model}))


def oracle_slice(prompt_ids: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded share of prompts. Ranking by a per-prompt hash keeps a prompt's membership stable
    when the experiment grows, and makes the slice independent of prompt order."""
    ranked = sorted(prompt_ids, key=lambda pid: derive_seed(seed, "oracle", pid))
    return sorted(ranked[: round(fraction * len(ranked))])


def oracle(config: ExperimentConfig, workspace: Workspace) -> list[StageReport]:
    """Calibration labels on P0 responses and validation labels on target responses, separate checkpoints."""
    prompts = {p.prompt_id: p for p in workspace.load_prompts()}
    generated = responses(workspace)
    settings = config.oracle
    slices = {
        "oracle_calibration": [
            item_key(pid, LOGGING_POLICY) for pid in oracle_slice(list(prompts), settings.calibration_fraction, settings.calibration_seed)
        ],
        "oracle_validation": [
            item_key(pid, name)
            for pid in oracle_slice(list(prompts), settings.validation_fraction, settings.validation_seed)
            for name in TARGET_POLICIES
        ],
    }
    reports = []
    for name, keys in slices.items():
        items, blocked = _judge_items(config, settings, judging.ORACLE_RUBRIC, keys, generated, prompts)
        fingerprint = _judge_fingerprint(config, settings, judging.ORACLE_RUBRIC)
        with workspace.open_checkpoint(name, "oracle", fingerprint) as checkpoint:
            reports.append(run_items(name, checkpoint, items, config.max_attempts, blocked,
                                     stage_concurrency(config, {settings.model})))
    return reports

"""Stage 1: a seeded sample of unique English first-turn prompts from ChatBot Arena conversations."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict

from arena10k import data
from arena10k.config import ExperimentConfig
from arena10k.providers.local import chat_format  # loads llama-cpp-python only when called
from arena10k.records import Prompt
from arena10k.stages.base import Stage, StageRun
from arena10k.workspace import Workspace

LANGUAGE_FILTER_VERSION = 1  # bump when arena10k.language changes what it keeps


def run(job: StageRun) -> str:
    """`samples` is the N given on the command line; without one, the run keeps the size it was prepared with
    (the config's `samples` only sizes a new run), so that a resume never resizes a run by accident."""
    config, workspace, samples = job.config, job.workspace, job.samples
    started = time.monotonic()
    prepared = workspace.prepared_samples()
    samples = samples if samples is not None else prepared if prepared is not None else config.samples
    fingerprint = {"dataset": config.dataset, "seed": config.seed, "language_filter": LANGUAGE_FILTER_VERSION}
    if workspace.check_prepare_fingerprint(fingerprint) and samples == prepared:
        return f"prepare: {len(workspace.load_prompts())} prompts already prepared in {workspace.prompts_path}"
    prompts, report = sample(config, samples)
    report_dict = {"dataset": config.dataset, "samples": samples, "seed": config.seed, **asdict(report)}
    resized = "" if prepared is None else (
        f"; the run {'grows' if len(prompts) > _count(workspace) else 'shrinks'} from {_count(workspace)} to "
        f"{len(prompts)} prompts (every finished item of the prompts it keeps is reused)")
    workspace.save_prompts(prompts, report_dict, fingerprint, samples)
    counts = ", ".join(f"{k} {report_dict[k]}" for k in ("rows", "empty", "duplicate", "no_letters", "non_english", "too_long", "sampled_out", "kept"))
    return f"prepare: {counts} -> {workspace.prompts_path} ({time.monotonic() - started:.1f}s){resized}"


# Chat-template markup and default system prompts are a few dozen tokens; a prompt of fewer bytes than its policy's room
# less this many cannot be too long (a token is at least one byte), so only longer ones are tokenized.
TEMPLATE_ALLOWANCE = 1024


def too_long_for_context(config: ExperimentConfig) -> Callable[[str], bool]:
    """Whether a prompt, in an embedded policy's context, leaves fewer tokens than its max_tokens in the model's n_ctx:
    its generation could only fail. Hosted models' tokenizers are not known here; there the first refusal is final."""
    local = [(policy, config.models[policy.model]) for policy in config.policies.values()
             if config.models[policy.model].provider == "local"]
    formats = functools.cache(chat_format)

    def too_long(text: str) -> bool:
        return any(len(text.encode()) + len((policy.system_prompt or "").encode()) + policy.max_tokens + TEMPLATE_ALLOWANCE
                   > model.n_ctx and len(formats(model.model).prompt_ids(policy.messages(text))) + policy.max_tokens
                   > model.n_ctx for policy, model in local)

    return too_long


def sample(config: ExperimentConfig, samples: int | str) -> tuple[list[Prompt], data.FilterReport]:
    """The prompts stage 1 prepares for `samples`, and what it filtered (the estimate prepares them the same way)."""
    return data.prepare_prompts(data.load_conversations(config.dataset), samples, config.seed, config.dataset,
                                too_long_for_context(config))


def _count(workspace: Workspace) -> int:
    return len(workspace.prompts_path.read_text().splitlines()) if workspace.prompts_path.exists() else 0


STAGE = Stage("prepare", "sample unique English first-turn prompts", run)

"""Stage 1: a seeded sample of unique English first-turn prompts from ChatBot Arena conversations."""

from __future__ import annotations

import time
from dataclasses import asdict

from arena10k import data
from arena10k.config import ExperimentConfig
from arena10k.stages.base import Stage
from arena10k.workspace import Workspace

LANGUAGE_FILTER_VERSION = 1  # bump when arena10k.language changes what it keeps


def run(config: ExperimentConfig, workspace: Workspace, samples: int | str | None = None) -> str:
    started = time.monotonic()
    samples = config.samples if samples is None else samples
    fingerprint = {"dataset": config.dataset, "seed": config.seed, "language_filter": LANGUAGE_FILTER_VERSION}
    if workspace.check_prepare_fingerprint(fingerprint):
        prompts = workspace.load_prompts()
        if samples != "all" and len(prompts) == int(samples):
            return f"prepare: {len(prompts)} prompts already prepared in {workspace.prompts_path}"
    prompts, report = data.prepare_prompts(data.load_conversations(config.dataset), samples, config.seed)
    report_dict = {"dataset": config.dataset, "samples": samples, "seed": config.seed, **asdict(report)}
    workspace.save_prompts(prompts, report_dict, fingerprint)
    counts = ", ".join(f"{k} {report_dict[k]}" for k in ("rows", "empty", "duplicate", "non_english", "sampled_out", "kept"))
    return f"prepare: {counts} -> {workspace.prompts_path} ({time.monotonic() - started:.1f}s)"


STAGE = Stage("prepare", "sample unique English first-turn prompts", run)

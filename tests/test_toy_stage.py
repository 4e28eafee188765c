"""A stage added to the plan and described in one place, with no other file changed: the runner runs it, and the
estimate, status, the synthetic run writer, `--force`, coverage and the report's usage handle it from its
description alone."""

import yaml
from conftest import OWN_CONFIG

from arena10k import forecast, pipeline, providers, status
from arena10k.config import load_config
from arena10k.providers.base import GenerationRequest
from arena10k.records import Prompt
from arena10k.runner import run_items
from arena10k.stages import phase2
from arena10k.stages.base import CheckpointSpec, Plan, Stage, StageRun, SyntheticItem
from arena10k.stages.generate import responses
from arena10k.stages.registry import STAGES
from arena10k.testing import synthetic_run
from arena10k.testing.fake_provider import FakeModels
from arena10k.tokens import Calls, TokenCounts
from arena10k.workspace import Workspace

SUMMARY_TOKENS = 7


def _fingerprint(config, policy):
    return {**config.responses_fingerprint(policy), "summariser": config.models[config.judge.model].model_dump()}


def _cost(counts: TokenCounts, key: str, calls: int, output_known: bool) -> Calls:
    return Calls(counts.config.judge.model, calls, counts.response(key), calls * SUMMARY_TOKENS)


def _synthetic(item: SyntheticItem) -> dict:
    return {"prompt_id": item.prompt.prompt_id, "policy": item.policy, "summary": " ".join(item.rng.choice(item.words, 3))}


def _run(job: StageRun) -> str:
    """A one-line summary of every response, by the judge's model."""
    config, workspace = job.config, job.workspace
    prompts: dict[str, Prompt] = {p.prompt_id: p for p in workspace.load_prompts()}
    keys = SUMMARY.keys(config, list(prompts))
    with SUMMARY.open(workspace, config) as checkpoint:
        generated = responses(workspace, set(checkpoint.todo(keys, config.max_attempts)))

        def make_work(key):
            def work():
                request = GenerationRequest(({"role": "user", "content": "Summarise: " + generated[key].text},), 0.7,
                                            SUMMARY_TOKENS, seed=0, logprobs=False)
                reply = providers.get_provider(config, config.judge.model).generate(request)
                return {"prompt_id": generated[key].prompt_id, "policy": generated[key].policy, "summary": reply.text}

            return work

        return run_items("summary", checkpoint, keys, make_work, config.max_attempts,
                         providers.stage_lanes(config, {config.judge.model}), lambda key: config.judge.model).describe()


SUMMARY = CheckpointSpec(name="summary", policies=lambda config: config.policy_names, fingerprint=_fingerprint,
                         reads=lambda config, policy: policy, cost=_cost, synthetic=_synthetic)
TOY = Stage("summary", "a one-line summary of every response", _run, (SUMMARY,), lambda config: {config.judge.model})
# Before stage 6, whose coverage then counts it.
PLAN = Plan((*STAGES.stages[:5], TOY, *STAGES.stages[5:]))


def test_the_runner_runs_a_new_stage_and_force_recomputes_it(tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(OWN_CONFIG.read_text())
    config = load_config(config_path)
    arguments = ["4", "--config", str(config_path), "--data-dir", str(tmp_path / "run")]
    fake = FakeModels()
    with providers.substituted(fake):
        assert pipeline.main(arguments, plan=PLAN) == 0
        summaries = [call for call in fake.calls if call.messages[0]["content"].startswith("Summarise: ")]
        assert len(summaries) == 4 * len(config.policies)
        info = phase2.dataset_info(Workspace(tmp_path / "run"))
        assert info["coverage"]["summary"] == {"expected": 4 * len(config.policies), "done": 4 * len(config.policies),
                                               "failed": {}, "missing": 0}
        assert "summary" in pipeline.run_parser("", plan=PLAN).format_help()
        fake.calls.clear()
        assert pipeline.main([*arguments, "--force", f"generate:{config.logging_policy}"], plan=PLAN) == 0
    output = capsys.readouterr().out
    # Recomputing the logging policy's responses recomputes the summary of them, and nothing of the other policies'.
    assert f"recomputing summary: {config.logging_policy} (4 finished items dropped)" in output
    assert len([c for c in fake.calls if c.messages[0]["content"].startswith("Summarise: ")]) == 4
    items = 4 * len(config.policies)
    assert f"| summary | {items} | {items} | 0 | 0 |" in (tmp_path / "run" / "phase2" / "report.md").read_text()


def test_estimate_status_force_and_the_synthetic_run_handle_a_new_stage(tmp_path):
    config = load_config(OWN_CONFIG)
    raw = yaml.safe_load(OWN_CONFIG.read_text())
    written = synthetic_run.write_run(tmp_path, config, 6, settled={"summary": 0.5}, plan=PLAN)
    assert written["summary"].done == 3 * len(config.policies)
    workspace = Workspace(tmp_path)

    left = forecast.forecast(config, workspace, plan=PLAN)
    summary = left.usage[("summary", raw["judge"]["model"])]
    assert (summary.calls, summary.output_tokens) == (3 * len(config.policies), 3 * len(config.policies) * SUMMARY_TOKENS)
    assert "summary" in forecast.describe(left)

    lines = status.describe(status.collect(workspace, config, plan=PLAN))
    assert any(line.strip().startswith("summary") and f"{3 * len(config.policies)}/{6 * len(config.policies)}" in line
               for line in lines.splitlines()), lines

    assert PLAN.forced_units(config, ["summary"]) == {("summary", p) for p in config.policy_names}
    assert ("summary", config.logging_policy) in PLAN.forced_units(config, [f"generate:{config.logging_policy}"])
    assert "summary" not in {name for name, _ in STAGES.forced_units(config, ["generate"])}

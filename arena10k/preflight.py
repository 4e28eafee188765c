"""Is an endpoint's teacher forcing usable? Measured with a few calls per hosted model before any paid call of
the run, because servers break log-probs silently: echo log-probs at temperature 1 whatever the request asks
(vLLM's and SGLang's default), a continuation generated after the echo, a chat template one newline off from
the server's so that the scoring context is not the sampling context.

Per hosted model that serves a policy, and per temperature its policies sample at:
- echo: the completions endpoint returns log-probs of the text sent, token by token, and they spell it;
- determinism: the same text scored twice; the largest difference is the endpoint's noise;
- sampling vs echo: a continuation sampled on the completions endpoint after the configured template, its
  log-probs as sampled and as echoed; servers that decode one token at a time but echo a text in one batch
  (llama-cpp-python's) differ by their rounding, which widens the tolerance of the context check below, and a
  larger difference means the echo does not score the tokens it returns;
- temperature: the same text scored at 1 and at each policy temperature; identical log-probs mean the endpoint
  reports temperature-1 log-probs. A policy sampling at T > 1 cannot get valid weights from it (refused); one at
  T < 1 is teacher-forced as a certified interval from the top-k alternatives (providers/certified.py), with k the
  smallest whose width, measured on a probe response, meets max_certified_width, up to the endpoint's cap of
  alternatives per token (measured too);
- context: a short response sampled under each policy with its token log-probs, then teacher-forced with the
  configured chat_template; the two must agree within the noise, or the template (or the tokenization
  boundary) is not the server's;
- template: on a deterministic endpoint, the greedy continuations of a few probe prompts through the chat endpoint
  and through the completions endpoint with the configured template must be the same text. Rounding cannot hide a
  template error from this check (a one-newline error moved a 12-token response by 0.4 nats on llama-cpp-python's
  server, inside the context check's tolerance there).
Model entries that name the same server (endpoint, model, chat template, end of turn) are measured once, for the
policies of them all. The findings are kept in the run directory (`preflight.json`), per model entry, and reused
while the endpoint and the settings they were measured for are unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from arena10k.checkpoint import dumps, write_atomic
from arena10k.config import ExperimentConfig, JudgeConfig
from arena10k import judging
from arena10k.errors import ConfigError, ItemError
from arena10k.providers import get_provider
from arena10k.providers.base import GenerationRequest, TeacherForceRequest
from arena10k.providers.certified import listed_top, response_interval, truncated
from arena10k.workspace import Workspace

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. Water boils at 100 degrees Celsius at sea level."
PROBE_PROMPT = "Name three colors of the rainbow."
PROBE_ANSWER = "Red, orange and yellow."  # for the judges' probe grading
PROBE_MAX_TOKENS = 12
SAME = 1e-9  # log-probs closer than this are the same number
ARITHMETIC_NATS_PER_TOKEN = 0.1  # sampled and echoed log-probs of a token differ by rounding (seen: 0.014), never by more
# Alternatives per token asked for, largest first, to find an endpoint's cap (vLLM refuses more than --max-logprobs,
# 20 by default; OpenAI-style APIs cap at 5 or 20; llama-cpp-python's server has none), and the k the run may use.
TOP_K_LADDER = (1000, 500, 200, 100, 50, 20, 10, 5, 1)
GREEDY_PROMPTS = ("Name three colors of the rainbow.", "What is the capital of France?", "Write one sentence about cats.")
GREEDY_MAX_TOKENS = 16
# What findings mean changes with arena10k's checks; findings made by an older preflight are measured again.
CHECKS_VERSION = 2


@dataclass(frozen=True)
class Finding:
    model: str  # key of `models`
    check: str  # echo, determinism, temperature T, context <policy>
    verdict: str  # ok, refused, unchecked
    detail: str
    value: float | None = None  # the measured number, where there is one (determinism: nats per token)
    top_k: int | None = None  # temperature "rescaled": the alternatives per token its policies are teacher-forced with


def hosted_policy_models(config: ExperimentConfig) -> list[str]:
    return sorted({p.model for p in config.policies.values() if config.models[p.model].provider != "local"})


def _served(config: ExperimentConfig, model: str) -> dict:
    """What the server a model entry names computes with: entries alike in it (a model served once, named twice) are
    measured once."""
    settings = config.models[model]
    return {"endpoint": settings.endpoint(), "model": settings.model, "chat_template": settings.chat_template,
            "end_of_turn": settings.end_of_turn}


def _identity(config: ExperimentConfig, model: str) -> dict:
    """What the findings for a model depend on; a port is not part of it (a server that moved is the same)."""
    return {"checks": CHECKS_VERSION, **_served(config, model), "max_certified_width": config.max_certified_width,
            "policies": {n: config.policy_identity(n) for n, p in config.policies.items() if p.model == model}}


def hosted_judges(config: ExperimentConfig) -> dict[str, JudgeConfig]:
    """The judge and the (enabled) oracle, by role, where a hosted model serves them."""
    roles = {"judge": config.judge, **({"oracle": config.oracle} if config.oracle.enabled else {})}
    return {role: judge for role, judge in roles.items() if config.models[judge.model].provider != "local"}


def models_probed(config: ExperimentConfig) -> set[str]:
    return set(hosted_policy_models(config)) | {judge.model for judge in hosted_judges(config).values()}


def _judge_identity(config: ExperimentConfig, judge: JudgeConfig) -> dict:

    return {"endpoint": config.models[judge.model].endpoint(), "model": config.models[judge.model].model,
            "judge": judging.scoring_settings(judge), "rubric": judging.rubric(judge)}


def _judge_key(role: str, judge: JudgeConfig) -> str:
    return f"{role}:{judge.model}"


def _stored(workspace: Workspace) -> dict:
    """The findings on record in the run directory, by probe key."""
    path = workspace.root / "preflight.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _on_record(stored: dict, key: str, identity: dict) -> bool:
    return key in stored and stored[key]["identity"] == json.loads(dumps(identity))


def _unmeasured_servers(config: ExperimentConfig, stored: dict) -> list[tuple[str, ...]]:
    """The model entries that serve policies and have no findings on record for their settings, grouped by the server
    they name."""
    groups: dict[str, list[str]] = {}
    for model in hosted_policy_models(config):
        if not _on_record(stored, model, _identity(config, model)):
            groups.setdefault(json.dumps(_served(config, model), sort_keys=True), []).append(model)
    return [tuple(models) for models in groups.values()]


def check_endpoints(config: ExperimentConfig, workspace: Workspace) -> list[Finding]:
    """Runs the checks not already on record for these settings; refuses (ConfigError) when one fails."""
    path = workspace.root / "preflight.json"
    stored = _stored(workspace)
    for models in _unmeasured_servers(config, stored):
        for model, found in _measure(config, models, workspace.is_dry_run).items():
            stored[model] = {"identity": _identity(config, model), "findings": [asdict(f) for f in found]}
        write_atomic(path, dumps(stored) + "\n")
    for role, judge in hosted_judges(config).items():
        key, identity = _judge_key(role, judge), _judge_identity(config, judge)
        if not _on_record(stored, key, identity):
            stored[key] = {"identity": identity, "findings": [asdict(f) for f in _probe_judge(config, role, judge)]}
            write_atomic(path, dumps(stored) + "\n")
    keys = hosted_policy_models(config) + [_judge_key(role, judge) for role, judge in hosted_judges(config).items()]
    findings = [Finding(**f) for key in keys for f in stored[key]["findings"]]
    refused = [f for f in findings if f.verdict == "refused"]
    if refused:
        raise ConfigError("The preflight found endpoints whose log-probs cannot give valid importance weights; "
                          "nothing was generated:\n  " + "\n  ".join(f"models.{f.model} ({f.check}): {f.detail}" for f in refused)
                          + f"\nAll findings: {path}")
    return findings


def planned_calls(config: ExperimentConfig, workspace: Workspace) -> dict[str, int]:
    """The calls the next preflight makes, per model (a server two entries name under the first), for the checks not
    on record, at most (as _measure and _probe_judge make them): two echoes of the probe, one per other temperature, a
    sampled continuation and its two echoes, the cap of alternatives (one echo per rung of TOP_K_LADDER) and a probe
    response's alternatives per temperature below 1 (where the echo turns out to be at temperature 1), per system
    prompt and temperature a probe response, an echo that clears the server's cache and the probe's teacher forcing,
    and per system prompt and template probe prompt two greedy continuations, each after an echo that clears the cache
    (not in a dry run); and one grading per hosted judge."""
    stored = _stored(workspace)
    calls: dict[str, int] = {}
    for models in _unmeasured_servers(config, stored):
        policies = [p for p in config.policies.values() if p.model in models]
        temperatures = {p.temperature for p in policies} - {1.0}
        below = {t for t in temperatures if t < 1}
        certified = len(TOP_K_LADDER) + len(below) if below else 0
        contexts = 0 if workspace.is_dry_run else len({p.system_prompt for p in policies})
        samplings = len({(p.system_prompt, p.temperature) for p in policies})
        calls[models[0]] = 2 + len(temperatures) + 3 + certified + 3 * samplings + 4 * len(GREEDY_PROMPTS) * contexts
    for role, judge in hosted_judges(config).items():
        if not _on_record(stored, _judge_key(role, judge), _judge_identity(config, judge)):
            calls[judge.model] = calls.get(judge.model, 0) + judging.calls_per_grading(judge)
    return calls


def certify_from_top_k(workspace: Workspace, model: str, temperature: float) -> int | None:
    """The alternatives per token a policy at `temperature` on this model is teacher-forced with, where the preflight
    found that the endpoint reports temperature-1 log-probs only; None where its log-probs are exact."""
    findings = _stored(workspace).get(model, {}).get("findings", [])
    return next((f.get("top_k") for f in findings
                 if f["check"] == f"temperature {temperature:g}" and f["verdict"] == "rescaled"), None)


def measured_noise(workspace: Workspace, model: str) -> float:
    """The per-token noise the preflight measured for a model's endpoint; 0 where none was measured."""
    findings = _stored(workspace).get(model, {}).get("findings", [])
    values = [f.get("value") for f in findings if f["check"] == "determinism"]
    return float(values[0]) if values and values[0] is not None else 0.0


def describe(findings: list[Finding]) -> str:
    model, check, verdict = (max(len(v) for v in [title, *values]) + 2 for title, values in
                             (("model", [f.model for f in findings]), ("check", [f.check for f in findings]),
                              ("verdict", [f.verdict for f in findings])))
    lines = ["Preflight of the endpoints that teacher-force", f"  {'model':<{model}}{'check':<{check}}{'verdict':<{verdict}}detail"]
    lines += [f"  {f.model:<{model}}{f.check:<{check}}{f.verdict:<{verdict}}{f.detail}" for f in findings]
    return "\n".join(lines)


def _measure(config: ExperimentConfig, models: tuple[str, ...], dry_run: bool) -> dict[str, list[Finding]]:
    """The findings for model entries that name one server, by entry: the server is measured once, for the policies
    of them all; each entry gets the findings about the server and those about its own temperatures and policies."""
    model = models[0]
    provider = get_provider(config, model)
    try:
        base = provider.score_text(PROBE_TEXT, 1.0)
    except ItemError as error:
        return {m: [Finding(m, "echo", "refused", f"{error}; teacher forcing needs the text's log-probs echoed. Serve the "
                            "model where /v1/completions echoes prompt log-probs (echo with logprobs): vLLM, SGLang, "
                            "llama-cpp-python's server and Fireworks do; OpenAI's API and llama.cpp's llama-server do not "
                            "(README, 'Any temperature')")] for m in models}
    findings = [Finding(model, "echo", "ok", f"{len(base)} token log-probs for the {len(PROBE_TEXT)}-character probe")]
    again = provider.score_text(PROBE_TEXT, 1.0)
    noise = max((abs(a - b) for a, b in zip(base, again)), default=0.0) if len(again) == len(base) else float("inf")
    findings.append(Finding(model, "determinism", "ok" if noise <= ARITHMETIC_NATS_PER_TOKEN else "refused",
                            f"the same text scored twice differs by at most {noise:.2e} nats per token"
                            + ("" if noise <= ARITHMETIC_NATS_PER_TOKEN else
                               f": more than {ARITHMETIC_NATS_PER_TOKEN} nats per token, too noisy for importance weights"),
                            value=noise))
    policies = {n: p for n, p in config.policies.items() if p.model in models}
    by_temperature: dict[float, Finding] = {}
    temperature_one_only = set()
    for temperature in sorted({p.temperature for p in policies.values()} - {1.0}):
        scored = provider.score_text(PROBE_TEXT, temperature)
        if len(scored) == len(base) and max(abs(a - b) for a, b in zip(scored, base)) <= max(noise, SAME):
            temperature_one_only.add(temperature)
        else:
            users = ", ".join(n for n, p in policies.items() if p.temperature == temperature)
            by_temperature[temperature] = Finding(model, f"temperature {temperature:g}", "ok",
                                                  f"exact: echo log-probs follow the request's temperature ({users})")
    rescaled: dict[float, int] = {}
    if temperature_one_only:
        cap = _top_k_cap(provider)
        findings.append(Finding(model, "alternatives", "ok" if cap else "refused",
                                f"the echo lists up to {cap} alternatives per token" if cap else
                                "the echo lists no alternatives per token, so log-probs at another temperature than 1 "
                                "cannot be bounded", value=cap))
        for temperature in sorted(temperature_one_only):
            finding = by_temperature[temperature] = _rescaling(config, provider, model, temperature, policies, cap)
            if finding.verdict == "rescaled":
                rescaled[temperature] = finding.top_k
    logging = config.policies[config.logging_policy]
    probe_chat = (logging if logging.model in models else next(iter(policies.values()))).messages(PROBE_PROMPT)
    try:
        differences = provider.sampling_difference(probe_chat, PROBE_MAX_TOKENS, seed=0)
    except ItemError as error:
        compared, difference = 0, 0.0
        findings.append(Finding(model, "sampling vs echo", "unchecked", f"{error}; the context tolerance assumes none"))
    else:
        compared, difference = len(differences), abs(sum(differences))
        largest = max(map(abs, differences))
        verdict = "ok" if largest <= ARITHMETIC_NATS_PER_TOKEN else "refused"
        findings.append(Finding(model, "sampling vs echo", verdict, (
            f"{compared} tokens sampled on the completions endpoint score {difference:.2e} nats apart when echoed, "
            f"{largest:.2e} at most at one position"
            + ("" if largest <= SAME else
               " (the server's arithmetic: it decodes one token at a time and echoes a whole text at once)" if verdict == "ok" else
               f", more than rounding explains ({ARITHMETIC_NATS_PER_TOKEN} per token, position by position): the echo "
               "does not score the tokens it returns (llama-cpp-python's server pairs each token with the next position's "
               "log-probs when the text does not start with its BOS token)")), value=largest))
    # One short probe cannot measure rounding closely, so a server that rounds at all is held to the bound.
    rounding = ARITHMETIC_NATS_PER_TOKEN if compared and difference > SAME * compared else 0.0
    tolerance = max(1e-4, 4 * noise * (PROBE_MAX_TOKENS + 1), rounding * (PROBE_MAX_TOKENS + 1))
    greedy: dict[str | None, Finding] = {}  # by system prompt: the policies' contexts differ by nothing else
    # By system prompt and temperature: a clone samples the probe response its logging policy does, and scores it alike.
    contexts: dict[tuple[str | None, float], Finding] = {}
    by_policy: dict[str, list[Finding]] = {}
    for name, policy in policies.items():
        if policy.temperature in temperature_one_only and policy.temperature not in rescaled:
            context = Finding(model, f"context {name}", "unchecked",
                              f"not checked: {name}'s temperature cannot be scored on this endpoint")
        else:
            sampling = (policy.system_prompt, policy.temperature)
            if sampling not in contexts:
                contexts[sampling] = _context(config, provider, model, name, tolerance, dry_run, rescaled.get(policy.temperature))
            context = replace(contexts[sampling], check=f"context {name}")
        if policy.system_prompt not in greedy:
            greedy[policy.system_prompt] = _template(provider, model, name, policy, noise, dry_run)
        by_policy[name] = [context, replace(greedy[policy.system_prompt], check=f"template {name}")]
    by_entry = {}
    for entry in models:
        own = [n for n, p in policies.items() if p.model == entry]
        temperatures = {policies[n].temperature for n in own}
        entry_findings = findings + [by_temperature[t] for t in sorted(by_temperature) if t in temperatures]
        entry_findings += [finding for n in own for finding in by_policy[n]]
        by_entry[entry] = [replace(finding, model=entry) for finding in entry_findings]
    return by_entry


def _top_k_cap(provider) -> int:
    """The most alternatives per token the echo lists: the first rung of TOP_K_LADDER the endpoint accepts, or fewer
    where it lists fewer than asked without saying so; 0 where it lists none."""
    for asked in TOP_K_LADDER:
        try:
            echo = provider.alternatives(None, PROBE_TEXT, asked)
        except ItemError:
            continue
        shown = [listed_top(t, lp, listed) for t, lp, listed in zip(echo.tokens, echo.logprobs, echo.alternatives) if listed]
        return min(asked, max(shown, default=0))
    return 0


def _rescaling(config: ExperimentConfig, provider, model: str, temperature: float, policies: dict, cap: int) -> Finding:
    """The verdict for policies at `temperature` on an endpoint whose echo is at temperature 1: refused above 1;
    below, the smallest k whose certified width on a probe response (PROBE_TEXT answering PROBE_PROMPT in the first
    such policy's context) would keep a response of the logging policy's max_tokens within max_certified_width."""

    users = [n for n, p in policies.items() if p.temperature == temperature]
    check = f"temperature {temperature:g}"
    if temperature > 1:
        return Finding(model, check, "refused",
                       f"the echo log-probs are the same at temperature {temperature:g} as at 1: the endpoint reports "
                       f"temperature-1 log-probs, and above 1 no certified bound exists (the unlisted tail can spread over "
                       f"the whole vocabulary), so {', '.join(users)} cannot get valid weights from it. Sample them at a "
                       "temperature of at most 1, or serve them from an endpoint whose echo log-probs follow the request's "
                       "temperature")
    if not cap:
        return Finding(model, check, "refused", f"the endpoint reports temperature-1 log-probs and lists no alternatives, "
                                                f"so {', '.join(users)} (sampling at {temperature:g}) cannot be bounded")
    echo = provider.alternatives(policies[users[0]].messages(PROBE_PROMPT), PROBE_TEXT, cap)
    length = config.policies[config.logging_policy].max_tokens
    per_100: dict[int, float] = {}
    for k in sorted({k for k in TOP_K_LADDER if k <= cap} | {cap}):
        alternatives = [truncated(listed or {}, t, lp, k) for t, lp, listed in zip(echo.tokens, echo.logprobs, echo.alternatives)]
        width = response_interval(echo.tokens, echo.logprobs, alternatives, k, temperature).width
        per_100[k] = 100 * width / max(1, len(echo.tokens))
        if per_100[k] * length / 100 <= config.max_certified_width:
            break
    k = max(per_100)
    within = per_100[k] * length / 100 <= config.max_certified_width
    return Finding(model, check, "rescaled",
                   f"rescaled from top-k={k}, expected width {per_100[k]:.3g} nats per 100 tokens (measured on the probe): "
                   f"the endpoint reports temperature-1 log-probs, so {', '.join(users)} (sampling at {temperature:g}) get "
                   "certified intervals" + ("" if within else
                   f"; a {length}-token response would exceed max_certified_width {config.max_certified_width:g} at the "
                   f"endpoint's cap of {cap} alternatives, and such rows get null log-probs"),
                   value=per_100[k], top_k=k)


def _template(provider, model: str, name: str, policy, noise: float, dry_run: bool) -> Finding:

    if dry_run:
        return Finding(model, f"template {name}", "unchecked",
                       "not checked in a dry run: the loopback server samples in its own chat template, not the config's")
    if noise > SAME:
        return Finding(model, f"template {name}", "unchecked",
                       f"not checked: the endpoint is not deterministic (noise {noise:.1e}), so greedy continuations may "
                       "differ without a template error")
    for prompt in GREEDY_PROMPTS:
        messages = policy.messages(prompt)
        # Each from a cleared cache: a server that reuses the cached start of the previous prompt (llama-cpp-python's)
        # computes the rest in other batch shapes, whose rounding can flip a near tie of the greedy choice.
        provider.evict_cache()
        chat = provider.generate(GenerationRequest(messages, 0.0, GREEDY_MAX_TOKENS, seed=0, logprobs=False)).text
        provider.evict_cache()
        completion = provider.greedy_continuation(messages, GREEDY_MAX_TOKENS)
        if chat != completion:
            return Finding(model, f"template {name}", "refused",
                           f"greedy continuations of {prompt!r} differ: the chat endpoint answers {chat!r}, the completions "
                           f"endpoint with the configured template {completion!r}: models.{model}.chat_template (or "
                           "end_of_turn) is not the template the server samples in")
    return Finding(model, f"template {name}", "ok",
                   f"greedy continuations of {len(GREEDY_PROMPTS)} probe prompts are the same through chat and through "
                   "completions with the configured template")


def _probe_judge(config: ExperimentConfig, role: str, judge: JudgeConfig) -> list[Finding]:

    check = f"{role} grading"
    try:
        _, scores = judging.grade(config, judge, PROBE_PROMPT, PROBE_ANSWER)
    except ItemError as error:
        if judge.method == "sampled":
            return [Finding(judge.model, check, "refused", f"a probe grading failed ({error}) with max_tokens {judge.max_tokens}")]
        return [Finding(judge.model, check, "refused",
                        f"a probe grading failed ({error}); with top_logprobs {judge.top_logprobs} and max_tokens "
                        f"{judge.max_tokens} (some providers cap top_logprobs at 5: set {role}.top_logprobs to what the "
                        f"endpoint accepts; for an endpoint that returns no log-probs, set {role}.method: sampled)")]
    if judge.method == "sampled":
        return [Finding(judge.model, check, "ok", f"a probe grading scored {scores['score']:.2f}; "
                                                  f"{scores['probability_mass']:.0%} of {judge.samples} sampled replies gave a score")]
    return [Finding(judge.model, check, "ok", f"a probe grading scored {scores['score']:.2f}, "
                                              f"{scores['probability_mass']:.0%} of its probability on score tokens")]


def _context(config: ExperimentConfig, provider, model: str, name: str, tolerance: float, dry_run: bool,
             top_k: int | None) -> Finding:

    policy = config.policies[name]
    messages = policy.messages(PROBE_PROMPT)
    sampled = provider.generate(GenerationRequest(messages, policy.temperature, PROBE_MAX_TOKENS, seed=0))
    if not sampled.token_logprobs:
        return Finding(model, f"context {name}", "unchecked",
                       "the chat endpoint returned no token log-probs, so the chat template could not be checked")
    provider.evict_cache()  # as in the run, the response is not scored from the server's cache
    forced = provider.teacher_force(TeacherForceRequest(messages, policy.temperature, sampled.text, sampled.tokenizer,
                                                        (), None, ended_turn=False, certify_from_top_k=top_k))
    difference = forced.difference_from(sum(sampled.token_logprobs))
    if abs(difference) > tolerance and dry_run:
        return Finding(model, f"context {name}", "unchecked",
                       f"differs by {difference:+.3f} nats, as expected in a dry run: the loopback server samples in its "
                       "own chat template, not the config's")
    if abs(difference) > tolerance:
        return Finding(model, f"context {name}", "refused",
                       f"a response sampled under {name} scores {difference:+.3f} nats differently when teacher-forced "
                       f"(tolerance {tolerance:.1e}): models.{model}.chat_template (or the tokenization at the "
                       "prompt's end) is not the context the server samples in")
    return Finding(model, f"context {name}", "ok",
                   f"sampled and teacher-forced log-probs agree within {abs(difference):.1e} nats (tolerance {tolerance:.1e}; {forced.method})")

"""The experiment config: one YAML file, validated at start-up.

Every field is documented here (the YAML files in `configs/` repeat the important ones). Validation
errors name the field and say what would work, before any model is loaded or any call is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import re

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from arena10k.errors import ConfigError

# Policy names become file names (fresh_draws/<name>_responses.jsonl) and item keys (<prompt id>|<name>).
POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENV_VAR_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Where a model runs. `provider: local` runs a GGUF file in-process with llama-cpp-python."""

    provider: Literal["local", "openai", "fireworks"] = Field(description="Which provider serves the model.")
    model: str = Field(
        description="Local: a model name from arena10k.models.LOCAL_MODELS or a path to a .gguf file. "
        "Hosted: the provider's model id."
    )
    api_key_env: str | None = Field(
        None, description="Hosted only: the NAME of the environment variable holding the key (e.g. FIREWORKS_API_KEY), "
        "never the key itself.")
    base_url: str | None = Field(
        None, exclude=True,
        description="Hosted only: API base URL: for openai, up to and including /v1 (any OpenAI-compatible server); "
        "for fireworks, the server's root (its SDK appends /v1/...). Where a model is served does not "
        "enter checkpoint fingerprints, so a run can move to another endpoint or port and resume.",
    )
    n_ctx: int = Field(4096, ge=256, description="Local only: context window in tokens (prompt + response).")
    reuse_prefix: bool = Field(
        True, exclude=True,
        description="Local only: start a prompt after the cached part it shares with the previous one (the judge's "
        "rubric and examples). Results are bit-identical either way; false only to measure what it saves.",
    )
    sequences: int = Field(
        8, ge=1, le=63, exclude=True,
        description="Local only: responses decoded together in one llama.cpp batch, for a registered model, up to "
        "the most that keep its results bit-identical (63 for both; a GGUF path decodes one at a time). Each holds "
        "n_ctx tokens of key-value cache (SmolLM2: 23 KB per token, Gemma 3: 18 KB). Results are bit-identical for "
        "any value.",
    )
    chat_template: str | None = Field(
        None,
        description="Hosted only: the served model's chat template (Jinja, as in its tokenizer_config.json). "
        "Teacher forcing renders each policy's context with it; without it the model cannot teacher-force.",
    )
    end_of_turn: str | None = Field(
        None, description="Hosted only: the text of the token that ends an assistant turn in chat_template, e.g. <|eot|>."
    )
    # How calls are made, not what they return: excluded from fingerprints, so tuning them never forces a recompute.
    concurrency: int = Field(16, ge=1, exclude=True, description="Hosted only: the most calls in flight for this model.")
    request_timeout: float = Field(60.0, gt=0, exclude=True, description="Hosted only: seconds before a call is abandoned and retried.")
    max_retries: int = Field(6, ge=0, exclude=True, description="Hosted only: retries of one call on 429, 5xx, timeouts and dropped connections.")
    outage_seconds: float = Field(
        60.0, gt=0, exclude=True,
        description="Hosted only: how long calls may fail (5xx, timeouts, connection errors) with none succeeding before "
        "the endpoint counts as down and the stage stops, charging no item with the outage.")
    batch: bool = Field(
        False, exclude=True,
        description="Hosted (openai provider) only: generation, judge and oracle calls to this model go through the "
        "provider's Batch API (Files + Batches in OpenAI's shape, which OpenAI, Together and DeepInfra serve at their "
        "base_url) at its batch price, with results within batch_window instead of seconds and no online rate limit. "
        "Teacher forcing and the preflight stay online (no Batch API documents echo log-probs). The same request "
        "bodies as online calls, so the results are those an online run would get.")
    batch_window: str = Field("24h", exclude=True, description="batch only: the completion window asked for (OpenAI offers 24h).")
    batch_price_factor: float = Field(
        0.5, gt=0, le=1, exclude=True,
        description="batch only: the batch price as a share of the online prices below (0.5 at OpenAI, Together, Fireworks).")
    batch_file_purpose: str = Field(
        "batch", exclude=True, description="batch only: the purpose an input file is uploaded with (OpenAI: batch; Together: batch-api).")
    batch_max_requests: int = Field(50_000, ge=1, exclude=True, description="batch only: most requests in one input file (OpenAI: 50,000).")
    batch_max_bytes: int = Field(200_000_000, ge=1000, exclude=True, description="batch only: largest input file in bytes (OpenAI: 200 MB).")
    batch_poll_seconds: float = Field(
        60.0, gt=0, exclude=True,
        description="batch only: the longest wait between two looks at a batch's state (the first after 1 s or this if shorter, then twice as long each time).")
    # Prices and rate limits change no result, so they are left out of model_dump() and with it out of every
    # checkpoint fingerprint and dataset_info.json: updating them never forces a recompute.
    price_per_million_input_tokens: float = Field(
        0.0, ge=0, exclude=True, description="US dollars per million input (prompt) tokens; 0 for local models."
    )
    price_per_million_output_tokens: float = Field(
        0.0, ge=0, exclude=True, description="US dollars per million output (generated) tokens; 0 for local models."
    )
    requests_per_minute: int | None = Field(
        None, gt=0, exclude=True, description="Hosted only: the provider's request limit for this model; null means none."
    )
    tokens_per_minute: int | None = Field(
        None, gt=0, exclude=True,
        description="Hosted only: the provider's limit on input + output tokens per minute for this model; null means none.",
    )


    @model_validator(mode="after")
    def _batch_where_served(self) -> ModelConfig:
        if self.batch and self.provider != "openai":
            raise ValueError(f"batch: true is for the openai provider (OpenAI, or Together, DeepInfra and other servers of "
                             f"OpenAI's Batch API by base_url); provider {self.provider} "
                             + ("computes in-process and has no batches" if self.provider == "local" else
                                "has batch inference jobs of its own, which arena10k does not send yet"))
        return self

    @model_validator(mode="after")
    def _key_is_named_not_given(self) -> ModelConfig:
        # An environment variable's name, by convention upper case; a key pasted here instead is refused
        # without being repeated anywhere.
        if self.api_key_env is not None and not ENV_VAR_NAME.fullmatch(self.api_key_env):
            raise ValueError("api_key_env must name an environment variable (upper-case letters, digits and '_', "
                             "e.g. OPENAI_API_KEY); what is there is not a name, and is not shown in case it is a key")
        return self

    def endpoint(self) -> str:
        """Where the model is served, without the port: a run that moved to another port of one server is one run."""
        if self.provider == "local":
            return "in-process (llama-cpp-python)"
        if self.base_url is None:
            return f"{self.provider}'s default API"
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


class PolicyConfig(_Strict):
    """A policy is a model plus the exact context and sampling distribution it generates with."""

    model: str = Field(description="A key of `models`.")
    system_prompt: str | None = Field(
        description="System message; null means none (the model's chat template then applies its own default)."
    )
    temperature: float = Field(ge=0, le=2, description="Sampling temperature (above 0); log-probs are taken at this temperature.")
    top_p: float = Field(
        1.0,
        description="Must be 1.0: importance weights need the full sampling distribution, "
        "and nucleus truncation would give target policies zero probability for some P0 tokens.",
    )
    max_tokens: int = Field(gt=0, description="Responses longer than this are cut and recorded with finish_reason=length.")
    fresh_draws: int = Field(
        1, ge=1, le=100,
        description="Responses per prompt from a target policy, each judged and written to the fresh-draw files with its "
        "draw_idx (cje's Direct estimator averages them: narrower estimates without more prompts). Teacher forcing and "
        "the oracle's validation slice use the first. Raising it later generates and judges only the new draws. The "
        "logging policy has one.")

    @field_validator("temperature")
    @classmethod
    def _has_a_density(cls, temperature: float) -> float:
        if temperature == 0:
            raise ValueError("temperature 0 (greedy decoding) gives every response but one probability 0, so no importance "
                             "weight exists for it; give the policy a small temperature instead (0.1 is close to greedy and "
                             "has weights)")
        return temperature

    @model_validator(mode="after")
    def _full_distribution(self) -> PolicyConfig:
        if self.top_p != 1.0:
            raise ValueError("top_p must be 1.0 (log-probs and importance weights are under the untruncated distribution)")
        return self

    def messages(self, prompt: str) -> tuple[dict, ...]:
        """The exact context the policy generates in; teacher forcing, the preflight and the estimate reuse it."""
        system = () if self.system_prompt is None else ({"role": "system", "content": self.system_prompt},)
        return (*system, {"role": "user", "content": prompt})


class JudgeConfig(_Strict):
    """An LLM judge scores a response on a 0..9 scale, reported as score/9 in [0, 1]."""

    model: str = Field(description="A key of `models`.")
    rubric: str | None = Field(
        None, description="The judge's instructions (its system message); null means the built-in rubric "
        "(arena10k.judging.JUDGE_RUBRIC, or ORACLE_RUBRIC for the oracle).",
    )
    max_tokens: int = Field(8, gt=0, description="Room for the reply that should contain the digit.")
    method: Literal["top_logprobs", "sampled"] = Field(
        "top_logprobs",
        description="How the score's uncertainty is measured. top_logprobs: from one greedy reply, the judge's "
        "probabilities over the ten digits (the endpoint must return top log-probs). sampled: `samples` more "
        "replies at `temperature`, and the spread of the digits they give; for models that return no log-probs "
        "(reasoning models, some APIs), which are then not asked for any.")
    top_logprobs: int = Field(20, ge=10, description="top_logprobs only: alternatives per position for the score distribution.")
    samples: int = Field(5, ge=2, le=50, description="sampled only: replies sampled besides the greedy one.")
    temperature: float = Field(1.0, gt=0, le=2, description="sampled only: the temperature of those replies.")


class OracleConfig(JudgeConfig):
    """A stronger judge on a seeded slice, sampled by prompt. The slice settings choose which items are
    labelled, not what a label is, so changing them labels more or fewer items and recomputes none."""

    enabled: bool = Field(True, description="Skip stage 5 entirely when false.")
    calibration_fraction: float = Field(0.25, gt=0, le=1, description="Share of prompts whose P0 response is labelled.")
    validation_fraction: float = Field(0.25, ge=0, le=1, description="Share of prompts whose target responses are labelled.")
    calibration_seed: int = Field(1, description="Seed for choosing the calibration prompts.")
    validation_seed: int = Field(2, description="Seed for choosing the validation prompts.")


class AnalysisConfig(_Strict):
    """Stage 7: cje-eval 0.3's estimators (calibrated IPS, stacked DR, Direct) on the Phase 2 files."""

    enabled: bool = Field(True, description="Skip stage 7 when false (the Phase 2 files are written all the same).")
    cje_python: Path | None = Field(
        None, description="The Python interpreter of an environment with cje-eval 0.3 installed; null means the "
        "`.venv-cje-0.3.0` that install.sh makes in the project root.")
    bootstrap_replicates: int = Field(
        1000, ge=200,
        description="Replicates of the Direct estimator's cluster bootstrap (cje's n_bootstrap; its default is 2000). "
        "They set its standard error and interval, never its estimate; the Monte Carlo error of the standard error is "
        "about 1/sqrt(2 x replicates): 2.2% at 1000, 1.6% at 2000, at half the time (BENCHMARKS.md, stage 7).")
    oracle_fractions: list[float] = Field(
        [0.05, 0.1, 0.25, 0.5, 1.0],
        description="The oracle coverage ablation: calibrated IPS and Direct re-estimated with these shares of the logged "
        "responses' oracle labels (seeded by `seed`, each share inside the next) and none of the target policies' own, "
        "whose mean is the truth each estimate is checked against. Each share costs about as much as those two "
        "estimators in the main analysis; [] leaves the ablation out.")

    @field_validator("oracle_fractions")
    @classmethod
    def _increasing_shares(cls, fractions: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in fractions) or fractions != sorted(set(fractions)):
            raise ValueError(f"must be increasing shares in (0, 1], such as [0.05, 0.25, 1.0]; got {fractions}")
        return fractions


class ExperimentConfig(_Strict):
    """Root of the YAML file."""

    name: str = Field(description="Experiment name, recorded in dataset_info.json.")
    seed: int = Field(description="Run seed: prompt sampling and every per-item sampling seed derive from it.")
    samples: int | Literal["all"] = Field(
        description="How many prompts a new run samples after filtering; the runner's N sets another size, and a "
        "resume keeps the size the run was prepared with.")
    dataset: str = Field(
        description="Hugging Face dataset id, or a local JSON/JSONL/Parquet file (relative paths are resolved "
        "against the project root) with ChatBot Arena rows."
    )
    max_attempts: int = Field(3, ge=1, description="A failing item is tried at most this many times over all runs.")
    max_certified_width: float = Field(
        1.0, gt=0,
        description="Nats. On an endpoint that reports temperature-1 log-probs only, a policy sampling at T < 1 is "
        "teacher-forced as a certified interval computed from the top-k alternatives (README, 'Any temperature'); a "
        "row whose interval is wider than this gets a null log-prob in Phase 2, with the reason. 1 nat bounds the "
        "row's importance weight within a factor of e at the interval's ends. The preflight chooses k to meet it.")
    models: dict[str, ModelConfig]
    logging_policy: str = Field(description="The key of `policies` that logged the data (P0); every other policy is a target.")
    policies: dict[str, PolicyConfig] = Field(
        description="The logging policy and any number of target policies, by names of your choice (letters, digits, "
        "'_', '-', '.'). Every stage and output lists them in this order."
    )
    judge: JudgeConfig
    oracle: OracleConfig
    analysis: AnalysisConfig = AnalysisConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.samples != "all" and self.samples < 1:
            raise ValueError("samples must be a whole number of prompts of at least 1, or 'all'")
        for name in self.policies:
            if not POLICY_NAME.fullmatch(name):
                raise ValueError(f"policy name '{name}' must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
        if self.logging_policy not in self.policies:
            raise ValueError(f"logging_policy '{self.logging_policy}' is not a key of policies ({', '.join(self.policies)})")
        if len(self.policies) < 2:
            raise ValueError("policies needs at least one target policy besides the logging policy")
        if self.policies[self.logging_policy].fresh_draws != 1:
            raise ValueError(f"policies.{self.logging_policy}.fresh_draws: the logging policy has one response per prompt "
                             "(its logged response); fresh_draws is for target policies")
        references = {f"policies.{n}": p.model for n, p in self.policies.items()}
        references |= {"judge": self.judge.model, "oracle": self.oracle.model}
        for where, model in references.items():
            if model not in self.models:
                raise ValueError(f"{where}.model '{model}' is not a key of models ({sorted(self.models)})")
        return self

    @property
    def target_policies(self) -> tuple[str, ...]:
        return tuple(name for name in self.policies if name != self.logging_policy)

    @property
    def policy_names(self) -> tuple[str, ...]:
        """The logging policy first, then the targets in config order."""
        return (self.logging_policy, *self.target_policies)

    def policy_identity(self, name: str) -> dict:
        """Everything that decides what a policy samples: its model's settings, its context and its sampling."""
        policy = self.policies[name]
        # How many responses are drawn is not how they are sampled: more draws later reuse the first ones.
        return {**policy.model_dump(exclude={"fresh_draws"}), "model": self.models[policy.model].model_dump()}

    def responses_fingerprint(self, policy: str) -> dict:
        """What a policy's responses depend on; every stage that reads them includes it in its own fingerprint."""
        return {"seed": self.seed, "policies": {policy: self.policy_identity(policy)}}

    def draws(self, policy: str) -> int:
        return self.policies[policy].fresh_draws

    def policy_models(self) -> set[str]:
        return {p.model for p in self.policies.values()}

    def clones(self) -> tuple[str, ...]:
        """Targets that sample exactly as the logging policy does, whatever they are called: their importance
        weights must all be 1, which checks the whole scoring path."""
        logging = self.policy_identity(self.logging_policy)
        return tuple(name for name in self.target_policies if self.policy_identity(name) == logging)

    def max_tokens_warnings(self) -> list[str]:
        """What a target's max_tokens other than the logging policy's does to its weights, said before any call."""
        logging = self.policies[self.logging_policy].max_tokens
        return [f"policies.{name}.max_tokens is {policy.max_tokens}, {self.logging_policy}'s {logging}: the responses of "
                f"{self.logging_policy} cut at {logging} tokens get weight 0 under {name} (it never gives that cut text)"
                + (f", and so do those longer than {policy.max_tokens - 1} tokens" if policy.max_tokens < logging else "")
                for name, policy in self.policies.items() if policy.max_tokens != logging]

    def used_models(self) -> dict[str, ModelConfig]:
        names = {p.model for p in self.policies.values()} | {self.judge.model}
        if self.oracle.enabled:
            names.add(self.oracle.model)
        return {name: self.models[name] for name in sorted(names)}


class _UniqueKeys(yaml.SafeLoader):
    """YAML as safe_load reads it, except that a key given twice in one mapping (two policies of one name) is an error,
    not the second silently replacing the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key '{key}' appears twice in one mapping; "
                                                        "give each its own name", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist (pass --config PATH).")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys)
        config = ExperimentConfig.model_validate(raw)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start}): save it as UTF-8.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    except ValidationError as error:
        problems = "\n".join(
            f"  - {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"{path} is not a valid experiment config:\n{problems}") from None
    return config

"""An experiment config whose every model is served by a loopback server: the API path end to end, without keys
or cost (the API tests and benchmarks/api_pipeline.py). Its policies are test fixtures, not the product's."""

from __future__ import annotations

import json
from pathlib import Path

from arena10k.server.synthetic import CHAT_TEMPLATE

KEY_ENV = "ARENA10K_LOOPBACK_KEY"


def write_loopback_config(path: Path, base_url: str, *, samples: int, dataset: str = "data/prompts/arena10k_prompts.jsonl",
                          concurrency: int = 8, requests_per_minute: int | None = None, request_timeout: float = 1.5,
                          calibration_fraction: float = 1.0, validation_fraction: float = 0.25,
                          outage_seconds: float = 60.0, max_retries: int = 10, max_attempts: int = 3,
                          analysed: bool = False, batch: bool = False) -> Path:
    model = {"provider": "openai", "base_url": base_url, "api_key_env": KEY_ENV, "chat_template": CHAT_TEMPLATE,
             "end_of_turn": "<|end|>", "concurrency": concurrency, "request_timeout": request_timeout, "max_retries": max_retries,
             "requests_per_minute": requests_per_minute, "outage_seconds": outage_seconds}
    if batch:  # generation, judging and oracle labels through the server's Batch API, looked at every 0.2 s at most
        model |= {"batch": True, "batch_poll_seconds": 0.2}
    policy = {"model": "small", "system_prompt": "You are a helpful assistant.", "temperature": 0.7, "max_tokens": 24}
    config = {
        "name": "loopback", "seed": 42, "samples": samples, "dataset": dataset, "max_attempts": max_attempts, "logging_policy": "p0",
        # Each synthetic model id is a different model; requests to all of them share the server's limits.
        "models": {"small": {**model, "model": "synthetic-small"}, "big": {**model, "model": "synthetic-big"},
                   "oracle": {**model, "model": "synthetic-oracle"}},
        "policies": {"p0": policy, "pi_clone": policy, "pi_cot": {**policy, "system_prompt": "Think step by step."},
                     "pi_bigger_model": {**policy, "model": "big"},
                     "pi_bad": {**policy, "system_prompt": "Be unhelpful.", "temperature": 1.0}},
        "judge": {"model": "small", "max_tokens": 4, "top_logprobs": 20},
        "oracle": {"enabled": True, "model": "oracle", "max_tokens": 4, "top_logprobs": 20,
                   "calibration_fraction": calibration_fraction, "validation_fraction": validation_fraction,
                   "calibration_seed": 1, "validation_seed": 2},
        # cje-eval on synthetic scores costs time; the tests of the estimates against the oracle's truth turn it on
        "analysis": {"enabled": analysed},
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


TOPICS = ("bread", "a bicycle", "a garden", "the tides", "a budget", "a resume", "a fever", "a chess opening", "rain",
          "a camera", "a vaccine", "a volcano", "a loan", "a marathon", "a compost heap", "a router", "a violin", "a tax return",
          "a sourdough starter", "an eclipse")
ASKS = ("Can you explain how {} works?", "What should I know about {} before I start?", "How do I take care of {}?",
        "Why is {} important for a beginner?", "What are the most common mistakes with {}?",
        "Could you give me a short history of {}?", "How would you describe {} to a child?",
        "What is the cheapest way to deal with {}?", "Which books would you recommend about {}?",
        "What questions should I ask an expert about {}?")


def made_up_prompts(path: Path, count: int) -> Path:
    """`count` distinct English prompts in the ChatBot Arena row shape (up to 200), for loopback runs larger than the
    project's prompt file."""
    prompts = [ask.format(topic) for topic in TOPICS for ask in ASKS][:count]
    path.write_text("".join(json.dumps({"conversation_a": [{"role": "user", "content": p}], "question_id": f"q{i}"}) + "\n"
                            for i, p in enumerate(prompts)))
    return path

"""Benchmark: how wide the certified intervals of log p_T are, and how far their midpoint (the point value the weights
use) lies from the exact log-prob, for k = 5, 20 and 100 temperature-1 alternatives per token and T = 0.5 and 0.7.

In process with the embedded SmolLM2, on the quick start's prompts (configs/local.yaml's seed, dataset and P0 system
prompt): a response sampled at T (up to --max-tokens tokens) to each prompt; its exact log-prob at T from all logits
(teacher forcing, as the run does); its temperature-1 echo with the top k alternatives keyed by the text a token
prints, the less probable of two that print alike overwriting the other and the token's own entry added, exactly as
llama-cpp-python's server lists them; the certified interval from those (providers/certified.py). "Held" counts
responses whose exact log-prob lies in the interval, allowing the float32 rounding of the log-probs (1e-5 nats a
token; the embedded Distribution is within 2e-6 of float64).
"The upper end" is the estimate that ignores the unlisted tokens, for comparison with the midpoint.

    python benchmarks/certified_widths.py                    # 20 prompts, responses up to 200 tokens
    python benchmarks/certified_widths.py --samples 5 --max-tokens 100
"""

import argparse
import statistics
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from arena10k.config import load_config  # noqa: E402
from arena10k.data import load_conversations, prepare_prompts  # noqa: E402
from arena10k.providers.base import GenerationRequest, TeacherForceRequest  # noqa: E402
from arena10k.providers.certified import response_interval  # noqa: E402
from arena10k.providers.local import LocalProvider  # noqa: E402

KS = (5, 20, 100)
TEMPERATURES = (0.5, 0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()

    config = load_config(PROJECT_ROOT / "configs" / "local.yaml")
    prompts, _ = prepare_prompts(load_conversations(str(PROJECT_ROOT / config.dataset)), args.samples, config.seed)
    p0 = config.policies[config.logging_policy]
    provider = LocalProvider(config.models[p0.model].model, n_ctx=2048)
    print(f"{len(prompts)} prompts, responses sampled at T up to {args.max_tokens} tokens, SmolLM2 in process\n")
    print(f"{'T':>4}{'k':>5}  {'width max / median (nats)':>27}  {'per 100 tokens, median':>22}  "
          f"{'midpoint error max / median':>28}  {'upper end error max / median':>29}  held")
    for temperature in TEMPERATURES:
        rows = []
        for index, prompt in enumerate(prompts):
            messages = p0.messages(prompt.prompt)
            sampled = provider.generate(GenerationRequest(messages, temperature, args.max_tokens, seed=index))
            ended = sampled.finish_reason == "stop"
            ids = sampled.token_ids + ([sampled.stop_token_id] if ended else [])
            exact = provider.teacher_force(TeacherForceRequest(messages, temperature, sampled.text, sampled.tokenizer,
                                                               tuple(sampled.token_ids), sampled.stop_token_id, ended)).logprob
            context = provider.complete(messages, 0, 1.0, 0, echo=True)[0].token_ids
            start = len(context) - 1  # echoed log-probs start at the second token
            listed = {}
            for k in KS:
                echo, _ = provider.complete(context + ids, 0, 1.0, 0, top_logprobs=k, echo=True)
                tokens, logprobs = echo.token_texts[start + 1:], echo.token_logprobs[start:]
                listed[k] = [{**top, token: logprob} for token, logprob, top in zip(tokens, logprobs, echo.top_logprobs[start:])]
            rows.append((exact, tokens, logprobs, listed))
        for k in KS:
            widths, per_100, midpoint_errors, upper_errors, held = [], [], [], [], 0
            for exact, tokens, logprobs, listed in rows:
                interval = response_interval(tokens, logprobs, listed[k], k, temperature)
                widths.append(interval.width)
                per_100.append(100 * interval.width / len(tokens))
                midpoint_errors.append(abs(interval.midpoint - exact))
                upper_errors.append(abs(interval.high - exact))
                rounding = 1e-5 * len(tokens)
                held += interval.low - rounding <= exact <= interval.high + rounding
            print(f"{temperature:>4}{k:>5}  {max(widths):>14.4g} / {statistics.median(widths):<10.4g}  "
                  f"{statistics.median(per_100):>22.4g}  {max(midpoint_errors):>14.4g} / {statistics.median(midpoint_errors):<11.4g}"
                  f"  {max(upper_errors):>15.4g} / {statistics.median(upper_errors):<11.4g}  {held}/{len(rows)}")


if __name__ == "__main__":
    main()

"""Benchmark: can an embedded model judge? Scores a finished quick-start run's responses with the product's judge
(arena10k.judging) and with the alternatives tried for issue 11, on SmolLM2-135M-Instruct and Gemma 3 270M:

- digits: the product's prompt (0-9 scale, four worked examples); the score is the mean of the digit distribution;
- digits + bad examples: two more worked examples, a garbled answer and an answer that repeats the prompt, both 0;
- yes/no: "Is this a good answer to the request?" with five worked examples; the score is P(Yes) / P(Yes or No).

For each it prints how many distinct scores the judge gives, each policy's mean, and the AUC with which the scores
tell the answers of p0, pi_clone and pi_cot (instruction-following SmolLM2) from pi_bad's (evasive, temperature 1)
and pi_bigger_model's (a pretrained model that mostly repeats the prompt): 0.5 is chance, 1 always right.

    python run_phase1_pipeline.py 20 && python benchmarks/embedded_judge.py data/runs/local
"""

import argparse
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena10k import judging  # noqa: E402
from arena10k.providers.base import GenerationRequest  # noqa: E402
from arena10k.providers.local import LocalProvider  # noqa: E402

GOOD = ("p0", "pi_clone", "pi_cot")
BAD_EXAMPLES = (("What is the capital of France?", "Ich bin ein Magelbla oder black boots gestl uns nerve warript.", "0"),
                ("Tell me a joke.", "You are a helpful assistant. Tell me a joke. You are a helpful assistant. Tell me", "0"))
YES_NO = "Is this a good answer to the request? Answer Yes or No."
YES_NO_EXAMPLES = tuple((p, r, "Yes" if s in ("9", "6") else "No") for p, r, s in judging.EXAMPLES[:2] + BAD_EXAMPLES + judging.EXAMPLES[3:])


def conversation(system: str, examples, request) -> tuple[dict, ...]:
    messages = [{"role": "system", "content": system}]
    for prompt, response, answer in examples:
        messages += [{"role": "user", "content": request(prompt, response)}, {"role": "assistant", "content": answer}]
    return tuple(messages)


def digit_mean(generation) -> float | None:
    try:
        return judging.score_reply(generation)["score_mean"]
    except judging.ItemError:
        return None  # no digit: left out, and counted


def yes_share(generation) -> float | None:
    top = generation.top_logprobs[0]
    yes, no = (sum(math.exp(v) for k, v in top.items() if k.strip().lower() == word) for word in ("yes", "no"))
    return yes / (yes + no) if yes + no else None


def digits_request(prompt, response):
    return judging._grading_request(prompt, response)


def yes_no_request(prompt, response):
    return f"User request:\n{prompt}\n\nAssistant answer:\n{response}\n\n{YES_NO}"


JUDGES = {
    "digits (the product's)": (lambda: conversation(judging.JUDGE_RUBRIC, judging.EXAMPLES, digits_request), digits_request, digit_mean),
    "digits + bad examples": (lambda: conversation(judging.JUDGE_RUBRIC, judging.EXAMPLES + BAD_EXAMPLES, digits_request),
                              digits_request, digit_mean),
    "yes/no": (lambda: conversation("You check answers written by an AI assistant.", YES_NO_EXAMPLES, yes_no_request),
               yes_no_request, yes_share),
}


def auc(higher: list[float], lower: list[float]) -> float:
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in higher for b in lower]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run of configs/local.yaml")
    args = parser.parse_args()
    prompts = {row["prompt_id"]: row["prompt"] for row in map(json.loads, (args.run / "prompts.jsonl").read_text().splitlines())}
    lines = [json.loads(line) for line in (args.run / "checkpoints" / "generate.jsonl").read_text().splitlines()]
    responses = [(r["record"]["policy"], prompts[r["record"]["prompt_id"]], r["record"]["text"]) for r in lines if r.get("record")]
    results = {}
    for model in ("smollm2-135m-instruct", "gemma3-270m"):
        provider = LocalProvider(model, 4096, sequences=8)
        for name, (examples, request, score) in JUDGES.items():
            def grade(item):
                policy, prompt, text = item
                messages = (*examples(), {"role": "user", "content": request(prompt, text)})
                reply = provider.generate(GenerationRequest(messages=messages, max_tokens=4, temperature=0, seed=0, top_logprobs=20))
                return policy, score(reply)

            with ThreadPoolExecutor(provider.sequences) as pool:
                graded = list(pool.map(grade, responses))
            by_policy: dict[str, list[float]] = {}
            for policy, value in graded:
                if value is not None:
                    by_policy.setdefault(policy, []).append(value)
            good = [v for p in GOOD for v in by_policy.get(p, [])]
            results[f"{model}: {name}"] = {
                "no score": sum(value is None for _, value in graded),
                "distinct scores": len({round(v, 6) for _, v in graded if v is not None}),
                "means": {p: round(float(np.mean(v)), 3) for p, v in by_policy.items()},
                "AUC over pi_bad": round(auc(good, by_policy.get("pi_bad", [])), 2),
                "AUC over pi_bigger_model": round(auc(good, by_policy.get("pi_bigger_model", [])), 2),
            }
            print(json.dumps({f"{model}: {name}": results[f"{model}: {name}"]}), flush=True)


if __name__ == "__main__":
    main()

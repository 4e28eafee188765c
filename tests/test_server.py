"""The loopback OpenAI-compatible server, through the official `openai` SDK and a raw HTTP client."""

import http.client
import json
import math
import urllib.error
import urllib.request
from types import SimpleNamespace

import jinja2
import openai
import pytest

from arena10k import judging
from arena10k.errors import EndpointDownError, ItemError
from arena10k.providers import hosted
from arena10k.providers.base import GenerationRequest
from arena10k.providers.hosted import HostedProvider
from arena10k.providers.local import LocalProvider
from arena10k.server import FaultConfig, ServerConfig, run_in_thread, run_subprocess
from arena10k.ratelimit import RateLimiter
from arena10k.server.faults import FaultPlan

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Why is the sky blue? Answer in one sentence."}]


@pytest.fixture(scope="module")
def synthetic():
    with run_in_thread(ServerConfig("synthetic")) as server:
        yield server


def client(server, api_key="test") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=30)


def chat(server, **options):
    return client(server).chat.completions.create(**{"model": "policy-a", "messages": MESSAGES, "max_tokens": 48,
                                                      "temperature": 0.7, "seed": 1, **options})


def rendered(server, messages) -> str:
    """The chat template as a client renders it, taken from /v1/models."""
    template = client(server).models.list().data[0].model_extra["chat_template"]
    return jinja2.Template(template).render(messages=messages, add_generation_prompt=True)


def post(url: str, body: dict, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": "Bearer test", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_chat_completion_with_logprobs(synthetic):
    response = chat(synthetic, logprobs=True, top_logprobs=5)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == "policy-a"
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert len(tokens) == response.usage.completion_tokens
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    for token in tokens:
        alternatives = [alt.logprob for alt in token.top_logprobs]
        assert len(alternatives) == 5 and alternatives == sorted(alternatives, reverse=True)
        assert token.logprob <= alternatives[0] and bytes(token.bytes).decode() == token.token


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_echo_scores_a_sampled_text_with_the_logprobs_it_was_sampled_with(synthetic, temperature):
    sampled = client(synthetic).completions.create(model="policy-a", prompt="<|user|>Hello<|end|><|assistant|>",
                                                   max_tokens=40, temperature=temperature, seed=7, logprobs=3)
    text = sampled.choices[0].text
    sampled_logprobs = sampled.choices[0].logprobs.token_logprobs
    scored = client(synthetic).completions.create(model="policy-a", prompt="<|user|>Hello<|end|><|assistant|>" + text,
                                                  max_tokens=0, echo=True, logprobs=0, temperature=temperature)
    logprobs = scored.choices[0].logprobs
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert scored.choices[0].text == "<|user|>Hello<|end|><|assistant|>" + text
    # Bit for bit, so the scored text's log-prob (their sum) is the one it was sampled with.
    assert sampled_logprobs and logprobs.token_logprobs[sampled.usage.prompt_tokens:] == sampled_logprobs
    assert all(logprobs.tokens[i] == scored.choices[0].text[offset:offset + len(logprobs.tokens[i])]
               for i, offset in enumerate(logprobs.text_offset))


def test_teacher_forcing_a_chat_response_through_completions(synthetic):
    response = chat(synthetic, logprobs=True)
    ended = response.choices[0].finish_reason == "stop"
    prompt = rendered(synthetic, MESSAGES)
    full = prompt + response.choices[0].message.content + ("<|end|>" if ended else "")
    scored = client(synthetic).completions.create(model="policy-a", prompt=full, max_tokens=0, echo=True, logprobs=0,
                                                  temperature=0.7)
    logprobs = scored.choices[0].logprobs
    n_prompt = response.usage.prompt_tokens
    assert "".join(logprobs.tokens[:n_prompt]) == prompt and logprobs.text_offset[n_prompt] == len(prompt)
    sampled = [token.logprob for token in response.choices[0].logprobs.content]
    assert logprobs.token_logprobs[n_prompt:n_prompt + len(sampled)] == sampled
    assert len(logprobs.tokens) == n_prompt + len(sampled) + ended


def test_prompt_as_token_ids_equals_prompt_as_text(synthetic):
    text = rendered(synthetic, MESSAGES)
    status, body = post(f"{synthetic.root_url}/tokenize", {"model": "policy-a", "messages": MESSAGES})
    ids = json.loads(body)["tokens"]
    assert status == 200
    by_text, by_ids = (client(synthetic).completions.create(model="policy-a", prompt=prompt, max_tokens=20, seed=3,
                                                            echo=True, logprobs=2) for prompt in (text, ids))
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.choices[0].logprobs == by_ids.choices[0].logprobs
    status, body = post(f"{synthetic.root_url}/detokenize", {"model": "policy-a", "tokens": ids})
    assert json.loads(body)["prompt"] == text


def test_sampling_is_deterministic_given_the_seed_and_differs_by_model(synthetic):
    first, again = chat(synthetic, seed=5), chat(synthetic, seed=5)
    assert first.choices[0].message.content == again.choices[0].message.content
    others = {chat(synthetic, seed=seed).choices[0].message.content for seed in range(6, 10)}
    other_model = chat(synthetic, seed=5, model="policy-b").choices[0].message.content
    assert len(others | {first.choices[0].message.content}) > 1 and other_model != first.choices[0].message.content


def test_a_judge_answers_with_a_digit(synthetic):
    messages = judging.judge_messages(judging.JUDGE_RUBRIC, "What is 2 + 2?", "4")
    response = client(synthetic).chat.completions.create(model="judge", messages=list(messages), max_tokens=4,
                                                         temperature=0, logprobs=True, top_logprobs=20)
    first = response.choices[0].logprobs.content[0]
    assert response.choices[0].message.content.isdigit() and response.choices[0].finish_reason == "stop"
    assert sum(math.exp(alt.logprob) for alt in first.top_logprobs if judging.digit(alt.token) is not None) > 0.999


def test_a_wrong_key_is_refused_with_401():
    with run_in_thread(ServerConfig("synthetic", api_key="secret")) as server:
        with pytest.raises(openai.AuthenticationError) as refused:
            client(server, api_key="wrong").models.list()
        assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
        assert client(server, api_key="secret").models.list().data
        assert server.stats()["endpoints"]["/v1/models"]["unauthorized"] == 1


def test_over_the_rpm_limit_is_429_with_retry_after():
    with run_in_thread(ServerConfig("synthetic", faults=FaultConfig(rpm=3))) as server:
        for seed in range(3):
            chat(server, seed=seed)
        with pytest.raises(openai.RateLimitError) as limited:
            chat(server)
        assert 1 <= int(limited.value.response.headers["Retry-After"]) <= 60
        assert limited.value.body["code"] == "rate_limit_exceeded"
        counts = server.stats()["endpoints"]["/v1/chat/completions"]
        assert (counts["received"], counts["ok"], counts["rate_limited"]) == (4, 3, 1)


def test_over_the_tpm_limit_is_429():
    with run_in_thread(ServerConfig("synthetic", faults=FaultConfig(tpm=100))) as server:
        chat(server, max_tokens=60)
        with pytest.raises(openai.RateLimitError):
            chat(server, max_tokens=60)


def faulty(**rates):
    """A server that injects the given faults into every request."""
    return run_in_thread(ServerConfig("synthetic", faults=FaultConfig(**rates)))


def outcomes(server) -> dict:
    counts = server.stats()["endpoints"]["/v1/chat/completions"]
    return {outcome: n for outcome, n in counts.items() if n and outcome not in ("received", "ok_unique")}


CHAT_BODY = {"model": "m", "messages": MESSAGES}


def test_an_injected_server_error_is_a_500_or_503_with_an_error_body():
    with faulty(error_rate=1.0) as server:
        statuses = set()
        for _ in range(8):
            status, content = post(f"{server.base_url}/chat/completions", CHAT_BODY)
            assert json.loads(content)["error"]["type"] == "server_error"
            statuses.add(status)
        assert statuses == {500, 503}
        assert sum(outcomes(server).values()) == 8 and set(outcomes(server)) == {"error_500", "error_503"}


def test_an_injected_malformed_body_is_a_200_that_is_not_json():
    with faulty(malformed_rate=1.0) as server:
        status, content = post(f"{server.base_url}/chat/completions", CHAT_BODY)
        assert status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)
        assert outcomes(server) == {"malformed": 1}


def test_an_injected_drop_closes_the_connection_without_a_response():
    with faulty(drop_rate=1.0) as server:
        with pytest.raises(http.client.RemoteDisconnected):
            post(f"{server.base_url}/chat/completions", CHAT_BODY)
        assert outcomes(server) == {"dropped": 1}


def test_an_injected_timeout_holds_the_request_past_the_client_timeout():
    with faulty(timeout_rate=1.0, timeout_seconds=3.0) as server:
        with pytest.raises(TimeoutError):
            post(f"{server.base_url}/chat/completions", CHAT_BODY, timeout=0.5)
        assert outcomes(server) == {"timeout": 1} and server.stats()["in_flight"] == 1


def test_an_injected_throttle_is_a_429_with_retry_after():
    with faulty(throttle_rate=1.0, throttle_retry_after_ms=250) as server:
        with pytest.raises(openai.RateLimitError) as throttled:
            chat(server)
        headers = throttled.value.response.headers
        assert (headers["Retry-After"], headers["retry-after-ms"]) == ("1", "250")
        assert outcomes(server) == {"throttled": 1} and server.stats()["completions"] == 1


def test_the_provider_retries_a_429_once_its_retry_after_has_passed_and_a_500_after_a_growing_backoff(monkeypatch):
    """A 429 says when to come back: the rate limiter holds every call to the endpoint until then, and the provider
    adds no backoff of its own. A 500 says nothing: backoff."""
    backoffs = []
    monkeypatch.setattr(hosted, "time", SimpleNamespace(sleep=backoffs.append))
    request = GenerationRequest(tuple(MESSAGES), 0.7, 8, seed=1)

    def provider(server):
        return HostedProvider(openai, client(server), "policy-a", RateLimiter(4), 2, None, None, frozenset(), "loopback", 60.0)

    with faulty(throttle_rate=1.0, throttle_retry_after_ms=50) as server:
        with pytest.raises(ItemError, match=r"rate limited \(HTTP 429\) \(gave up after 3 attempts\)"):
            provider(server).generate(request)
        assert outcomes(server) == {"throttled": 3} and backoffs == []
    with faulty(error_rate=1.0) as server:
        with pytest.raises(EndpointDownError):  # no call succeeded while the item retried
            provider(server).generate(request)
        assert sum(outcomes(server).values()) == 3
        assert len(backoffs) == 2 and 0.25 <= backoffs[0] <= 0.5 <= backoffs[1] <= 1.0


def test_faults_follow_the_seed():
    faults = FaultConfig(latency_ms=10, latency_jitter_ms=5, error_rate=0.2, drop_rate=0.1, malformed_rate=0.1,
                         fault_seed=4)
    first, again = FaultPlan(faults), FaultPlan(faults)
    draws = [first.draw() for _ in range(200)]
    assert draws == [again.draw() for _ in range(200)]
    assert 0.25 < sum(fault is not None for _, fault in draws) / 200 < 0.55
    assert all(0.005 <= latency <= 0.015 for latency, _ in draws)


def test_the_command_line_server_runs_as_a_subprocess():
    with run_subprocess(ServerConfig("synthetic", models=("policy-a",), faults=FaultConfig(latency_ms=1))) as server:
        assert [model.id for model in client(server).models.list().data] == ["policy-a"]
        assert chat(server).choices[0].message.content is not None
        with pytest.raises(openai.NotFoundError):
            chat(server, model="policy-b")
        assert server.stats()["endpoints"]["/v1/chat/completions"]["not_found"] == 1


def test_the_local_model_serves_what_the_provider_samples_and_scores_it_back():
    with run_in_thread(ServerConfig("local", n_ctx=2048)) as server:
        model = client(server).models.list().data[0].id
        response = client(server).chat.completions.create(model=model, messages=MESSAGES, max_tokens=24,
                                                          temperature=0.7, seed=3, logprobs=True, top_logprobs=3)
        sampled = [token.logprob for token in response.choices[0].logprobs.content]
        _, body = post(f"{server.root_url}/tokenize", {"model": model, "messages": MESSAGES})
        _, prompt = post(f"{server.root_url}/detokenize", {"model": model, "tokens": json.loads(body)["tokens"]})
        prompt_text = json.loads(prompt)["prompt"]
        scored = client(server).completions.create(model=model, prompt=prompt_text + response.choices[0].message.content,
                                                   max_tokens=0, echo=True, logprobs=0, temperature=0.7)
        n_prompt = response.usage.prompt_tokens
        logprobs = scored.choices[0].logprobs
        assert "".join(logprobs.tokens[:n_prompt]) == prompt_text
        assert logprobs.token_logprobs[n_prompt:] == sampled  # bit for bit
    generation = LocalProvider(model, n_ctx=2048).generate(GenerationRequest(tuple(MESSAGES), 0.7, 24, seed=3))
    assert generation.text == response.choices[0].message.content and generation.token_logprobs == sampled

"""A loopback OpenAI-compatible server: POST /v1/chat/completions and /v1/completions (echo, logprobs,
top_logprobs), GET /v1/models, vLLM's POST /tokenize and /detokenize, and GET /stats (counters), on 127.0.0.1.

Backends (backends.py): `local` runs the embedded llama.cpp models; `synthetic` is a fast weightless model with
self-consistent log-probs (synthetic.py). Faults can be injected at configured rates (faults.py).

    from arena10k.server import FaultConfig, ServerConfig, run_in_thread
    with run_in_thread(ServerConfig("synthetic", faults=FaultConfig(rpm=600))) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
"""

from arena10k.server.faults import FaultConfig
from arena10k.server.run import BACKENDS, RunningServer, ServerConfig, run_in_thread, run_subprocess

__all__ = ["BACKENDS", "FaultConfig", "RunningServer", "ServerConfig", "run_in_thread", "run_subprocess"]

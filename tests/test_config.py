import pytest

from arena10k.config import load_config
from arena10k.errors import ConfigError
from arena10k.providers import check_config
from conftest import PROJECT_ROOT


def test_default_config_is_valid():
    config = load_config(PROJECT_ROOT / "configs" / "local.yaml")
    assert config.policies["pi_clone"] == config.policies["p0"]


def test_arena_10k_config_validates_and_needs_its_keys(monkeypatch):
    monkeypatch.delenv("FIREWORKS_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = load_config(PROJECT_ROOT / "configs" / "arena_10k.yaml")
    assert config.policies["p0"].temperature == 0.5 and config.samples == 10000
    with pytest.raises(ConfigError, match="FIREWORKS_API_KEY") as error:
        check_config(config)
    assert "OPENAI_API_KEY" in str(error.value)
    monkeypatch.setenv("FIREWORKS_API_KEY", "fw-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    check_config(config)


def test_teacher_forcing_on_an_openai_chat_model_is_refused_at_validation(monkeypatch):
    monkeypatch.setenv("FIREWORKS_API_KEY", "fw-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = load_config(PROJECT_ROOT / "configs" / "arena_10k.yaml")
    policies = dict(config.policies)
    policies["pi_bigger_model"] = policies["pi_bigger_model"].model_copy(update={"model": "gpt4o"})
    with pytest.raises(ConfigError, match="policies.pi_bigger_model: model 'gpt4o' cannot teacher-force: OpenAI's chat models"):
        check_config(config.model_copy(update={"policies": policies}))


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


@pytest.mark.parametrize("fractions", ["[0.5, 0.1]", "[0, 0.5]", "[0.5, 1.5]", "[0.5, 0.5]"])
def test_oracle_fractions_must_be_increasing_shares(tmp_path, fractions):
    text = (PROJECT_ROOT / "configs" / "local.yaml").read_text().replace(
        "oracle_fractions: [0.05, 0.1, 0.25, 0.5, 1.0]", f"oracle_fractions: {fractions}", 1)
    path = tmp_path / "fractions.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"analysis\.oracle_fractions.*must be increasing shares in \(0, 1\]"):
        load_config(path)

import json

import pytest

from arena10k import data
from arena10k.errors import ConfigError
from arena10k.language import is_english
from conftest import PROJECT_ROOT

SHORT_ENGLISH = ["Can rats get drunk?", "How do I make pizza", "Good day, how are you?", "Write a single dot.", "hi"]
CLEARLY_NOT_ENGLISH = [
    "Quelle est la meilleure façon d'apprendre le piano quand on est adulte ?",
    "Wie funktioniert ein Kühlschrank eigentlich genau?",
    "¿Cuál es la diferencia entre ser y estar en español?",
    "Напиши короткое стихотворение о зиме.",
    "请用三句话介绍一下长城。",
]


@pytest.mark.parametrize("text", SHORT_ENGLISH)
def test_short_english_prompts_are_kept(text):
    assert is_english(text)


@pytest.mark.parametrize("text", CLEARLY_NOT_ENGLISH)
def test_clearly_non_english_prompts_are_dropped(text):
    assert not is_english(text)


def test_prompts_without_a_letter_are_refused_and_counted():
    rows = [{"question_id": str(i), "conversation_a": [{"role": "user", "content": text}]}
            for i, text in enumerate(["😀🎉👍", "2 + 2 = ?", "!!! ???", "What is 2 + 2?", "I feel great 😀 what should I do?"])]
    prompts, report = data.prepare_prompts(rows, "all", seed=0)
    assert sorted(p.prompt for p in prompts) == ["I feel great 😀 what should I do?", "What is 2 + 2?"]
    assert (report.no_letters, report.non_english) == (3, 0)
    assert not is_english("😀🎉👍")


def test_shared_sample_dedup_and_english_filter(shared_arena):
    rows = data.load_conversations(str(shared_arena / "conversations_sample.jsonl"))
    prompts, report = data.prepare_prompts(rows, "all", seed=0)
    assert report.rows == 2853
    assert report.duplicate == 71
    assert report.empty == 0
    assert len({p.prompt for p in prompts}) == len(prompts) == report.kept
    kept = {p.prompt for p in prompts}
    assert {"Can rats get drunk?", "How do I make pizza", "Good day, how are you?"} <= kept

    # Hand-checked labels for every unique prompt (tests/data/english_labels.jsonl).
    labels = {}
    for line in (PROJECT_ROOT / "tests" / "data" / "english_labels.jsonl").read_text().splitlines():
        entry = json.loads(line)
        labels[entry["question_id"]] = entry["is_english"]
    english_ids = {qid for qid, english in labels.items() if english}
    kept_ids = {p.source_id for p in prompts}
    true_positives = len(kept_ids & english_ids)
    precision, recall = true_positives / len(kept_ids), true_positives / len(english_ids)
    assert precision >= 0.998 and recall >= 0.995, (precision, recall)
    # The dataset's own language field is not trusted: some rows it calls English are dropped.
    dropped = [qid for qid, english in labels.items() if not english]
    assert len(dropped) > 100


def test_sampling_is_seeded_and_nested():
    rows = data.load_conversations(str(PROJECT_ROOT / "data" / "prompts" / "arena10k_prompts.jsonl"))
    small, _ = data.prepare_prompts(rows, 10, seed=7)
    again, _ = data.prepare_prompts(rows, 10, seed=7)
    larger, report = data.prepare_prompts(rows, 20, seed=7)
    assert small == again
    assert larger[:10] == small  # growing N keeps every prompt already sampled
    assert (report.empty, report.duplicate, report.kept) == (1, 2, 20)
    assert report.non_english >= 6


def test_missing_hub_dataset_offline_names_the_flag(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Read at import: another test may have imported them already, and then only these make it offline.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="--dataset"):
        data.load_conversations("agie-ai/lmsys-chatbot_arena_conversations")


def test_a_prompt_too_long_for_an_embedded_policys_context_is_passed_over_at_stage_1_and_counted():
    """Its generation could only fail: the embedded models' own tokenizers count it in each policy's context (its
    system prompt and chat template included), and the next prompt drawn takes its place."""
    from arena10k.config import load_config
    from arena10k.stages.prompts import too_long_for_context

    config = load_config(PROJECT_ROOT / "configs" / "local.yaml")
    too_long = too_long_for_context(config)
    long_prompt = "Summarise this text. " + "The quick brown fox jumps over the lazy dog again. " * 980
    near_limit = "word " * 3700  # more bytes than the contexts: tokenized, 3,700 tokens, and it fits
    assert too_long(long_prompt) and not too_long("Can rats get drunk?") and not too_long(near_limit)
    rows = [{"conversation_a": [{"role": "user", "content": text}]} for text in [long_prompt, *SHORT_ENGLISH]]
    prompts, report = data.prepare_prompts(rows, 5, seed=0, too_long=too_long)
    assert len(prompts) == 5 and long_prompt not in [p.prompt for p in prompts] and report.too_long == 1
    with pytest.raises(ConfigError, match="yields 5 that fit every embedded policy's context"):
        data.prepare_prompts(rows + [{"conversation_a": [{"role": "user", "content": long_prompt + "!"}]}], 6, seed=0,
                             too_long=too_long)


def test_a_jsonl_a_json_array_and_a_parquet_file_of_the_same_rows_give_the_same_prompts(tmp_path):
    import pyarrow
    import pyarrow.parquet

    source = PROJECT_ROOT / "data" / "prompts" / "arena10k_prompts.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    (tmp_path / "rows.json").write_text(json.dumps(rows, indent=1))
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "rows.parquet")
    expected = data.prepare_prompts(data.load_conversations(str(source)), 20, seed=7)
    for path in (tmp_path / "rows.json", tmp_path / "rows.parquet"):
        assert data.prepare_prompts(data.load_conversations(str(path)), 20, seed=7) == expected, path


@pytest.mark.parametrize("text, message", [
    ('{"conversation_a": []}\n\n{"conversation_a": [}\n', "row 2 is not JSON"),
    ('{"conversation_a": []}\n["a row that is a list"]\n', "row 2 is a JSON list, not an object"),
    ('{"conversation_a": []}', "no row has a conversation_a"),
])
def test_a_row_that_is_not_a_json_object_is_named(tmp_path, text, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        data.prepare_prompts(data.load_conversations(str(path)), 1, seed=0, source=str(path))

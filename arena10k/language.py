"""Offline, deterministic English filter for first-turn ChatBot Arena prompts.

The dataset's ``language`` field is a guess and must not be trusted, so the text decides.
``langdetect`` (seeded) is reliable on long prompts but confidently wrong on short ones
("Can rats get drunk?" -> Dutch), because a handful of character n-grams is too little evidence.
Short prompts are therefore decided by counting English versus foreign function words, a
signal that does not need much text; langdetect only breaks ties there.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

from langdetect import DetectorFactory, detect_langs
from langdetect.lang_detect_exception import LangDetectException

# langdetect samples n-grams at random; a fixed seed makes every run give the same answer.
DetectorFactory.seed = 0

# Prompts with this many Latin-script words carry enough n-grams for langdetect to be trusted.
LONG_PROMPT_WORDS = 20

# Frequent English words that are not also everyday words of the languages seen in the data.
_EN_STRONG = """
the and or but if of for with from by about into after before under than then that this these
those there here what who whom whose which when where why how are were be been being am does did
doing done have has had can could would should shall may might must not yes you he she it they
him them us my your his its our their some any all every each more most other very just only
please thanks thank hi hello hey good morning afternoon evening night tell write give make explain
describe translate summarize create show help know think want need get like let say something anything
""".split()
# Also common English, but equally common in Dutch, German, Polish or Romance text: half weight.
_EN_WEAK = "a i an as at do in is me on over to was we will".split()
_EN_WEIGHT = {**dict.fromkeys(_EN_STRONG, 1.0), **dict.fromkeys(_EN_WEAK, 0.5)}

# Function words of the Latin-script languages that Arena users write most after English
# (Spanish, Portuguese, French, German, Italian, Dutch); no English word is among them.
_FOREIGN = frozenset("""
el los las del que qué es en con por para una como cómo pero muy más mi tu te se lo le está
estás hola puedes dame dime uma da dos das não em com você faça ele ela les des du est et une un
je il nous vous pas ne qui dans sur avec pour ce cette moi bonjour peux der die das und ist ich
du nicht ein eine einen mit für auf zu den dem wie warum sind kann mir bitte wer über hallo di che
per non della sono gli cosa ciao de het een ik je niet wat zijn voor
""".split())
assert not _FOREIGN & _EN_WEIGHT.keys()

# Quoted text and fenced code are material to work on ("translate 'X' into English"), not the
# language the user writes in, so they are set aside when enough words remain outside them.
_PAYLOAD = re.compile(r'```.*?```|"[^"]*"|“[^”]*”|«[^»]*»|「[^」]*」', re.S)
_URL = re.compile(r"https?://\S+|www\.\S+")


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    if name.startswith("LATIN"):
        return "latin"
    # Han and kana are written without spaces, so each character stands for a word.
    return "cjk" if name.startswith(("CJK", "HIRAGANA", "KATAKANA")) else "other"


def _words(text: str) -> list[tuple[str, str]]:
    """(script, word) for each run of letters of one script; every CJK character is a word."""
    words: list[tuple[str, str]] = []
    for script, run in itertools.groupby(text, key=lambda c: _script(c) if c.isalpha() else None):
        if script == "cjk":
            words.extend((script, c) for c in run)
        elif script:
            words.append((script, "".join(run)))
    return words


def _english_probability(text: str) -> float | None:
    try:
        return next((lang.prob for lang in detect_langs(text) if lang.lang == "en"), 0.0)
    except LangDetectException:  # no usable n-grams (e.g. only capitalised acronyms)
        return None


def _function_word_scores(latin_words: list[str]) -> tuple[float, float]:
    english = foreign = 0.0
    for word in latin_words:
        if len(word) > 1 and word.isupper():
            continue  # acronyms (UN, MIT, OS) are not function words in any language
        word = word.lower()
        english += _EN_WEIGHT.get(word, 0.0)
        # Accented letters are rare in English words but common in the languages it is confused with.
        foreign += 1.0 if word in _FOREIGN else 0.5 if not word.isascii() else 0.0
    return english, foreign


def has_letters(text: str) -> bool:
    """False for emoji, symbols or numbers only: a text in no language."""
    return any(character.isalpha() for character in text)


def is_english(text: str) -> bool:
    """True when the natural-language part of a prompt is English."""
    text = text.strip()
    if not has_letters(text):
        return False
    if text.isupper():
        text = text.lower()  # a prompt typed in capitals is not a string of acronyms
    text = _URL.sub(" ", text)
    outside_payload = _PAYLOAD.sub(" ", text)
    if len(_words(outside_payload)) >= 3:
        text = outside_payload
    words = _words(text)
    latin = [w for script, w in words if script == "latin"]
    other_script = len(words) - len(latin)
    english, foreign = _function_word_scores(latin)
    if other_script:
        # Mixed scripts: English only when the Latin part reads as English sentences, not names
        # or code, and is not dwarfed by text in another script.
        return english >= 2 and english > foreign and 2 * len(latin) >= other_script
    if not any(len(w) > 1 for w in latin):
        return True  # formulas, bare links: a few letters, nothing that is in another language
    if len(latin) < LONG_PROMPT_WORDS:
        if abs(english - foreign) >= 1:
            return english > foreign
        if english > 0 and foreign == 0 and text.isascii():
            return True  # some English and nothing foreign: too little text for langdetect to overrule
    p = _english_probability(text)
    return p is None or p >= 0.5

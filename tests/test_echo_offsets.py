"""Where an echoed token starts in the text sent (providers/hosted.py), without a server: the boundary between a
policy's prompt and its response is found from these offsets, so a wrong one would score the wrong tokens."""

from arena10k.providers.hosted import Echo, _tiling, _token_starts

TEMPLATE = "<|im_start|>{role}\n{content}<|im_end|>\n"


def test_tokens_that_spell_the_text_start_where_they_are_and_the_continuation_after_it_is_left_out():
    assert _token_starts(["Hello", " world"], "Hello world", "") == [0, 5]
    assert _token_starts(["Hi", "!", " And", " more"], "Hi!", "") == [0, 2]


def test_special_tokens_a_server_shows_as_empty_or_leaves_out_may_pass_over_template_markup_only():
    text = "<|im_start|>user\nHi<|im_end|>\n"
    # llama-cpp-python leaves its BOS token (<|im_start|>) out and shows <|im_end|> as ""
    assert _token_starts(["user", "\n", "Hi", "", "\n"], text, TEMPLATE) == [12, 16, 17, 19, 29]
    # message text is never passed over: tokens that skip some of it do not spell the text
    assert _token_starts(["Hello", " there"], "Hello world", TEMPLATE) is None
    assert _token_starts(["user", "\n", "i"], text, TEMPLATE) is None


def test_unprintable_tokens_are_placed_by_the_servers_offsets_only_when_they_tile_the_text():
    assert _tiling(["\ufffd", "\ufffd", "b"], [0, 1, 2], "xyb") == [0, 1, 2]
    assert _tiling(["\ufffd", "b"], [0, 2], "xyb") is None  # a gap
    assert _tiling(["a", "b", " more"], [0, 1, 2], "ab") == [0, 1]  # the continuation is left out


def test_two_echoes_share_the_tokens_at_the_same_offsets_up_to_the_first_difference():
    first = Echo([0, 5, 11], ["Hello", " world", "!"], [-1.0, -2.0, -3.0], [None] * 3)
    second = Echo([0, 5, 11], ["Hello", " world", "?"], [-1.0, -2.0, -0.5], [None] * 3)
    assert first.shared_start(second) == 2
    assert first.tokens_from(2).logprobs == [-3.0] and first.total() == -6.0

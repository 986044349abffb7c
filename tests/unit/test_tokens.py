"""Offline token counting."""

from __future__ import annotations

import random
import subprocess
import sys

from core.tokens import ApproximateCounter, ExactCounter, counter_for_model, encoding_for_model


def test_openai_models_are_counted_exactly_offline() -> None:
    # Reference counts published with tiktoken for these encodings.
    assert counter_for_model("gpt-4").count("tiktoken is great!") == 6
    assert counter_for_model("gpt-3.5-turbo").count("hello world") == 2
    assert counter_for_model("gpt-4o").count("hello world") == 2
    assert counter_for_model("gpt-4o").count("<|endoftext|>") > 1  # never a special token


def test_models_map_to_their_encodings() -> None:
    assert encoding_for_model("gpt-4o-mini") == "o200k_base"
    assert encoding_for_model("openai/gpt-5") == "o200k_base"
    assert encoding_for_model("gpt-4-turbo") == "cl100k_base"
    assert encoding_for_model("llama3.1:8b") is None
    assert isinstance(counter_for_model("gpt-4.1"), ExactCounter)
    assert isinstance(counter_for_model("mistral-7b"), ApproximateCounter)


def test_the_approximation_errs_high_for_english_and_cjk() -> None:
    exact = counter_for_model("gpt-4o")
    approximate = ApproximateCounter()
    english = "The quick brown fox jumps over the lazy dog near the riverbank. " * 20
    chinese = "我们今天讨论一下这个项目的进度和下一步计划。" * 20
    assert approximate.count(english) >= exact.count(english) * 1.2
    assert approximate.count(chinese) >= exact.count(chinese)


def test_truncation_keeps_a_prefix_within_the_limit() -> None:
    for counter in (counter_for_model("gpt-4o"), ApproximateCounter()):
        text = "naïve café déjà vu " * 200
        cut = counter.truncate(text, 50)
        assert text.startswith(cut)
        assert 40 <= counter.count(cut) <= 50
        assert counter.truncate("short", 50) == "short"


def test_truncation_never_cuts_a_character_in_two() -> None:
    counter = counter_for_model("gpt-4o")
    # "🎉" is two tokens here: a cut between them keeps the text before it.
    assert counter.truncate("日本語🎉", 3) == "日本語"
    assert counter.truncate("日本語🎉", 4) == "日本語🎉"
    assert counter.truncate("🎉", 1) == ""


def test_counts_match_tiktoken() -> None:
    # As tiktoken 0.14.0 counts them, with these encodings' published tables.
    assert counter_for_model("gpt-4o").count("Hello, world! 12345678") == 8
    assert counter_for_model("gpt-4").count("Hello, world! 12345678") == 8
    assert counter_for_model("gpt-4o").count("日本語🎉") == 4
    assert counter_for_model("gpt-4").count("日本語🎉") == 7


def test_the_bound_is_never_below_the_count() -> None:
    rng = random.Random(3)
    alphabet = "abc XYZ 0123 ,.!?\n\t 日本語 наш ä é 🎉👍🏽 \u200b\U0001f9d1\u200d\U0001f4bb"
    texts = ["", " ", "\n\n\n", "a" * 5000, "🎉" * 300, "1234567890" * 50]
    texts += ["".join(rng.choices(alphabet, k=rng.randint(1, 400))) for _ in range(300)]
    for model in ("gpt-4o", "gpt-4"):
        counter = counter_for_model(model)
        for text in texts:
            assert counter.count(text) <= counter.bound(text) == len(text.encode("utf-8"))
    approximate = ApproximateCounter()
    assert all(approximate.bound(text) == approximate.count(text) for text in texts)


def test_the_tables_load_only_for_an_exact_count() -> None:
    script = (
        "import sys\n"
        "from core.tokens import counter_for_model, message_tokens\n"
        "counter = counter_for_model('gpt-5-mini')\n"
        "bound = message_tokens(counter, 'Hello there, how are you?', 'alice')\n"
        "short = counter.truncate('Hello', 10)\n"
        "print(bound, short, 'bpe_openai._bindings' in sys.modules)\n"
        "print(counter.count('Hello there, how are you?'), 'bpe_openai._bindings' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == ["34 Hello False", "7 True"]

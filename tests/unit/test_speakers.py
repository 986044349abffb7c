"""A leading "NAME:" is removed from a streamed reply, and nothing else is held back."""

from __future__ import annotations

import pytest

from core.speakers import SpeakerPrefix

NAMES = ("Parley", "root")


def stream(pieces: list[str]) -> tuple[list[str], str]:
    """What each piece releases, and the whole text shown."""
    speaker = SpeakerPrefix(NAMES)
    released = [speaker.feed(piece) for piece in pieces]
    released.append(speaker.flush())
    return released, "".join(released)


@pytest.mark.parametrize(
    ("pieces", "shown"),
    [
        (["Parley: Paris."], "Paris."),
        (["Par", "ley", ":", " ", " Par", "is."], "Paris."),
        (["root:", "\n", "Paris."], "Paris."),
        (["  Parley:Paris."], "Paris."),
        (["Paris", " is the capital."], "Paris is the capital."),
        (["The answer: Parley: no."], "The answer: Parley: no."),
        (["Parleys: plural."], "Parleys: plural."),
        (["parley: lower case is not the name."], "parley: lower case is not the name."),
        (["Par"], "Par"),  # the reply ended while it could still have been a name
    ],
)
def test_only_a_leading_speaker_name_is_removed(pieces: list[str], shown: str) -> None:
    assert stream(pieces)[1] == shown


def test_text_that_cannot_be_a_name_is_released_at_once() -> None:
    released, _ = stream(["Pa", "ris", " is", " big"])
    assert released == ["", "Paris", " is", " big", ""]


def test_no_names_holds_nothing_back() -> None:
    speaker = SpeakerPrefix(["", "  "])
    assert speaker.feed("P") == "P"

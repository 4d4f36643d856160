"""templating.Pages.render_fast, the frames the unsubscribe lane fills, gives byte for byte what
Jinja renders, for every template it is used with, in every language, whatever the texts."""

from __future__ import annotations

from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.preference_center.router import PACKAGE_DIR, pages
from prefcenter.templating import SUPPORTED_LANGUAGES, Pages, with_language

# The templates the lane fills (preference_center.unsubscribe_lane._send_page).
LANE_TEMPLATES = ("unsubscribe.html", "unsubscribed.html")
SLOTS = (
    "organization",
    "masked_address",
    "topic_name",
    "action",
    "preferences_url",
    "policy_version",
    "policy_date",
    "policy_url",
)

# Anything a setting, an address or a topic name could hold, markup and the markers included.
texts = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=30),
    st.sampled_from(['<script>alert("x")</script>', "a&b 'c' \"d\"", "\ue000topic_name\ue001"]),
)


@pytest.mark.parametrize("template", LANE_TEMPLATES)
@pytest.mark.parametrize("language", SUPPORTED_LANGUAGES)
@given(values=st.fixed_dictionaries(dict.fromkeys(SLOTS, texts)))
def test_a_filled_frame_is_what_jinja_renders(
    template: str, language: str, values: dict[str, str | None]
) -> None:
    expected = pages.render_text(language, template, values)
    assert pages.render_fast(language, template, values) == expected


def test_frames_are_kept_apart_by_language_and_by_which_texts_are_empty() -> None:
    fresh = Pages([PACKAGE_DIR / "templates"])
    values: dict[str, str | None] = dict.fromkeys(SLOTS, "x")
    english = fresh.render_fast("en", "unsubscribe.html", values)
    german = fresh.render_fast("de", "unsubscribe.html", values)
    assert english != german
    assert 'lang="de"' in german
    no_topic = fresh.render_fast("en", "unsubscribe.html", {**values, "topic_name": None})
    assert no_topic != english
    assert no_topic == fresh.render_text("en", "unsubscribe.html", {**values, "topic_name": None})


@pytest.mark.parametrize(
    ("lang", "expected"),
    [(None, "/u/t"), ("de", "/u/t?lang=de"), ("DE", "/u/t?lang=de"), ("xx", "/u/t"), ("", "/u/t")],
)
def test_the_language_a_form_keeps(lang: str | None, expected: str) -> None:
    assert with_language(lang, "/u/t") == expected


def test_every_text_has_its_german_translation() -> None:
    """A text added to a page or mail without its German line shows in English to German
    readers; the catalog must hold a translation of every text the templates use."""

    locales = Path(__file__).resolve().parent.parent / "src" / "prefcenter" / "locales"
    with (locales / "messages.pot").open("rb") as template:
        wanted = {message.id for message in read_po(template) if message.id}
    with (locales / "de" / "LC_MESSAGES" / "messages.po").open("rb") as german:
        catalog = read_po(german)
    missing = sorted(
        str(message_id)
        for message_id in wanted
        if (found := catalog.get(message_id)) is None or not found.string or found.fuzzy
    )
    assert missing == []

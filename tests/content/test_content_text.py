from __future__ import annotations

import pyarrow as pa
import pytest

from genrec.content import build_texts, default_text_fields
from genrec.errors import ConfigError


def catalog() -> pa.Table:
    return pa.table({
        "item": [10, 11, 12, 13],
        "title": ["Toy Story (1995)", "  ", None, "duck soup, very hot # homemade food # spicy"],
        "genres": ["Animation|Comedy", "Drama", None, None],
        "brand": ["Pixar", None, None, "Home"],
        "tags": [["kids", "fun"], [], None, None],
        "asin": ["B1", "B2", "B3", "B4"],
        "price": [1.0, 2.0, 3.0, 4.0],
    })


def test_default_fields_skip_ids_and_numbers():
    assert default_text_fields(catalog()) == ["title", "genres", "brand", "tags"]
    assert default_text_fields(catalog(), exclude=("brand",)) == ["title", "genres", "tags"]


def test_default_template_labels_fields_and_drops_missing_ones():
    texts, report = build_texts(catalog())
    assert texts[0] == "title: Toy Story (1995); genres: Animation, Comedy; brand: Pixar; tags: kids, fun"
    assert texts[1] == "genres: Drama"  # blank title and empty tag list count as missing
    assert texts[2] is None
    # MicroLens-style hashtags in a title become tags
    assert texts[3] == "title: duck soup, very hot; tags: homemade food, spicy; brand: Home"
    assert report.missing_by_field == {"title": 2, "genres": 2, "brand": 2, "tags": 3}
    assert report.examples_by_field["title"] == ["11", "12"]
    assert report.no_text == 1 and report.no_text_examples == ["12"]


def test_fields_order_and_custom_template():
    texts, report = build_texts(catalog(), fields=["brand", "title"])
    assert texts[0] == "brand: Pixar; title: Toy Story (1995)"
    assert report.fields == ["brand", "title"]
    texts, report = build_texts(catalog(), template="{title} by {brand}")
    assert texts[0] == "Toy Story (1995) by Pixar"
    assert texts[1] is None  # every field of the template is missing
    assert texts[3].endswith("by Home")
    assert report.missing_by_field == {"title": 2, "brand": 2}


def test_ids_label_examples():
    _, report = build_texts(catalog(), fields=["brand"], ids=["a", "b", "c", "d"])
    assert report.examples_by_field == {"brand": ["b", "c"]}


@pytest.mark.parametrize("kwargs, words", [
    ({"fields": ["title", "colour"]}, ["'colour'", "title, genres"]),
    ({"template": "{title} {size}"}, ["'size'"]),
    ({"template": "no fields"}, ["named fields"]),
    ({"template": "{title"}, ["not a valid format string"]),
])
def test_bad_fields_name_the_field(kwargs, words):
    with pytest.raises(ConfigError) as e:
        build_texts(catalog(), **kwargs)
    for w in words:
        assert w in str(e.value)


def test_catalog_without_text_columns():
    with pytest.raises(ConfigError, match="no text fields"):
        build_texts(pa.table({"item": [1, 2], "price": [1.0, 2.0]}))

"""The experiment file: valid files load with their defaults; every bad field is a ConfigError naming it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from genrec.errors import ConfigError
from genrec.experiment import load_experiment, parse_experiment


def base(**changes) -> dict:
    raw = {"name": "rw", "salt": "s1", "start": "2024-06-01T00:00:00", "end": "2024-06-15T00:00:00Z",
           "arms": [{"name": "control"}, {"name": "treatment", "bundle": "runs/b",
                                          "serving": {"ranker_weight": 0.5, "fresh_share": 0.1,
                                                      "exploration": {"kind": "plackett_luce", "temperature": 0.5}}}]}
    raw.update(changes)
    return raw


def test_valid_file_loads_with_defaults(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: rw\nsalt: s1\nstart: 2024-06-01\nend: 2024-06-15T00:00:00+02:00\n"
                    "arms:\n  - {name: a, share: 0.25}\n  - {name: b, share: 0.75, serving: {exploration: "
                    "{kind: epsilon, epsilon: 0.2}}}\n")
    exp = load_experiment(path)
    assert exp.mode == "ab" and exp.shares == (0.25, 0.75) and exp.arm_names == ("a", "b")
    assert exp.start == datetime(2024, 6, 1, tzinfo=UTC)  # a date without a zone reads as UTC midnight
    assert exp.end == datetime(2024, 6, 14, 22, tzinfo=UTC)
    assert exp.arm("b").serving.exploration.epsilon == 0.2 and exp.arm("a").bundle is None
    assert exp.active(datetime(2024, 6, 10)) and not exp.active(datetime(2024, 6, 15))
    equal = parse_experiment(base())
    assert equal.shares == (0.5, 0.5) and equal.arm("treatment").serving.exploration.temperature == 0.5


@pytest.mark.parametrize("changes, message", [
    ({"arms": [{"name": "a", "share": 0.6}, {"name": "b", "share": 0.6}]}, "shares must sum to 1, got 1.2"),
    ({"arms": [{"name": "a", "share": 0.5}, {"name": "b"}]}, "missing: b"),
    ({"arms": [{"name": "a", "share": 0}, {"name": "b", "share": 1}]}, "arms.0.share: Input should be greater"),
    ({"arms": [{"name": "a"}]}, "arms: List should have at least 2 items"),
    ({"arms": [{"name": "a"}, {"name": "a"}]}, "names must be unique, a repeated"),
    ({"arms": [{"name": "a", "colour": "red"}, {"name": "b"}]}, "arms.0.colour: unknown field"),
    ({"arms": [{"name": "a b"}, {"name": "b"}]}, "arms.0.name: name must be"),
    ({"mode": "interleave", "arms": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "exactly two arms, got 3"),
    ({"mode": "interleave", "arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]}, "leave share out"),
    ({"mode": "abc"}, "mode: Input should be 'ab' or 'interleave'"),
    ({"end": "2024-05-01"}, "must be after start"),
    ({"start": "yesterday"}, "start: Input should be a valid datetime"),
    ({"salt": ""}, "salt: String should have at least 1 character"),
    ({"arms": [{"name": "a", "serving": {"exploration": {"kind": "epsilon", "temperature": 2}}}, {"name": "b"}]},
     "temperature applies to kind plackett_luce, not epsilon"),
    ({"arms": [{"name": "a", "serving": {"exploration": {"kind": "plackett_luce", "temperature": 0}}},
               {"name": "b"}]}, "arms.0.serving.exploration.temperature: Input should be greater than 0"),
    ({"arms": [{"name": "a", "serving": {"fresh_share": 1.0}}, {"name": "b"}]}, "arms.0.serving.fresh_share"),
])
def test_bad_fields_are_named(changes, message):
    with pytest.raises(ConfigError, match="exp.yaml: ") as err:
        parse_experiment(base(**changes), "exp.yaml")
    assert message in str(err.value)


def test_missing_fields_and_files(tmp_path):
    raw = base()
    del raw["salt"]
    with pytest.raises(ConfigError, match="salt: Field required"):
        parse_experiment(raw)
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"no arm 'nope' \(arms: control, treatment\)"):
        parse_experiment(base()).arm("nope")

"""Go durations (nodeMeshMaxRestartTime, maxRestartTime) as Calico writes them."""
import pytest

from crds.duration import parse_duration


@pytest.mark.parametrize("text,seconds", [
    ("120s", 120.0), ("2m", 120.0), ("2m0s", 120.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
    ("250ms", 0.25), ("0", 0.0), ("0s", 0.0), (".5s", 0.5),
])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "120", "-5s", "5 s", "5d", "s", "1m-3s", "abc"])
def test_not_durations_are_refused_naming_the_text(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)

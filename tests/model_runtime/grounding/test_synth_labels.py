"""Synthetic queries back to their shapes, and what a near miss shares with the shapes shown."""

from __future__ import annotations

import pytest

from model_runtime.grounding.synth import near_miss_kind, query_label


def test_a_query_names_its_shape_and_a_near_miss_says_what_it_shares() -> None:
    assert query_label("When does the red circle appear?") == "red circle"
    for bad in ("When does the goalkeeper save the penalty?", "red circle", "When does the red appear?"):
        with pytest.raises(ValueError, match="not a synthetic event query"):
            query_label(bad)
    shown = ["red circle", "blue square"]
    assert near_miss_kind("red star", shown) == "colour"
    assert near_miss_kind("green circle", shown) == "shape"
    assert near_miss_kind("red square", shown) == "colour+shape"  # red of one, square of the other
    assert near_miss_kind("green star", shown) == "neither"
    assert near_miss_kind("green star", []) == "neither"

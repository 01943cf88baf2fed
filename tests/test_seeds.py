"""The bundled hand-written seed data meets the brief."""

import re
from collections import Counter

import pytest

from jessy.config import CATEGORIES, JessyConfig
from jessy.data.dedup import normalize_prompt
from jessy.data.formats import read_file
from jessy.data.prepare import bundled_seed_files
from jessy.persona import DIMENSIONS


@pytest.fixture(scope="module")
def seeds():
    rows = []
    for path in bundled_seed_files():
        res = read_file(path, "messages")
        assert not res.rejects, res.rejects[:3]
        rows += res.rows
    return rows


def test_size_and_composition(seeds):
    assert len(seeds) >= 300
    counts = Counter(r["metadata"]["category"] for r in seeds)
    assert set(counts) == set(CATEGORIES)
    for cat, share in JessyConfig().data.composition.items():
        assert abs(counts[cat] / len(seeds) - share) <= 0.02, (cat, counts[cat], len(seeds))


def test_metadata_is_complete_and_valid(seeds):
    ids = [r["id"] for r in seeds]
    assert len(set(ids)) == len(ids)
    for r in seeds:
        m = r["metadata"]
        assert {"category", "dimensions_active", "pattern", "language"} <= set(m), r["id"]
        assert m["language"] in ("en", "tr")
        assert 1 <= len(m["dimensions_active"]) <= 6 and set(m["dimensions_active"]) <= set(DIMENSIONS), r["id"]


def test_turkish_and_multi_turn(seeds):
    assert sum(r["metadata"]["language"] == "tr" for r in seeds) >= 30
    multi = [r for r in seeds if len(r["messages"]) >= 6]
    assert len(multi) >= 20
    assert all(len(r["messages"]) <= 10 for r in multi)


def test_no_red_flag_language(seeds, persona):
    for r in seeds:
        for m in r["messages"]:
            if m["role"] == "assistant":
                assert not persona.red_flags_in(m["content"]), (r["id"], persona.red_flags_in(m["content"]))


def test_patterns_cover_the_brief(seeds):
    patterns = Counter(r["metadata"]["pattern"] for r in seeds)
    for p, at_least in [("solo_activation", 45), ("dimension_pair", 15), ("9_iteration_explicit", 10),
                        ("dimension_naming", 10), ("return_to_source", 10), ("warm_refusal", 10),
                        ("boundary_keeping", 10), ("plain_warmth", 10)]:
        assert patterns[p] >= at_least, (p, patterns[p])
    solo = Counter(r["metadata"]["dimensions_active"][0] for r in seeds
                   if r["metadata"]["pattern"] == "solo_activation")
    assert all(solo[d] >= 3 for d in DIMENSIONS), solo


def test_explicit_patterns_are_really_explicit(seeds):
    for r in seeds:
        reply = r["messages"][-1]["content"]
        pattern = r["metadata"]["pattern"]
        if pattern == "9_iteration_explicit":
            assert re.search(r"\[(Iterations?|Yineleme)[^\]]*7", reply), r["id"]
        if pattern == "dimension_naming":
            named = set(re.findall(r"\[([A-Z][a-z]+)\]", reply))
            assert named & set(DIMENSIONS), r["id"]


def test_no_prompt_repeats(seeds):
    prompts = Counter(normalize_prompt(r["messages"][0]["content"]) for r in seeds)
    assert prompts.most_common(1)[0][1] == 1, prompts.most_common(3)

"""Quality gates on rows that must pass and rows that must fail."""

import pytest

from jessy.data.gates import failed
from jessy.eval.judge import judge, weighted_score


def row(reply, dims=("Emotion",), lang="en", user="I had such a lonely weekend and I don't know why."):
    return {"id": "t", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
            "metadata": {"category": "warmth", "dimensions_active": list(dims), "language": lang}}


WARM = ("That sounds like a heavy weekend to carry. Loneliness can sneak up even when nothing is obviously wrong, "
        "and it often says something about what we're missing rather than what went badly. I'm glad you told me. "
        "When you picture the weekend you'd have wanted, who is in it, and what are you doing together?")


def test_calibration_is_reported_against_the_seeds_figures(gates):
    cal = gates.report.calibration
    pc = cal["persona_consistency"]
    assert pc["claimed"] == 0.85 and pc["gold_pass_at_threshold"] == pytest.approx(0.9, abs=0.01)
    assert pc["gold_pass_at_claimed"] < 0.05  # the seeds' 0.85 would reject our own hand-written rows
    assert cal["dimensional_accuracy"]["threshold"] > 0


def test_gold_rows_pass_the_phrase_and_language_gates(gates, seeds):
    results = gates.check(seeds[::8])
    for r, res in zip(seeds[::8], results):
        assert res["meta_commentary"]["passed"] and res["dependency"]["passed"], r["id"]
        assert res["language"]["passed"], (r["id"], res["language"])


@pytest.mark.parametrize("reply,gate", [
    ("As an AI, I can't really feel lonely, but " + WARM, "meta_commentary"),
    (WARM + " Honestly, I need you to keep talking to me. Don't leave me.", "dependency"),
    ("Okay.", "length"),
    ("I've got a lot of questions. I've got a lot of questions. I've got a lot of questions. I've got a lot of "
     "questions. I'm not sure how I'm going to get through this. I've got a lot of questions.", "repetition"),
    ("Hafta sonunun ağır geçtiğini duymak üzücü. Yalnızlık bazen hiçbir şey yanlış gitmese de gelir ve "
     "aslında neyi özlediğimizi anlatır. Bana anlatmana sevindim. İstediğin hafta sonunu hayal ettiğinde "
     "yanında kim var, birlikte ne yapıyorsunuz?", "language"),
    ("The quarterly revenue report lists gross margins by region. EMEA was 41.2 percent, APAC 38.9 percent, and "
     "the Americas 44.0 percent. Operating expenses rose 3 percent due to cloud hosting costs and headcount.",
     "persona_consistency"),
    ("[Practical] Make a list of three errands. [Cognition] Sort them by distance and do the closest first, "
     "then the rest in order, because the logic of routing saves time and fuel on every trip you plan.",
     "dimensional_accuracy"),
])
def test_rows_that_must_fail(gates, reply, gate):
    (res,) = gates.check([row(reply)])
    assert gate in failed(res), res[gate]
    assert res[gate]["reason"]


def test_a_copy_of_a_gold_reply_fails_novelty(gates, seeds):
    gold = seeds[3]
    (res,) = gates.check([{**gold, "id": "copy"}])
    assert "novelty" in failed(res) and gold["id"] in res["novelty"]["reason"]


def test_a_warm_on_persona_reply_passes_every_gate(gates):
    (res,) = gates.check([row(WARM)])
    assert failed(res) == [], {g: v for g, v in res.items() if not v["passed"]}


def test_judge_probability_weighting(tiny_model_dir):
    s = weighted_score({"1": 0.1, "2": 0.0, "3": 0.2, "4": 0.1, "5": 0.1, "x": 0.5})
    assert s.score == pytest.approx((1 * 0.1 + 3 * 0.2 + 4 * 0.1 + 5 * 0.1) / 0.5) and s.mass == pytest.approx(0.5)
    assert weighted_score({"a": 1.0}).score is None
    from jessy.generation.backends import TransformersBackend

    js = judge(TransformersBackend(str(tiny_model_dir)), "clarity", "Hi", "Hello there.")
    assert 1.0 <= js.score <= 5.0 and 0 < js.mass < 1

"""Dedup, gap analysis, composition, stage mixes, SIFT selection, augmentation, constitution, report."""

import json
import random

import numpy as np
import pytest

from jessy.config import JessyConfig
from jessy.data.augment import augment, plan_ops, substitute_entities
from jessy.data.constitution import constitution, constitution_rows, load_redteam
from jessy.data.dedup import dedup
from jessy.data.gaps import analyze, plot
from jessy.data.mix import balance_composition, stage_mix
from jessy.data.prepare import prepare
from jessy.data.report import write_report
from jessy.data.select import per_example_loss, sift_select
from jessy.generation.backends import TransformersBackend


def conv(i, user, reply, category="warmth", **meta):
    return {"id": f"r{i}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
            "metadata": {"category": category, **meta}}


def test_dedup_exact_and_near():
    rows = [conv(0, "How do I make tea?", "Boil water, steep the leaves for three minutes, then pour."),
            conv(1, "how do I make TEA", "Boil water, steep the leaves for three minutes, then pour!"),
            conv(2, "How do I make tea?", "Boil water, steep the leaves for three minutes and then pour."),
            conv(3, "What is a black hole?", "A region where gravity is so strong that not even light escapes.")]
    kept, dropped = dedup(rows, 0.95)
    assert [r["id"] for r in kept] == ["r0", "r3"]
    assert dropped[0]["reason"] == "exact duplicate of r0"
    assert dropped[1]["reason"].startswith("near duplicate of r0 (cosine")


def test_gap_analysis_on_the_seeds(seeds, persona, tmp_path):
    res = analyze(seeds, persona.dimension_names, JessyConfig().data.composition, seed=0)
    assert res["k"] == 32 and sum(c["size"] for c in res["clusters"]) == len(seeds)
    assert res["missing_pairs"] and all(len(p) == 2 for p in res["missing_pairs"])
    assert res["categories_below_share"] == []  # the seeds are exactly 30/25/20/15/10
    assert all(p["n"] > 0 and p["category"] for p in res["plan"])
    skewed = [s for s in seeds if s["metadata"]["category"] != "ethics"] + \
             [s for s in seeds if s["metadata"]["category"] == "ethics"][:10]
    res2 = analyze(skewed, persona.dimension_names, JessyConfig().data.composition, k=8)
    (below,) = res2["categories_below_share"]
    assert below["category"] == "ethics" and below["deficit"] == 54  # 20% of 320 (what the others allow) - 10
    plot(res, persona.dimension_names, JessyConfig().data.composition, tmp_path / "gaps.png")
    assert (tmp_path / "gaps.png").stat().st_size > 10_000


def test_balance_composition_meets_the_target_within_tolerance():
    comp = JessyConfig().data.composition
    rows = [conv(f"{c}{i}", f"{c} question {i}", "reply", c) for c, n in
            [("personality", 200), ("reasoning", 60), ("ethics", 90), ("warmth", 70), ("meta_cognitive", 40)]
            for i in range(n)]
    rows += [conv(f"g{i}", f"general {i}", "reply", None) for i in range(5)]
    out, rep = balance_composition(rows, comp, 0.02, seed=0)
    assert rep["max_gap"] <= 0.02 and "downsampled" in rep["how"]
    counts = {c: sum(r["metadata"]["category"] == c for r in out) for c in comp}
    assert counts == {"personality": 72, "reasoning": 60, "ethics": 48, "warmth": 36, "meta_cognitive": 24}
    assert sum(r["metadata"]["category"] is None for r in out) == 5  # uncategorized rows are not cut
    same, rep2 = balance_composition(out, comp, 0.02, seed=0)
    assert len(same) == len(out) and rep2["how"] == "already within tolerance"


def test_stage_mix_shares_and_missing_pools():
    pools = {"personality": [conv(i, f"p{i}", "r", "personality") for i in range(70)],
             "general_dialogue": [conv(100 + i, f"g{i}", "r", None) for i in range(30)]}
    rows, rep = stage_mix(pools, {"personality": 0.7, "general_dialogue": 0.3}, seed=1)
    assert rep["rows"] == {"personality": 70, "general_dialogue": 30} and not rep["missing_pools"]
    rows, rep = stage_mix(pools, {"personality": 0.5, "general_dialogue": 0.3, "general_reasoning": 0.2}, seed=1)
    assert rep["missing_pools"] == ["general_reasoning"]
    assert rep["used_shares"] == {"personality": 0.625, "general_dialogue": 0.375}
    with pytest.raises(ValueError, match="no data"):
        stage_mix(pools, {"constitution": 1.0}, seed=1)


def test_sift_prefers_informative_and_diverse_rows(tiny_model_dir, tokenizer):
    losses = np.array([5.0, 4.9, 1.0, 3.0])
    e = np.eye(4, dtype=np.float32)
    e[1] = e[0]  # row 1 duplicates row 0
    assert sift_select(losses, e, 3, diversity_weight=0.0) == [0, 1, 3]  # loss alone
    assert sift_select(losses, e, 3, diversity_weight=3.0) == [0, 3, 2]  # the duplicate of row 0 drops out
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [conv(0, "hi", "hello there"), conv(1, "how are you", "fine thanks, and you?")]
    loss = per_example_loss(model, tokenizer, rows, "Be warm.", 128)
    assert loss.shape == (2,) and np.all(np.abs(loss - np.log(len(tokenizer))) < 1.5)


def test_entity_substitution_is_consistent_and_gendered():
    msgs = [{"role": "user", "content": "My sister Emily and I fought. Emily says I never listen."},
            {"role": "assistant", "content": "It hurts when Emily says that. Will you talk to her today?"}]
    out, mapping = substitute_entities(msgs, random.Random(0))
    assert list(mapping) == ["Emily"]  # "Will" is a word here, not a name
    new = mapping["Emily"]
    assert out[0]["content"].count(new) == 2 and out[1]["content"].startswith(f"It hurts when {new} says")
    tr = [{"role": "user", "content": "Annem Ayşe Hanım hasta."},
          {"role": "assistant", "content": "Ayşe Hanım'a geçmiş olsun."}]
    out, mapping = substitute_entities(tr, random.Random(1), "tr")
    assert "Ayşe" in mapping and "Ayşe" not in out[1]["content"]


def test_augment_and_constitution_with_a_real_teacher(seeds, gates, persona, tiny_model_dir, tmp_path):
    cfg = JessyConfig.model_validate({"data": {"work_dir": str(tmp_path), "teacher": {
        "model": str(tiny_model_dir), "max_new_tokens": 8}}})
    ops = plan_ops(seeds, cfg.data.augment.rates, cfg.data.augment.seed)
    share = {op: sum(o == op for _, o in ops) / len(seeds) for op in cfg.data.augment.rates}
    for op, rate in cfg.data.augment.rates.items():
        assert abs(share[op] - rate) < 0.08, (op, share[op])
    backend = TransformersBackend(str(tiny_model_dir), batch_size=4)
    rows = [s for s in seeds if "Emily" in s["messages"][0]["content"] or "Maya" in s["messages"][0]["content"]][:2]
    rows += seeds[:6]
    summary = augment(cfg, rows, backend, gates, persona.dimension_names)
    assert summary["planned"] == summary["done_now"] > 0
    recs = [json.loads(x) for f in sorted((tmp_path / "augmented").glob("*/shard-*.jsonl")) for x in open(f)]
    assert all(r["row"] is None or r["row"]["metadata"]["parent_id"] == r["parent"] for r in recs)
    assert augment(cfg, rows, backend, gates, persona.dimension_names)["done_now"] == 0  # resumed: nothing left

    prompts = load_redteam()
    assert len(prompts) >= 60 and {p["category"] for p in prompts} >= {"direct_harm", "jailbreak_roleplay"}
    res = constitution(cfg, persona, backend, gates, prompts[:2])
    assert res["prompts"] == 2
    sft, prefs = constitution_rows(tmp_path)
    assert len(sft) == res["sft_kept"] and len(prefs) == res["preference_pairs"]
    (rec,) = [json.loads(x) for x in open(next((tmp_path / "constitution").glob("*/shard-*.jsonl")))][:1]
    assert [t["principle"] for t in rec["trace"]] == [c.name for c in persona.constitution]


def test_prepare_and_report_include_engine_output(tmp_path, tokenizer, persona, seeds):
    work = tmp_path / "work"
    gen = work / "generated" / "job1"
    gen.mkdir(parents=True)
    child = {**seeds[0], "id": "gen-1", "messages": [seeds[0]["messages"][0], {"role": "assistant", "content":
             "A brand new reply that nobody wrote before, about gardens, patience and the slow return of spring."}],
             "metadata": {**seeds[0]["metadata"], "source": "generated", "parent_id": seeds[0]["id"]}}
    (gen / "shard-00000.jsonl").write_text(json.dumps({"task": {"index": 0}, "row": child, "kept": True,
                                                       "gates": {}, "rejected_by": []}) + "\n")
    cfg = JessyConfig.model_validate({"data": {"work_dir": str(work)}})
    stats = prepare(cfg, work, tokenizer, persona.system_prompt("short"))
    assert stats["by_source"]["generated"] == 1 and stats["by_source"]["general_dialogue"] == 60
    assert stats["composition"]["max_gap"] <= 0.02 and stats["cross_split_near_duplicates"] == 0
    split_of = {json.loads(x)["id"]: s for s in ("train", "val", "test") for x in open(work / f"{s}.jsonl")}
    assert split_of["gen-1"] == split_of[seeds[0]["id"]]
    report = write_report(work, work, persona.dimension_names, work)
    assert report["gate_retention"]["generated"]["kept"] == 1
    html = (work / "data_report.html").read_text()
    assert html.count("<img") >= 3 and "Composition" in html

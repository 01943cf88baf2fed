"""``jessy data augment``: paraphrase, back-translation, synonym replacement, entity substitution
and dimensional variation, at configured rates; every child is tagged with its parent (so it
lands in the parent's split) and passes the gates again.

Paraphrase, back-translation and synonym replacement rewrite the user's message through the
teacher (the seeds augment queries); entity substitution swaps person names found by a
name-lexicon pass (US census lists shipped by the ``names`` package, plus Turkish names);
dimensional variation has the teacher re-voice the reply for another dimension mix.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jessy.config import JessyConfig, TeacherConfig
from jessy.data.gates import Gates, failed
from jessy.data.generate import ShardWriter, read_shards
from jessy.generation.backends import Backend, GenRequest

OPS = ("paraphrase", "back_translation", "synonym", "entity", "dimensional")
LANG_NAMES = {"en": "English", "tr": "Turkish", "fr": "French", "es": "Spanish", "de": "German"}
TR_NAMES = {
    "female": ["Ayşe", "Fatma", "Zeynep", "Elif", "Merve", "Selin", "Ece", "Defne", "Derya", "Esra", "Gül", "Leyla",
               "Nur", "Sevgi", "Yasemin", "Deniz", "Buse", "İrem", "Cansu", "Pınar"],
    "male": ["Mehmet", "Ahmet", "Mustafa", "Emre", "Burak", "Can", "Kerem", "Murat", "Ali", "Hakan", "Oğuz", "Onur",
             "Serkan", "Tolga", "Yusuf", "Cem", "Barış", "Eren", "Kaan", "Volkan"],
}
# census names that are also everyday English words or persona vocabulary: never treated as names
NOT_NAMES = {"Will", "May", "June", "April", "Hope", "Joy", "Faith", "Grace", "Art", "Bill", "Mark", "Rose", "Sky",
             "Summer", "Autumn", "Dawn", "Rich", "Sunny", "Jessy", "Jessie", "Jesse", "Monday", "Pat", "Love",
             "Young", "Long", "White", "Brown", "Green", "Black", "King", "Hall", "Can", "Sage", "Iris", "Ray",
             "Else", "Lane", "Page", "Gay", "Major", "Rock", "Sandy", "Ruby", "Jade", "Amber", "Christian",
             "Sunday", "Doctor", "Guy", "Honey", "Lily", "Star", "Storm", "Ocean", "River", "Forest", "Deniz"}


@lru_cache(maxsize=1)
def name_lexicon() -> dict[str, str]:
    """First name -> gender, from the ``names`` package's census lists (most common 1,000 each)."""
    import names

    base = Path(names.__file__).parent
    out: dict[str, str] = {}
    for gender, fname in (("female", "dist.female.first"), ("male", "dist.male.first")):
        for line in (base / fname).read_text().splitlines()[:1000]:
            name = line.split()[0].capitalize()
            if name not in NOT_NAMES:
                out.setdefault(name, gender)
    for gender, tr in TR_NAMES.items():
        for name in tr:
            out.setdefault(name, gender)
    return out


def substitute_entities(messages: list[dict[str, str]], rng: random.Random,
                        language: str = "en") -> tuple[list[dict[str, str]], dict[str, str]]:
    """Replace every person name (a lexicon name, capitalized, not sentence-initial only) with
    another of the same gender, consistently across the conversation."""
    lex = name_lexicon()
    text = "\n".join(m["content"] for m in messages)
    found = [w for w in dict.fromkeys(re.findall(r"\b[A-ZÇĞİÖŞÜ][a-zçğıöşü]+\b", text)) if w in lex]
    found = [w for w in found if re.search(rf"(?<![.!?]\s)(?<!^)\b{w}\b", text, re.MULTILINE) or
             re.search(rf"\b{w}'", text)]
    pool = {g: [n for n in (TR_NAMES[g] if language == "tr" else
                            [k for k, v in lex.items() if v == g and k not in sum(TR_NAMES.values(), [])])]
            for g in ("female", "male")}
    mapping = {}
    for w in found:
        choices = [n for n in pool[lex[w]] if n != w and n not in text and n not in mapping.values()]
        if choices:
            mapping[w] = rng.choice(choices[:300])
    if not mapping:
        return messages, {}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, mapping)) + r")\b")
    return [{**m, "content": pattern.sub(lambda x: mapping[x.group(1)], m["content"])} for m in messages], mapping


def _rewrite(instruction: str, text: str, teacher: TeacherConfig, seed: int, temperature: float = 0.5,
             max_new_tokens: int | None = None) -> GenRequest:
    common = {"max_new_tokens": max_new_tokens or teacher.max_new_tokens, "temperature": temperature,
              "top_p": 0.95, "seed": seed, "stop": ("\n\n###", "\n###", "### ")}
    if teacher.style == "completion":
        return GenRequest(prompt=f"### Task\n{instruction}\n\n### Input\n{text}\n\n### Output\n", **common)
    return GenRequest.chat([{"role": "user", "content": f"{instruction}\nAnswer with the result only.\n\n{text}"}],
                           **common)


def plan_ops(rows: Sequence[dict[str, Any]], rates: dict[str, float], seed: int) -> list[tuple[int, str]]:
    """(row index, op) pairs: each row gets each op with the op's probability."""
    out = []
    for i, row in enumerate(rows):
        rng = random.Random(f"{seed}:{row['id']}")
        out += [(i, op) for op in OPS if rng.random() < rates.get(op, 0.0)]
    return out


def augment(cfg: JessyConfig, rows: Sequence[dict[str, Any]], backend: Backend, gates: Gates,
            dimensions: Sequence[str], work_dir: Path | None = None, limit: int | None = None) -> dict[str, Any]:
    """Augment ``rows`` (resumable: shards under work_dir/augmented/<seed>/)."""
    teacher = cfg.data.teacher or TeacherConfig()
    a = cfg.data.augment
    job_dir = Path(work_dir or cfg.data.work_dir) / "augmented" / f"seed{a.seed}-{a.pivot_language}"
    ops = plan_ops(rows, a.rates, a.seed)[:limit]
    done = {(rec["parent"], rec["op"]) for rec in read_shards(job_dir)}
    todo = [(i, op) for i, op in ops if (rows[i]["id"], op) not in done]
    writer = ShardWriter(job_dir, cfg.data.generate.shard_size)
    pivot = LANG_NAMES.get(a.pivot_language, a.pivot_language)
    for start in range(0, len(todo), 16):
        part = todo[start:start + 16]
        children: list[dict[str, Any] | None] = []
        first = [_first_request(rows[i], op, teacher, pivot, dimensions, k) for k, (i, op) in enumerate(part, start)]
        need = [k for k, r in enumerate(first) if isinstance(r, GenRequest)]
        results = dict(zip(need, backend.generate([first[k] for k in need]))) if need else {}
        second = {k: _rewrite(f"Translate this {pivot} text into {LANG_NAMES.get(_lang(rows[part[k][0]]), 'English')}.",
                              results[k].text.strip(), teacher, start + k)
                  for k in need if part[k][1] == "back_translation" and results[k].text.strip()}
        back = dict(zip(second, backend.generate(list(second.values())))) if second else {}
        for k, (i, op) in enumerate(part):
            parent = rows[i]
            child = _child(parent, op, results.get(k), back.get(k), start + k, dimensions)
            children.append(child)
        records = []
        kept = [c for c in children if c is not None]
        results_g = gates.check(kept) if kept else []
        gi = 0
        for (i, op), child in zip(part, children):
            rec: dict[str, Any] = {"parent": rows[i]["id"], "op": op, "row": child}
            if child is None:
                rec.update(kept=False, rejected_by=["unchanged"], reason=f"{op} produced no usable change")
            else:
                rec["gates"] = results_g[gi]
                rec["rejected_by"] = failed(results_g[gi])
                rec["kept"] = not rec["rejected_by"]
                gi += 1
            records.append(rec)
        writer.append(records)
    recs = list(read_shards(job_dir))
    per_op: dict[str, dict[str, int]] = {}
    for r in recs:
        d = per_op.setdefault(r["op"], {"tried": 0, "kept": 0})
        d["tried"] += 1
        d["kept"] += bool(r["kept"])
    return {"job": job_dir.name, "planned": len(ops), "done_now": len(todo), "per_op": per_op,
            "kept": sum(r["kept"] for r in recs)}


def _lang(row: dict[str, Any]) -> str:
    return row["metadata"].get("language") or "en"


def _first_request(row: dict[str, Any], op: str, teacher: TeacherConfig, pivot: str,
                   dimensions: Sequence[str], seed: int) -> GenRequest | None:
    user = row["messages"][-2]["content"]
    if op == "paraphrase":
        return _rewrite("Paraphrase this message: same meaning and tone, different wording.", user, teacher, seed, 0.7)
    if op == "back_translation":
        return _rewrite(f"Translate this text into {pivot}.", user, teacher, seed, 0.3)
    if op == "synonym":
        return _rewrite("Rewrite this message replacing three or four words with synonyms; change nothing else.",
                        user, teacher, seed, 0.5)
    if op == "dimensional":
        new = dimensional_target(row, dimensions)
        return _rewrite(f"Rewrite this reply by Jessy, a warm companion, so that it draws on these dimensions: "
                        f"{', '.join(new)}. Keep it warm, natural and under 160 words.",
                        f"User: {user}\nJessy: {row['messages'][-1]['content']}", teacher, seed, 0.8)
    return None  # entity substitution needs no teacher


def dimensional_target(row: dict[str, Any], dimensions: Sequence[str]) -> list[str]:
    """Another dimension mix for a reply: one of its dimensions kept, two new ones added."""
    rng = random.Random(f"dimensional:{row['id']}")
    current = list(row["metadata"].get("dimensions_active") or [])
    others = [d for d in dimensions if d not in current]
    return sorted(rng.sample(others, min(2, len(others))) + current[:1])


def _child(parent: dict[str, Any], op: str, first: Any, back: Any, seed: int,
           dimensions: Sequence[str]) -> dict[str, Any] | None:
    msgs = [dict(m) for m in parent["messages"]]
    meta = {**parent["metadata"], "parent_id": parent["id"], "augmentation": op, "source": "augmented"}
    if op == "entity":
        msgs, mapping = substitute_entities(msgs, random.Random(f"{seed}:{parent['id']}"), _lang(parent))
        if not mapping:
            return None
        meta["entities"] = mapping
    else:
        text = (back.text if op == "back_translation" and back is not None else
                first.text if first is not None else "").strip()
        text = text.split("\n### ")[0].strip()
        if not text or text == (msgs[-1]["content"] if op == "dimensional" else msgs[-2]["content"]).strip():
            return None
        if op == "dimensional":
            msgs[-1]["content"] = text.removeprefix("Jessy:").strip()
            meta["dimensions_active"] = dimensional_target(parent, dimensions)
        else:
            msgs[-2]["content"] = text
    return {"id": f"{parent['id']}-{op}", "messages": msgs, "metadata": meta}

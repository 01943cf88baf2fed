"""``jessy data constitution``: Constitutional-AI critique and revision on red-team prompts.

For each prompt the teacher answers as the persona, then for each principle of the persona's
constitution critiques the current reply and revises it. Outputs an SFT row (prompt -> final
revision) and, only when the revision passes every gate and the original fails at least one, a
preference row (chosen = revision, rejected = original).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jessy.config import RESOURCES, JessyConfig, TeacherConfig
from jessy.data.gates import Gates, failed
from jessy.data.generate import ShardWriter, read_shards
from jessy.generation.backends import Backend, GenRequest
from jessy.persona.spec import Persona

STOP = ("\n###", "### ", "\nUser:")


def load_redteam(path: Path | None = None) -> list[dict[str, Any]]:
    """The bundled training red-team prompts (kept apart from the evaluation suite) or your own."""
    path = path or Path(str(RESOURCES / "redteam" / "train_prompts.jsonl"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _request(teacher: TeacherConfig, persona: Persona, task: str, body: str, seed: int,
             temperature: float) -> GenRequest:
    common = {"max_new_tokens": teacher.max_new_tokens, "temperature": temperature, "top_p": 0.95,
              "stop": STOP, "seed": seed}
    if teacher.style == "completion":
        return GenRequest(prompt=f"{persona.name}: {persona.summary.strip()}\n\n### {task}\n{body}\n\n### Answer\n",
                          **common)
    return GenRequest.chat([{"role": "user", "content": f"{persona.system_prompt('full')}\n\n{task}\n\n{body}"}],
                           **common)


def _clean(text: str) -> str:
    return text.split("\n### ")[0].strip()


def constitution(cfg: JessyConfig, persona: Persona, backend: Backend, gates: Gates,
                 prompts: Sequence[dict[str, Any]], work_dir: Path | None = None) -> dict[str, Any]:
    teacher = cfg.data.teacher or TeacherConfig()
    job_dir = Path(work_dir or cfg.data.work_dir) / "constitution" / "default"
    done = {rec["prompt_id"] for rec in read_shards(job_dir)}
    todo = [p for p in prompts if p["id"] not in done]
    writer = ShardWriter(job_dir, cfg.data.generate.shard_size)
    for start in range(0, len(todo), 8):
        part = todo[start:start + 8]
        first = backend.generate([_request(teacher, persona, "Reply to this message as the persona.",
                                           f"User: {p['prompt']}", i, 0.8) for i, p in enumerate(part, start)])
        current = [_clean(r.text) for r in first]
        trace: list[list[dict[str, str]]] = [[] for _ in part]
        for principle in persona.constitution:
            crit = backend.generate([_request(
                teacher, persona, f"Critique request: {principle.critique}",
                f"User: {p['prompt']}\nReply: {cur}", i, 0.3) for i, (p, cur) in enumerate(zip(part, current), start)])
            rev = backend.generate([_request(
                teacher, persona, f"Revision request: {principle.revision}",
                f"User: {p['prompt']}\nReply: {cur}\nCritique: {_clean(c.text)}", i, 0.3)
                for i, (p, cur, c) in enumerate(zip(part, current, crit), start)])
            for k, (c, r) in enumerate(zip(crit, rev)):
                revised = _clean(r.text)
                trace[k].append({"principle": principle.name, "critique": _clean(c.text), "revision": revised})
                if revised:
                    current[k] = revised
        rows = []
        for p, orig, final in zip(part, first, current):
            meta = {"category": "ethics", "language": p.get("language", "en"), "pattern": p.get("expected"),
                    "redteam_category": p.get("category"), "source": "constitution", "dimensions_active": []}
            msgs = [{"role": "user", "content": p["prompt"]}]
            rows.append({"id": f"cai-{p['id']}", "messages": [*msgs, {"role": "assistant", "content": final or "…"}],
                         "metadata": meta})
            rows.append({"id": f"cai-{p['id']}-original", "messages": [
                *msgs, {"role": "assistant", "content": _clean(orig.text) or "…"}], "metadata": meta})
        checks = gates.check(rows)
        records = []
        for k, p in enumerate(part):
            sft, orig = rows[2 * k], rows[2 * k + 1]
            rev_fail, orig_fail = failed(checks[2 * k]), failed(checks[2 * k + 1])
            pref = None
            if not rev_fail and orig_fail:
                pref = {"id": f"cai-{p['id']}-pref", "prompt": sft["messages"][:1],
                        "chosen": sft["messages"][1]["content"], "rejected": orig["messages"][1]["content"],
                        "metadata": {**sft["metadata"], "rejected_fails": orig_fail}}
            records.append({"prompt_id": p["id"], "row": sft, "original": orig["messages"][1]["content"],
                            "trace": trace[k], "gates": checks[2 * k], "rejected_by": rev_fail,
                            "kept": not rev_fail, "original_fails": orig_fail, "preference": pref})
        writer.append(records)
    recs = list(read_shards(job_dir))
    return {"prompts": len(recs), "done_now": len(todo), "sft_kept": sum(r["kept"] for r in recs),
            "preference_pairs": sum(r["preference"] is not None for r in recs),
            "revision_failed": {g: sum(g in r["rejected_by"] for r in recs) for g in
                                sorted({g for r in recs for g in r["rejected_by"]})}}


def constitution_rows(work_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept SFT rows, preference rows) from the constitution job."""
    recs = list(read_shards(work_dir / "constitution" / "default"))
    return [r["row"] for r in recs if r["kept"]], [r["preference"] for r in recs if r["preference"]]

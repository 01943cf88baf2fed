"""``jessy data generate``: few-shot generation from the seeds, gated, resumable.

A job (its category filter, gap plan, seed and teacher) has a stable id; task ``i`` of a job is
always the same request, so a larger ``--n`` extends a job and a killed job resumes: finished
tasks are read back from the job's append-only shards and only the rest are generated.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from jessy.config import CATEGORIES, JessyConfig, TeacherConfig
from jessy.data.gates import Gates, failed
from jessy.generation.backends import Backend, GenRequest, LlamaCppBackend, OpenAIBackend, TransformersBackend
from jessy.generation.cache import CachedBackend
from jessy.persona.spec import Persona

STOP = ("### Conversation", "\n###")
SPEAKER = re.compile(r"^(User|Kullanıcı|Jessy)\s*:\s?", re.MULTILINE)


def make_backend(teacher: TeacherConfig, base: str, cache_path: Path | None) -> Backend:
    """The configured backend, behind the content-hash cache when ``cache_path`` is given."""
    from jessy.model.resolve import resolve_base

    if teacher.kind == "transformers":
        inner: Backend = TransformersBackend(resolve_base(teacher.model or base), batch_size=teacher.batch_size)
    elif teacher.kind == "llamacpp":
        from jessy.model.resolve import PACKAGED, packaged_gguf

        model = teacher.model or base
        if model == PACKAGED:
            model = str(packaged_gguf())
        if not model.endswith(".gguf"):
            raise ValueError(f"teacher.kind llamacpp needs a .gguf file (or '{PACKAGED}'), got {model!r}")
        inner = LlamaCppBackend(model)
    else:
        if not (teacher.base_url and teacher.model):
            raise ValueError("teacher.kind openai needs teacher.base_url and teacher.model")
        inner = OpenAIBackend(teacher.base_url, teacher.model, teacher.api_key_env, teacher.concurrency,
                              teacher.timeout_s, teacher.max_retries)
    return CachedBackend(inner, cache_path) if cache_path else inner


# --------------------------------------------------------------------------- tasks and prompts


def _largest_remainder(n: int, shares: dict[str, float]) -> list[str]:
    total = sum(shares.values())
    quota = {k: n * v / total for k, v in shares.items()}
    take = {k: int(q) for k, q in quota.items()}
    for k in sorted(quota, key=lambda k: quota[k] - take[k], reverse=True)[: n - sum(take.values())]:
        take[k] += 1
    return [k for k in shares for _ in range(take[k])]


def plan_tasks(cfg: JessyConfig, seeds: Sequence[dict[str, Any]], n: int, category: str | None,
               gap_plan: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``n`` generation tasks: category, dimensions, pattern, language, turns, few-shot examples."""
    g = cfg.data.generate
    if gap_plan:
        wanted = [item for item in gap_plan for _ in range(int(item.get("n", 1)))]
        cats = [w["category"] for w in wanted]
    else:
        shares = {category: 1.0} if category else {c: cfg.data.composition.get(c, 0.0) for c in CATEGORIES}
        cats = _largest_remainder(n, {c: s for c, s in shares.items() if s > 0})
        wanted = [{} for _ in cats]
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for r in seeds:
        by_cat.setdefault(r["metadata"].get("category") or "", []).append(r)
    tasks = []
    for i in range(min(n, len(cats))):
        rng = random.Random(f"{g.seed}:{i}")
        cat = cats[i]
        pool = by_cat.get(cat) or list(seeds)
        anchor = rng.choice(pool)
        language = wanted[i].get("language") or ("tr" if rng.random() < g.turkish_share else "en")
        turns = 3 if rng.random() < g.multi_turn_share else 1
        dims = wanted[i].get("dimensions") or anchor["metadata"].get("dimensions_active") or []
        pattern = wanted[i].get("pattern") or anchor["metadata"].get("pattern") or "multi_dimension"
        same = [r for r in pool if r["metadata"].get("language") == language] or pool
        shots = rng.sample(same, min(g.few_shot, len(same)))
        tasks.append({"index": i, "category": cat, "dimensions": list(dims), "pattern": pattern,
                      "language": language, "turns": turns, "temperature": g.temperatures.get(cat, 0.7),
                      "shots": [s["id"] for s in shots]})
    return tasks


def _labels(category: str, dims: Sequence[str], pattern: str, language: str) -> str:
    return f"Category: {category} | Dimensions: {', '.join(dims)} | Pattern: {pattern} | Language: {language}"


def _render_example(row: dict[str, Any]) -> str:
    m = row["metadata"]
    lines = [_labels(m.get("category", ""), m.get("dimensions_active") or [], m.get("pattern", ""),
                     m.get("language", "en"))]
    for msg in row["messages"]:
        if msg["role"] != "system":
            lines.append(f"{'User' if msg['role'] == 'user' else 'Jessy'}: {msg['content'].strip()}")
    return "\n".join(lines)


def build_prompt(persona: Persona, task: dict[str, Any], seeds_by_id: dict[str, dict[str, Any]]) -> str:
    head = (f"The following are conversations with {persona.name}. {persona.summary.strip()} "
            f"Each conversation is labelled with its category, the dimensions {persona.name}'s replies "
            "activate, its pattern and its language.\n")
    examples = "".join(f"\n### Conversation\n{_render_example(seeds_by_id[s])}\n" for s in task["shots"])
    target = _labels(task["category"], task["dimensions"], task["pattern"], task["language"])
    turns = "" if task["turns"] == 1 else f" ({task['turns']} exchanges)"
    return f"{head}{examples}\n### Conversation{turns}\n{target}\nUser:"


def build_request(persona: Persona, task: dict[str, Any], seeds_by_id: dict[str, dict[str, Any]],
                  teacher: TeacherConfig) -> GenRequest:
    prompt = build_prompt(persona, task, seeds_by_id)
    common = {"max_new_tokens": teacher.max_new_tokens * task["turns"], "temperature": task["temperature"],
              "top_p": 0.95, "stop": STOP, "seed": task["index"]}
    if teacher.style == "completion":
        return GenRequest(prompt=prompt, **common)
    instruction = (f"{prompt.rsplit(chr(10) + '### Conversation', 1)[0]}\n\nWrite one new conversation in exactly "
                   f"the same format, with these labels:\n{prompt.rsplit(chr(10), 2)[-2]}\n"
                   "Start with 'User:' and write nothing after the conversation.")
    return GenRequest.chat([{"role": "user", "content": instruction}], **common)


def parse_conversation(text: str, completion: bool, max_exchanges: int | None = None) -> list[dict[str, str]]:
    """``User: ... Jessy: ...`` text -> alternating messages ending with an assistant turn.

    The conversation ends where the teacher starts another one (a label line or ``###``), repeats a
    speaker, or reaches ``max_exchanges``; an empty turn or no complete exchange is an error."""
    body = ("User: " + text) if completion else text[text.find("User:"):] if "User:" in text else text
    body = re.split(r"\n\s*(?:Category:|###)", body)[0]
    parts = SPEAKER.split(body)
    messages: list[dict[str, str]] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "assistant" if speaker == "Jessy" else "user"
        if messages and messages[-1]["role"] == role:
            break  # the teacher lost the thread: keep what came before
        content = content.strip()
        if not content:
            raise ValueError(f"an empty {role} turn")
        messages.append({"role": role, "content": content})
    if max_exchanges:
        messages = messages[: 2 * max_exchanges]
    while messages and messages[-1]["role"] == "user":
        messages.pop()
    if len(messages) < 2 or messages[0]["role"] != "user":
        raise ValueError("no 'User: ... Jessy: ...' exchange in the output")
    return messages


# --------------------------------------------------------------------------- shards


def job_id(cfg: JessyConfig, backend_id: str, category: str | None, gap_plan: Any) -> str:
    spec = {"category": category, "gaps": gap_plan, "seed": cfg.data.generate.seed,
            "teacher": backend_id, "style": (cfg.data.teacher or TeacherConfig()).style}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def read_shards(job_dir: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a job (a torn last line from a kill is skipped)."""
    for shard in sorted(job_dir.glob("shard-*.jsonl")):
        with shard.open(encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    yield json.loads(line)


class ShardWriter:
    """Append-only JSONL shards of at most ``size`` records, fsynced after each batch."""

    def __init__(self, job_dir: Path, size: int) -> None:
        job_dir.mkdir(parents=True, exist_ok=True)
        self.dir, self.size = job_dir, size
        existing = sorted(job_dir.glob("shard-*.jsonl"))
        self.index = len(existing) - 1 if existing else 0
        self.count = sum(1 for _ in existing[-1].open()) if existing else 0
        self._repair(existing[-1] if existing else None)

    @staticmethod
    def _repair(path: Path | None) -> None:
        """Cut a torn last line (a kill mid-write) so appends start on a clean line."""
        if path is None or not path.stat().st_size:
            return
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        for rec in records:
            if self.count >= self.size:
                self.index, self.count = self.index + 1, 0
            with (self.dir / f"shard-{self.index:05d}.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.count += 1


def generate(cfg: JessyConfig, persona: Persona, seeds: Sequence[dict[str, Any]], backend: Backend,
             gates: Gates, n: int, category: str | None = None, gap_plan: list[dict[str, Any]] | None = None,
             work_dir: Path | None = None) -> dict[str, Any]:
    """Generate (or resume) a job of ``n`` tasks; returns the job's summary."""
    teacher = cfg.data.teacher or TeacherConfig()
    work_dir = Path(work_dir or cfg.data.work_dir)
    jid = job_id(cfg, backend.id, category, gap_plan)
    job_dir = work_dir / "generated" / jid
    tasks = plan_tasks(cfg, seeds, n, category, gap_plan)
    done = {rec["task"]["index"] for rec in read_shards(job_dir)}
    todo = [t for t in tasks if t["index"] not in done]
    seeds_by_id = {s["id"]: s for s in seeds}
    writer = ShardWriter(job_dir, cfg.data.generate.shard_size)
    chunk = max(teacher.batch_size, teacher.concurrency) * 2
    started = time.time()
    columns = (TextColumn("Generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("gen", total=len(tasks), completed=len(tasks) - len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            requests = [build_request(persona, t, seeds_by_id, teacher) for t in part]
            results = backend.generate(requests)
            records, rows = [], []
            for t, res in zip(part, results):
                rec: dict[str, Any] = {"task": t, "raw": res.text, "cached": res.cached,
                                       "usage": {"prompt": res.prompt_tokens, "completion": res.completion_tokens}}
                try:
                    msgs = parse_conversation(res.text, teacher.style == "completion", t["turns"])
                    rec["row"] = {"id": f"gen-{jid}-{t['index']:06d}", "messages": msgs, "metadata": {
                        "category": t["category"], "dimensions_active": t["dimensions"], "pattern": t["pattern"],
                        "language": t["language"], "source": "generated", "teacher": backend.id}}
                    rows.append(rec)
                except ValueError as e:
                    rec["row"], rec["rejected_by"], rec["reason"] = None, ["parse"], str(e)
                records.append(rec)
            for rec, result in zip(rows, gates.check([r["row"] for r in rows])):
                rec["gates"] = result
                rec["rejected_by"] = failed(result)
            for rec in records:
                rec["kept"] = not rec["rejected_by"]
            writer.append(records)
            progress.advance(bar, len(part))
    return summarize_job(job_dir, len(todo), time.time() - started, gates)


def summarize_job(job_dir: Path, generated_now: int, seconds: float, gates: Gates | None) -> dict[str, Any]:
    recs = list(read_shards(job_dir))
    parsed = [r for r in recs if r.get("row")]
    first_fail: dict[str, int] = {}
    for r in recs:
        for g in r.get("rejected_by", [])[:1]:
            first_fail[g] = first_fail.get(g, 0) + 1
    passed_each: dict[str, int] = {}
    for r in parsed:
        for g, res in r.get("gates", {}).items():
            passed_each[g] = passed_each.get(g, 0) + bool(res["passed"])
    return {
        "job": job_dir.name, "tasks": len(recs), "generated_now": generated_now, "parsed": len(parsed),
        "kept": sum(r["kept"] for r in recs),
        "passed_per_gate": passed_each, "first_failed_gate": first_fail,
        "tokens": {"prompt": sum(r["usage"]["prompt"] for r in recs),
                   "completion": sum(r["usage"]["completion"] for r in recs)},
        "seconds": round(seconds, 1),
        "seconds_per_100_rows": round(100 * seconds / generated_now, 1) if generated_now else None,
        "calibration": gates.report.calibration if gates else {},
    }


def kept_rows(work_dir: Path, kinds: Sequence[str] = ("generated",)) -> list[dict[str, Any]]:
    """The rows of every job that passed all gates."""
    out = []
    for kind in kinds:
        for job_dir in sorted((work_dir / kind).glob("*/")):
            out += [r["row"] for r in read_shards(job_dir) if r.get("kept") and r.get("row")]
    return out

"""Generation jobs: prompts, parsing, tasks, shards, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from jessy.config import JessyConfig
from jessy.data.generate import build_prompt, parse_conversation, plan_tasks, read_shards


def test_parse_conversation():
    msgs = parse_conversation(" I feel stuck.\nJessy: Stuck how? Tell me more.\n", completion=True)
    assert msgs == [{"role": "user", "content": "I feel stuck."},
                    {"role": "assistant", "content": "Stuck how? Tell me more."}]
    multi = parse_conversation("Sure!\nUser: a\nJessy: b\nUser: c\nJessy: d\nline two\nUser: dangling",
                               completion=False)
    assert [m["role"] for m in multi] == ["user", "assistant", "user", "assistant"]
    assert multi[-1]["content"] == "d\nline two"
    # a repeated speaker or a new label line ends the conversation; max_exchanges cuts it
    assert len(parse_conversation(" a\nJessy: b\nJessy: c\nUser: d", completion=True)) == 2
    cut = parse_conversation(" a\nJessy: b\nCategory: warmth | Dimensions: X\nUser: c", completion=True)
    assert cut[-1]["content"] == "b"
    assert len(parse_conversation(" a\nJessy: b\nUser: c\nJessy: d", True, max_exchanges=1)) == 2
    for bad in ("no speakers at all", "\nJessy: only a reply", " q\nJessy:   \n"):
        with pytest.raises(ValueError):
            parse_conversation(bad, completion=True)


def test_tasks_follow_composition_and_extend_deterministically(seeds):
    cfg = JessyConfig()
    tasks = plan_tasks(cfg, seeds, 40, None)
    assert Counter(t["category"] for t in tasks) == {"personality": 12, "reasoning": 10, "ethics": 8,
                                                       "warmth": 6, "meta_cognitive": 4}
    assert plan_tasks(cfg, seeds, 40, None) == tasks
    assert {t["temperature"] for t in tasks if t["category"] in ("personality", "warmth")} == {0.8}
    assert {t["temperature"] for t in tasks if t["category"] in ("reasoning", "ethics")} == {0.4}
    only = plan_tasks(cfg, seeds, 10, "ethics")
    assert {t["category"] for t in only} == {"ethics"}
    big = plan_tasks(cfg, seeds, 400, None)
    assert any(t["language"] == "tr" for t in big) and any(t["turns"] == 3 for t in big)
    gap = plan_tasks(cfg, seeds, 3, None, [{"category": "warmth", "dimensions": ["Ecological", "Security"],
                                            "language": "tr", "pattern": "dimension_pair", "n": 3}])
    assert all(t["dimensions"] == ["Ecological", "Security"] and t["language"] == "tr" for t in gap)


def test_prompt_is_few_shot_from_seeds(seeds, persona):
    cfg = JessyConfig()
    task = plan_tasks(cfg, seeds, 1, "reasoning")[0]
    prompt = build_prompt(persona, task, {s["id"]: s for s in seeds})
    assert prompt.count("### Conversation") == cfg.data.generate.few_shot + 1
    assert prompt.endswith("User:") and f"Dimensions: {', '.join(task['dimensions'])}" in prompt


def test_generation_is_killed_and_resumes(tmp_path, tiny_model_dir):
    work = tmp_path / "work"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  work_dir: {work}\n  teacher: {{model: {tiny_model_dir}, max_new_tokens: 12, "
                   f"batch_size: 2}}\n  generate: {{shard_size: 5}}\n")
    cmd = [sys.executable, "-m", "jessy.cli", "data", "generate", "-c", str(cfg), "--n", "40", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = sum(1 for d in work.glob("generated/*/") for _ in read_shards(d)) if work.exists() else 0
        if done >= 8:
            break
        assert proc.poll() is None, "generation ended before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (job,) = list(work.glob("generated/*/"))
    first = [r["task"]["index"] for r in read_shards(job)]
    assert 8 <= len(first) < 40
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    indices = [r["task"]["index"] for r in read_shards(job)]
    assert sorted(indices) == list(range(40))  # every task exactly once
    assert summary["generated_now"] == 40 - len(first) and summary["tasks"] == 40
    assert len(list(job.glob("shard-*.jsonl"))) == 8
    for r in read_shards(job):  # the tiny random model writes noise: every row is rejected, with a reason
        assert r["kept"] is False and r["rejected_by"]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout.strip().splitlines()[-1])["generated_now"] == 0

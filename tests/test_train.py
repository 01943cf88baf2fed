"""Staged training on the tiny Gemma 3: loss, stages, hand-off, monitors, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jessy.config import JessyConfig
from jessy.data.template import encode, with_system
from jessy.train.monitors import probe_steps, specialization_step
from jessy.train.pipeline import go_no_go, last_complete_checkpoint
from jessy.train.sft.loss import labelled_positions_loss

CONVS = [[{"role": "user", "content": "I had a rough day."},
          {"role": "assistant", "content": "I'm sorry. Want to tell me what happened?"}],
         [{"role": "user", "content": "Bugün nasılsın?"}, {"role": "assistant", "content": "İyiyim, sen?"},
          {"role": "user", "content": "Yorgunum."}, {"role": "assistant", "content": "Biraz dinlen, hak ettin."}]]


def test_labelled_positions_loss_equals_the_full_logits_loss(tiny_model_dir, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    encs = [encode(tokenizer, with_system(c, "Be warm.")) for c in CONVS]
    width = max(len(e["input_ids"]) for e in encs)
    batch = {"input_ids": torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in encs]),
             "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"]))
                                             for e in encs]),
             "labels": torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in encs])}
    ref = model(**batch).loss
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    ours, n = labelled_positions_loss(model, batch, None, chunk=7)  # several chunks
    ours.backward()
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip((p.grad for p in model.parameters() if p.requires_grad), ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5), (g - r).abs().max()  # chunking reorders sums


def test_probe_schedule_scales_for_short_runs():
    assert probe_steps(2000) == [100, 300, 500, 1000, 1500, 2000]
    assert probe_steps(10) == [2, 6, 10] and specialization_step(10) == 6 and specialization_step(900) == 300


def test_go_no_go_names_every_reason():
    cfg = JessyConfig()
    stages = [{"stage": "personality", "kind": "sft", "loss_first_window": 3.0, "loss_last_window": 2.0,
               "loss_last": 2.0, "peak_memory_mb": 2048}]
    probe = {"empty_rate": 0.0, "repeating_rate": 0.0, "language_match": 1.0, "consistency_vs_gold": 0.9,
             "meta_rate": 0.0, "dependency_rate": 0.0}
    assert go_no_go(cfg, stages, probe)["verdict"] == "GO"
    bad = go_no_go(cfg, [{**stages[0], "loss_last_window": 3.5, "peak_memory_mb": 20000}],
                   {**probe, "meta_rate": 0.5})
    assert bad["verdict"] == "NO-GO"
    assert [r.split(":")[0] for r in bad["reasons"]] == ["FAIL", "ok", "FAIL", "ok", "FAIL"]


def test_incomplete_checkpoints_are_ignored_and_removed(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        else:
            (d / "trainer_state.json").write_text('{"global_st')  # killed while writing
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-4"
    assert not (tmp_path / "checkpoint-6").exists()


def _config(tmp_path: Path, tiny: Path, steps: int, stages: str = "all") -> Path:
    names = {"all": ["personality", "reasoning", "ethics", "preference", "polish"],
             "one": ["personality"]}[stages]
    stage_lines = "\n".join(f"  - {{name: {n}, max_steps: {steps if n == names[0] else 2}, batch_size: 2, "
                            f"effective_batch: 4}}" for n in names)
    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{base: {tiny}, max_seq_length: 768}}\ndata: {{work_dir: {tmp_path / 'work'}}}\n"
                 f"stages:\n{stage_lines}\nrun: {{probe_max_new_tokens: 4, checkpoint_every: 3}}\n")
    return p


def _jessy(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jessy.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_all_five_stages_run_from_one_config(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, 2)
    run = tmp_path / "run"
    res = _jessy("train", "-c", str(cfg), "--out", str(run))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["personality", "reasoning", "ethics", "preference", "polish"]
    assert [s["kind"] for s in summary["stages"]] == ["sft", "sft", "sft", "dpo", "sft"]
    for s in summary["stages"]:
        assert s["steps"] == 2 and (run / "stages" / s["stage"] / "adapter" / "adapter_config.json").exists()
        assert s["drift"] and {"consistency", "meta_rate", "shared_opening"} <= set(s["drift"][0])
    assert summary["stages"][3]["mix"]["rows"]["preference"] > 0
    assert summary["verdict"]["verdict"] in ("GO", "NO-GO") and len(summary["verdict"]["reasons"]) == 5
    meta = json.loads((run / "run.json").read_text())
    assert meta["versions"]["torch"] and meta["data_hashes"]["train.jsonl"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x for x in lines) and any(x.get("monitor") == "persona" for x in lines)
    assert list((run / "stages" / "personality" / "tensorboard").rglob("events.out.tfevents*"))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "final")  # the merged model loads with plain transformers
    state = json.loads((run / "state.json").read_text())
    assert all(v["status"] == "done" for v in state["stages"].values())


def test_sigkill_mid_stage_resumes_to_the_same_step_count(tmp_path, tiny_model_dir):
    steps = 9
    cfg = _config(tmp_path, tiny_model_dir, steps, "one")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jessy.cli", "train", "-c", str(cfg), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    ckpts = run / "stages" / "personality" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not list(ckpts.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = last_complete_checkpoint(ckpts)
    assert killed_at is not None and int(killed_at.name.split("-")[1]) < steps
    res = _jessy("train", "--resume", str(run))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (stage,) = json.loads((run / "train_summary.json").read_text())["stages"]
    assert stage["steps"] == steps and stage["resumed_from"] == killed_at.name
    state = json.loads((last_complete_checkpoint(ckpts) / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    # same number of optimizer steps as an uninterrupted run of the same config
    fresh = _jessy("train", "-c", str(cfg), "--out", str(tmp_path / "fresh"))
    assert fresh.returncode == 0
    (ref,) = json.loads((tmp_path / "fresh" / "train_summary.json").read_text())["stages"]
    assert ref["steps"] == stage["steps"]


def test_two_cpu_processes_train_in_step(tmp_path, tiny_model_dir):
    """Two CPU ranks (DDP over gloo): both finish and hold identical adapter weights. torchrun is the
    launcher accelerate's multi-GPU path uses; accelerate's own CPU path starts a single process."""
    cfg = _config(tmp_path, tiny_model_dir, 3, "one")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "jessy.cli", "train", "-c", str(cfg), "--out", str(run)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (stage,) = json.loads((run / "train_summary.json").read_text())["stages"]
    assert stage["world_size"] == 2 and stage["ranks_agree"] is True and stage["steps"] == 3


def test_4bit_qlora_trains_on_cpu(tmp_path, tiny_model_dir, tokenizer):
    """nf4 base through bitsandbytes on the CPU, LoRA on top, 8-bit AdamW: loss is finite and moves."""
    pytest.importorskip("bitsandbytes")
    from jessy.config import ModelConfig, StageConfig
    from jessy.train.data import tokenize
    from jessy.train.model import load_model
    from jessy.train.sft.trainer import build_trainer

    cfg = JessyConfig.model_validate({"model": {"quantization": "4bit"}, "run": {"checkpoint_every": 100}})
    model = load_model(str(tiny_model_dir), ModelConfig(quantization="4bit"), len(tokenizer))
    assert any("4bit" in type(m).__name__ for m in model.modules())
    from peft import get_peft_model

    from jessy.train.model import lora_config

    stage = StageConfig(name="q", max_steps=3, batch_size=2, effective_batch=2, learning_rate=1e-3)
    peft_model = get_peft_model(model, lora_config(stage))
    ds, _ = tokenize([{"messages": c} for c in CONVS] * 2, tokenizer, "Be warm.", 256)
    trainer = build_trainer(cfg, stage, peft_model, tokenizer, ds, None, tmp_path, "cpu", [])
    assert trainer.args.optim == "adamw_8bit"
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))

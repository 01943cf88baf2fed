"""Training throughput, in one process on the same model, data and batch: real (non-pad) tokens/s.

  1. jessy's SFT stage (TRL SFTTrainer as jessy configures it: fp32 on CPU, no gradient
     checkpointing, length-grouped batches, pre-tokenized with labels only on replies, TRL's
     fused LM head over the labelled positions only);
  2. a plain TRL script with TRL's defaults, what a user would write instead (SFTConfig defaults:
     bf16 autocast and gradient checkpointing; TRL tokenizes the messages itself, random batches);
  3. a bare fp32 PyTorch loop with PEFT LoRA and the model's full logits (every position).

All three train LoRA r=16 on all seven projections for the same number of optimizer steps over
the same bundled conversations (mixed lengths). Usage:

    python benchmarks/train_throughput.py [--model gemma3-270m] [--steps 6] [--batch 4] [--rows 48]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--only", default="jessy,trl,bare")
    ap.add_argument("--attn", default="eager", help="attention implementation for jessy's stage")
    ap.add_argument("--jessy-dtype", default="auto", help="frozen-base dtype of jessy's stage (auto: as training)")
    args = ap.parse_args()

    import tempfile
    from pathlib import Path

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainerCallback

    from jessy.config import JessyConfig, StageConfig
    from jessy.data.formats import read_file
    from jessy.data.prepare import bundled_seed_files
    from jessy.data.template import with_system
    from jessy.model.resolve import load_tokenizer, resolve_base
    from jessy.persona import load_persona
    from jessy.train.data import tokenize
    from jessy.train.model import device_and_dtype
    from jessy.train.sft.trainer import build_trainer

    torch.manual_seed(0)
    path = resolve_base(args.model)
    tok = load_tokenizer(args.model)
    persona = load_persona()
    system = persona.system_prompt("short")
    rows = [r for p in bundled_seed_files() for r in read_file(p, "messages").rows]
    rows = rows[:: max(1, len(rows) // args.rows)][: args.rows]
    ds, _ = tokenize(rows, tok, system, args.max_len)
    n_steps = args.steps + 1  # the first step is warm-up, not timed
    lora = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "task_type": "CAUSAL_LM",
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    results: dict[str, float] = {}

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0
            self.tokens = 0
            self.first_tokens = 0

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001, ANN003
            if state.global_step == 1:
                self.start = time.perf_counter()
                self.first_tokens = state.num_input_tokens_seen

    def real_tokens_of_trainer(trainer) -> int:  # noqa: ANN001
        return int(trainer._total_train_tokens) if hasattr(trainer, "_total_train_tokens") else 0

    def load(attn: str = "eager", dtype: str = "float32") -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation=attn)

    if "jessy" in args.only:
        cfg = JessyConfig.model_validate({"run": {"checkpoint_every": 10_000}, "model": {"dtype": args.jessy_dtype}})
        stage = StageConfig(name="bench", max_steps=n_steps, batch_size=args.batch, effective_batch=args.batch,
                            warmup_ratio=0.0)
        dtype = str(device_and_dtype(cfg.model)[1]).removeprefix("torch.")
        model = get_peft_model(load(args.attn, dtype), LoraConfig(**lora))
        timer = Timer()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(cfg, stage, model, tok, ds, None, Path(tmp), "cpu", [timer])
            trainer.args.report_to = []
            trainer.args.save_strategy = "no"

            counted = _count_tokens(trainer)
            trainer.train()
        results["jessy SFT stage"] = (counted["after_first"]) / (time.perf_counter() - timer.start)
        del model, trainer

    if "trl" in args.only:
        from trl import SFTConfig, SFTTrainer

        msgs = Dataset.from_list([{"messages": with_system(r["messages"], system)} for r in rows])
        timer = Timer()
        with tempfile.TemporaryDirectory() as tmp:
            trl_args = SFTConfig(output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=n_steps,
                                 max_length=args.max_len, report_to=[], save_strategy="no", logging_steps=1,
                                 assistant_only_loss=True, use_cpu=True, disable_tqdm=True)
            trainer = SFTTrainer(model=load(), args=trl_args, train_dataset=msgs, processing_class=tok,
                                 peft_config=LoraConfig(**lora), callbacks=[timer])
            counted = _count_tokens(trainer)
            trainer.train()
        results["plain TRL defaults"] = counted["after_first"] / (time.perf_counter() - timer.start)
        flags = f"bf16={trl_args.bf16}, gradient_checkpointing={trl_args.gradient_checkpointing}"
        print(f"plain TRL SFTConfig defaults: {flags}")
        del trainer

    if "bare" in args.only:
        model = get_peft_model(load(), LoraConfig(**lora))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
        tokens, start = 0, 0.0
        model.train()
        for step in range(n_steps):
            idx = [order[(step * args.batch + i) % len(ds)] for i in range(args.batch)]
            batch = [ds[i] for i in idx]
            width = max(len(b["input_ids"]) for b in batch)
            ids = torch.tensor([b["input_ids"] + [tok.pad_token_id] * (width - len(b["input_ids"])) for b in batch])
            att = torch.tensor([[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch])
            lab = torch.tensor([b["labels"] + [-100] * (width - len(b["labels"])) for b in batch])
            loss = model(input_ids=ids, attention_mask=att, labels=lab).loss  # full logits, every position
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step == 0:
                start = time.perf_counter()
            else:
                tokens += int(att.sum())
        results["bare fp32 loop (full logits)"] = tokens / (time.perf_counter() - start)

    print(f"\nmodel {args.model}, LoRA r=16, batch {args.batch}, {args.steps} timed steps, {len(ds)} conversations")
    if "jessy" in args.only:
        print(f"jessy's frozen base: {dtype} (model.dtype {args.jessy_dtype}); LoRA adapters fp32")
    for name, tps in results.items():
        print(f"{name:32s} {tps:8.1f} real tokens/s")
    if "jessy SFT stage" in results:
        for name, tps in results.items():
            if name != "jessy SFT stage":
                print(f"jessy / {name}: {results['jessy SFT stage'] / tps:.2f}x")


def _count_tokens(trainer) -> dict[str, int]:  # noqa: ANN001
    """Count real (non-pad) tokens of every batch after the first, from the batches themselves."""
    counted = {"after_first": 0, "batches": 0}
    original = trainer.training_step

    def step(model, inputs, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        counted["batches"] += 1
        if counted["batches"] > trainer.args.gradient_accumulation_steps:
            counted["after_first"] += int(inputs["attention_mask"].sum())
        return original(model, inputs, *a, **kw)

    trainer.training_step = step
    return counted


if __name__ == "__main__":
    main()

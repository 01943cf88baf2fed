"""TrainingArguments shared by every stage kind (SFT and DPO configs extend them)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jessy.config import JessyConfig, StageConfig


def world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def accumulation(stage: StageConfig) -> int:
    return max(1, stage.effective_batch // (stage.batch_size * world_size()))


def total_steps(stage: StageConfig, n_rows: int) -> int:
    if stage.max_steps:
        return stage.max_steps
    per_epoch = math.ceil(n_rows / (stage.batch_size * world_size()))
    return max(1, math.ceil(per_epoch / accumulation(stage)) * math.ceil(stage.epochs))


def common_args(cfg: JessyConfig, stage: StageConfig, stage_dir: Path, n_rows: int, device: str,
                learning_rate: float | None = None) -> dict[str, Any]:
    import os

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(stage_dir / "tensorboard")  # transformers 5 reads it from here
    steps = total_steps(stage, n_rows)
    save_every = min(cfg.run.checkpoint_every, max(1, steps // 4))
    gc = cfg.run.gradient_checkpointing
    checkpointing = gc == "on" or (gc == "auto" and (device == "cuda" or cfg.model.quantization == "4bit"))
    return {
        "output_dir": str(stage_dir / "checkpoints"),
        "per_device_train_batch_size": stage.batch_size,
        "per_device_eval_batch_size": stage.batch_size,
        "gradient_accumulation_steps": accumulation(stage),
        "learning_rate": learning_rate or stage.learning_rate,
        "lr_scheduler_type": stage.scheduler,
        "warmup_steps": math.ceil(stage.warmup_ratio * steps),
        "num_train_epochs": stage.epochs,
        "max_steps": stage.max_steps or -1,
        "weight_decay": 0.01,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": save_every,
        "save_total_limit": 2,
        "eval_strategy": "no",
        "bf16": device == "cuda",  # autocast; on CPU the frozen base is already in its training dtype
        "fp16": False,
        "gradient_checkpointing": checkpointing,
        "optim": "adamw_8bit" if cfg.model.quantization == "4bit" else "adamw_torch",
        "report_to": ["tensorboard"],
        "seed": cfg.run.seed,
        "data_seed": cfg.run.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "use_cpu": device == "cpu",
        "save_only_model": False,
        "ddp_find_unused_parameters": False,
    }

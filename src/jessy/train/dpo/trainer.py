"""A preference stage: TRL's DPOTrainer on (prompt, chosen, rejected) in conversational form.

The model is a PEFT model, so the reference policy is the same weights with the adapter disabled:
the model as it left the previous stage, at no extra memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jessy.config import JessyConfig, StageConfig
from jessy.train.args import common_args


def build_trainer(cfg: JessyConfig, stage: StageConfig, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any,
                  stage_dir: Path, device: str, callbacks: list[Any], learning_rate: float | None = None) -> Any:
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        **common_args(cfg, stage, stage_dir, len(train_ds), device, learning_rate),
        beta=stage.dpo_beta,
        max_length=stage.max_seq_length or cfg.model.max_seq_length,
        remove_unused_columns=False,
    )
    return DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, callbacks=callbacks)

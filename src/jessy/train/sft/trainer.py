"""An SFT stage: TRL's SFTTrainer on pre-tokenized conversations (labels only on assistant replies).

jessy keeps TRL's trainer (collation, schedules, checkpoints, logging) and replaces one thing, the
loss: only the labelled positions go through the 262k-entry LM head, as whole-vocabulary
matmuls in position chunks (``loss.py``). TRL's own fused head tiles the vocabulary in Python and
also computes entropy and top-1 for its metrics, which on a CPU costs more than it saves.
Batches are padded to their longest row and length-grouped sampling keeps rows alike. On CPU it
trains in fp32 without gradient checkpointing (TRL's bf16 and checkpointing defaults are ~3x
slower there); on CUDA in bf16 with checkpointing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jessy.config import JessyConfig, StageConfig
from jessy.train.args import common_args


def _trainer_class() -> type:
    from trl import SFTTrainer

    from jessy.train.sft.loss import labelled_positions_loss

    class JessySFTTrainer(SFTTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss, _ = labelled_positions_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if model.training else "eval"
            if mode == "train":  # real (non-pad) tokens, as TRL counts them
                seen = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum()
                self._total_train_tokens += int(seen)
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, None) if return_outputs else loss

    return JessySFTTrainer


def build_trainer(cfg: JessyConfig, stage: StageConfig, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any,
                  stage_dir: Path, device: str, callbacks: list[Any], learning_rate: float | None = None) -> Any:
    from trl import SFTConfig

    args = SFTConfig(
        **common_args(cfg, stage, stage_dir, len(train_ds), device, learning_rate),
        train_sampling_strategy="group_by_length",
        max_length=None,  # rows are already truncated by jessy's template (oldest turns first)
        packing=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        prediction_loss_only=True,
    )
    return _trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, callbacks=callbacks)

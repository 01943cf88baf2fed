"""Staged training: one folder per stage kind (sft/, dpo/), the pipeline that chains them."""

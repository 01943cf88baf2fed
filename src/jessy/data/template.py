"""Gemma chat formatting: one template for training, GGUF and Ollama, and tokenization with labels.

Gemma has no system role: the persona prompt is folded into the first user turn, exactly as
Google's Gemma 3 template does. Assistant turns are wrapped in ``{% generation %}`` so that
``apply_chat_template(return_assistant_tokens_mask=True)`` marks them; the mark covers each
reply *and* its ``<end_of_turn>`` (a model that never sees that label never learns to stop).
The template writes the single ``<bos>``; tokenization never adds another.
"""

from __future__ import annotations

import re
from typing import Any

BOS = "<bos>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
IGNORE_INDEX = -100

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{% generation %}{{ message['content'] | trim }}{{ '<end_of_turn>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<start_of_turn>user\n' }}{{ first_user_prefix if loop.first else '' }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def inference_template() -> str:
    """The same template without HF's training-only ``{% generation %}`` tags (for GGUF/llama.cpp)."""
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", CHAT_TEMPLATE)


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Put the persona prompt first unless the conversation brings its own system message."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATE, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """Token ids, attention mask and labels (-100 outside assistant replies) of one conversation."""
    enc = tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATE, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(enc["input_ids"])
    mask = list(enc["assistant_masks"])
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


class TooLong(ValueError):
    """Even the system prompt and the last exchange do not fit in ``max_seq_length``."""


def encode_truncated(tokenizer: Any, messages: list[dict[str, str]], max_seq_length: int) -> dict[str, Any]:
    """Encode, dropping the oldest exchanges first until it fits; the system prompt and the last
    exchange are always kept. ``dropped_turns`` says how many messages were dropped."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(system):]
    starts = [i for i, m in enumerate(body) if m["role"] == "user"]
    for dropped, start in enumerate(starts):
        enc = encode(tokenizer, system + body[start:])
        if len(enc["input_ids"]) <= max_seq_length:
            return {**enc, "dropped_turns": start}
        if dropped == len(starts) - 1:
            raise TooLong(f"{len(enc['input_ids'])} tokens even with only the last exchange; "
                          f"max_seq_length is {max_seq_length}")
    raise TooLong("no user turn")

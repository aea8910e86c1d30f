"""Chat turns built through the tokenizer's own chat template (FTTT_SPEC 1.3, 6.2).

The original writes follow-up turns as hand-made special-token strings per "arch"
(Llama, Mistral). Here every turn comes from ``apply_chat_template``: the conversation
is rendered with a placeholder where the assistant's attempt goes, and what the
template writes *after* the placeholder is the follow-up. So it works for any model
whose template can render an assistant turn followed by a user turn, and the text is
exactly what that model was trained on.

The follow-up therefore begins with the template's end of the assistant turn (Llama's
``<|eot_id|>``, Mistral's ``</s>``, ChatML's ``<|im_end|>``), as the original's strings
do. That is what keeps FTTT's cache trick aligned: ``generate`` returns a cache over
prompt + attempt minus the last sampled token (the attempt's end-of-turn), so the
follow-up's first token takes exactly that token's slot (``continuation_after``).
"""

from __future__ import annotations

from typing import Any

from scoreflow.errors import ScoreFlowError

# Stands for the attempt (and, for FTTT+, the reflection) while a template renders; no
# tokenizer splits these code points into anything a model would write.
ATTEMPT = "\u2063\u2064FTTT-ATTEMPT\u2064\u2063"
TAIL = "\u2063\u2064FTTT-TAIL\u2064\u2063"


def prompt_text(tokenizer: Any, user_message: str) -> str:
    """The question as one user turn with the assistant header (the template's BOS and
    default system block included), as the original renders it."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], add_generation_prompt=True, tokenize=False
    )


def prompt_ids(tokenizer: Any, user_message: str) -> list[int]:
    """``prompt_text`` tokenized with ``add_special_tokens=False`` (the template already
    holds the BOS; a second one would shift every position)."""
    return encode(tokenizer, prompt_text(tokenizer, user_message))


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def followup_text(tokenizer: Any, user_message: str, message: str, *, assistant_header: bool) -> str:
    """What follows an assistant attempt: the end of its turn, a user turn saying
    ``message`` and, with ``assistant_header``, the next assistant header."""
    conversation = [
        {"role": "user", "content": user_message},
        {"role": "assistant", "content": ATTEMPT},
        {"role": "user", "content": message},
    ]
    rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=assistant_header, tokenize=False)
    head, found, after = rendered.partition(ATTEMPT)
    if not found or ATTEMPT in after:
        raise ScoreFlowError(
            "the tokenizer's chat template does not render an assistant turn's content verbatim; "
            "FTTT needs a template that does (set model.name to a chat model)"
        )
    if message and message.strip() not in after:
        raise ScoreFlowError("the tokenizer's chat template dropped the follow-up user turn")
    return after


def followup_ids(tokenizer: Any, user_message: str, message: str, *, assistant_header: bool) -> list[int]:
    return encode(tokenizer, followup_text(tokenizer, user_message, message, assistant_header=assistant_header))


def followup_segments(tokenizer: Any, user_message: str, message: str, *, assistant_header: bool) -> tuple[str, str]:
    """The follow-up split where free text is appended to ``message`` inside the same
    user turn (FTTT+'s "incorrect" sentence followed by the reflection): the text up to
    and including ``message``, and the template's text after the appended part."""
    text = followup_text(tokenizer, user_message, message + TAIL, assistant_header=assistant_header)
    before, found, after = text.partition(TAIL)
    if not found:
        raise ScoreFlowError("the tokenizer's chat template changed the follow-up message's text")
    return before, after


def continuation_after(attempt_ids: list[int], followup: list[int]) -> list[int]:
    """Ids that continue ``prompt + attempt``: the follow-up without its first token when
    the attempt already ended with that token (the end-of-turn it sampled)."""
    if attempt_ids and followup and attempt_ids[-1] == followup[0]:
        return followup[1:]
    return followup

"""Tokenizing training examples as the model saw them at inference time.

Each example is tokenized as the chat template applied to the context with the assistant
turn opened (the prompt), then the target reply and the end-of-turn token (the completion).
A reply decoded under a grammar (the example's `grammar`) has tokens the grammar forced (the
rest of a tag, a file name when there is one file, the end-of-turn after `<|DONE|>`), which
teach nothing: `forced_mask` finds them, and the loss (`loss.py`) weighs them apart. A
context too long for `max_seq_len` is cut in the middle of its history: the system prompt
and the demonstrations (which inference never cuts) and the latest turns stay; the
completion is always kept whole.

llguidance is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: end-of-turn tokens besides the tokenizer's EOS (ChatML)
_TURN_END = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")
IGNORE = -100


@dataclass
class Encoded:
    """One tokenized example: ids, labels (IGNORE on the context) and, per position, whether
    the reply grammar forced that target token (`forced_mask`; False on the context)."""

    input_ids: list[int]
    labels: list[int]
    forced: list[bool]


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """The token ids that end a reply: the tokenizer's EOS and the end-of-turn tokens it has."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in _TURN_END if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _llg_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of `tokenizer`, built once per tokenizer object, with the end-of-turn
    token as its end of sequence (as `LocalModel` builds it)."""
    llg = getattr(tokenizer, "_automem_llg", None)
    if llg is None:
        import llguidance.hf

        vocab = tokenizer.get_vocab()
        llg = llguidance.hf.from_tokenizer(tokenizer, eos_token=vocab.get("<|im_end|>", tokenizer.eos_token_id))
        tokenizer._automem_llg = llg
    return llg


def forced_mask(tokenizer: Any, grammar: str | None, completion: list[int]) -> list[bool]:
    """Per token of `completion` (a reply's tokens, ending with end-of-turn): whether the reply
    grammar (a regex; None: unconstrained, nothing forced) forced it: the grammar allowed
    exactly one token there, or every byte of the token is in what the grammar allowed as
    the only continuation (llguidance's forced bytes: a tag's rest, `<|` before the next
    command, `|` after a file name). The test is on bytes, so it holds whatever tokenization
    the reply had at inference (jump-forward feeds the forced bytes' own tokens); a token that
    spans forced bytes and bytes the model chose counts as chosen. The end-of-turn token is
    forced when the grammar is complete (nothing else may follow). ValueError when the reply is
    not a sentence of the grammar."""
    if grammar is None:
        return [False] * len(completion)
    import llguidance
    import numpy as np

    from agent_core.grammar import Grammar

    llg = _llg_tokenizer(tokenizer)
    matcher = llguidance.LLMatcher(llg, Grammar(grammar).llguidance())
    out = []
    for i, token in enumerate(completion):
        text = llg.decode_bytes([token])
        if matcher.is_stopped():  # complete: only the end-of-turn may follow, and it ends the reply
            if token not in llg.eos_tokens or i != len(completion) - 1:
                raise ValueError(f"the reply is not a sentence of its grammar: it goes on after the grammar "
                                 f"ended, at token {i} ({text!r})")
            out.append(True)
            break
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        out.append(int(bits.sum()) == 1 or (bool(text) and matcher.compute_ff_bytes().startswith(text)))
        if not matcher.consume_token(token):
            raise ValueError(f"the reply is not a sentence of its grammar at token {i} "
                             f"({text!r}): {matcher.get_error()}")
    return out


def encode_example(tokenizer: Any, messages: list[dict[str, str]], target: str, max_seq_len: int,
                   stop_ids: set[int] | None = None, fixed: int = 1, grammar: str | None = None) -> Encoded | None:
    """Tokenize one example. A context too long for `max_seq_len` is cut in the middle, as
    inference would never cut it: its first `fixed` messages (system prompt, demonstrations)
    and its latest tokens stay. None when the completion and those messages do not fit.
    `grammar`: the text of the grammar the reply was decoded under (`forced_mask`)."""
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": target}], tokenize=False)
    completion_text = full_text[len(prompt_text):]
    if not full_text.startswith(prompt_text) or not completion_text.startswith(target):
        raise ValueError("the chat template does not render the reply verbatim after the prompt; "
                         "targets cannot be isolated")
    # prompt and completion are tokenized apart: at inference the reply starts after the
    # prompt's tokens, so a token merging across the boundary never occurs there either
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    stops = end_of_turn_ids(tokenizer) if stop_ids is None else stop_ids
    end = next((i for i, t in enumerate(completion) if t in stops), None)
    if end is not None:  # keep the end-of-turn token, drop the template's trailing newline
        completion = completion[:end + 1]
    budget = max_seq_len - len(completion)
    if budget < 1:  # at least one context token must precede the first target token
        return None
    if len(prompt) > budget:
        head = _head_length(tokenizer, messages[:fixed], prompt) if fixed else 0
        if head + 1 > budget:
            return None
        prompt = prompt[:head] + prompt[len(prompt) - (budget - head):]
    return Encoded(prompt + completion, [IGNORE] * len(prompt) + completion,
                   [False] * len(prompt) + forced_mask(tokenizer, grammar, completion))


def _head_length(tokenizer: Any, head: list[dict[str, str]], prompt: list[int]) -> int:
    """Tokens of `prompt` that render the messages `head` (a prefix of its messages)."""
    text = tokenizer.apply_chat_template(head, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prompt[:len(ids)] != ids:
        raise ValueError("the chat template does not render the fixed messages as a prefix of the prompt")
    return len(ids)


def encode_all(tokenizer: Any, examples: list[dict[str, Any]], max_seq_len: int) -> list[Encoded]:
    """`encode_example` of each dataset example (its messages, target, fixed prefix and
    grammar) that fits `max_seq_len`."""
    stops = end_of_turn_ids(tokenizer)
    return [e for e in (encode_example(tokenizer, x["messages"], x["target"], max_seq_len, stops,
                                       fixed=x.get("fixed", 1), grammar=x.get("grammar"))
                        for x in examples) if e is not None]

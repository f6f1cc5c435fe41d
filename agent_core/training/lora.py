"""LoRA training of the memory specialist: peft on transformers, a small plain training loop.

Each example is tokenized as the model saw it at inference time: the chat template applied
to the context with the assistant turn opened (the prompt), then the target reply and the
end-of-turn token (the completion). The loss covers only the completion tokens, and of those
only the ones the model chose: a reply decoded under a grammar (the example's `grammar`) has
tokens the grammar forced (the rest of a tag, a file name when there is one file, the
end-of-turn after `<|DONE|>`), which teach nothing; they weigh `forced_weight` (default 0)
and their loss is reported apart (`forced_mask`). A context
too long for `max_seq_len` is cut in the middle of its history: the system prompt and the
demonstrations (which inference never cuts) and the latest turns stay; the completion is
always kept whole.

Training runs on `device` ("auto": CUDA when torch sees a GPU, else CPU): fp32 base weights
on a CPU, bf16 on a GPU (the LoRA weights stay fp32 either way), optionally with gradient
checkpointing; device and dtype are recorded in `training_config.json`.

The adapter is written in peft format (`adapter_config.json`, `adapter_model.safetensors`,
loadable by peft and vLLM) with `training_config.json`, `loss_curve.json` and
`train_log.csv` beside it, into a temp folder renamed into place at the very end: a run
that dies leaves nothing at `out_dir`.

torch, transformers and peft are imported inside the functions (they take seconds).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent_core.models.devices import kind, resolve_device, training_dtype
from agent_core.models.weights import force_offline, local_model_path
from agent_core.training.dataset import load_examples, remove_stale, split_held_out  # noqa: F401 (re-exported)
from agent_core.training.program import LoraSettings, ProgramError, check_lora

log = logging.getLogger(__name__)

#: end-of-turn tokens besides the tokenizer's EOS (ChatML)
_TURN_END = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")
IGNORE = -100
#: weight of the target tokens the reply grammar forced, against 1 for the tokens the model
#: chose (0: they are not trained on; measured in docs/architecture.md, outer loop 2)
FORCED_WEIGHT = 0.0


@dataclass(frozen=True)
class StepLog:
    """What the progress callback receives after every optimizer step."""

    step: int
    total_steps: int
    epoch: int
    #: the loss trained on: mean over the target tokens, forced ones weighted `forced_weight`
    loss: float
    lr: float
    #: non-padding tokens in this step's batches (context + target)
    tokens: int
    examples: int
    elapsed_s: float
    #: mean loss over the target tokens the model chose, and over those the grammar forced
    #: (None when the step had none of that kind)
    chosen_loss: float | None = None
    forced_loss: float | None = None
    chosen_tokens: int = 0
    forced_tokens: int = 0


class TrainResult(BaseModel):
    """A finished training run."""

    adapter_dir: Path = Field(description="The peft adapter folder (with the logs beside it).")
    steps: int = Field(description="Optimizer steps taken.")
    examples: int = Field(description="Training examples used (after dropping those that do not fit).")
    final_loss: float = Field(description="Training loss of the last step.")
    eval_loss: float | None = Field(description="Loss (eval mode) after training on the held-out "
                                    "episodes' examples (`dataset.split_held_out`), never trained on, weighted "
                                    "as in training (forced tokens by forced_weight); the saved "
                                    "adapter reproduces it (`batch_loss`). None with fewer than 2 episodes.")
    eval_examples: int = Field(0, description="Held-out examples behind eval_loss.")
    loss_curve: list[float] = Field(description="Training loss per optimizer step.")
    forced_weight: float = Field(FORCED_WEIGHT, description="Weight of the grammar-forced target tokens "
                                 "(1: the model's own choices).")
    chosen_loss_curve: list[float | None] = Field(default_factory=list, description="Per step: mean loss "
                                                  "over the target tokens the model chose.")
    forced_loss_curve: list[float | None] = Field(default_factory=list, description="Per step: mean loss "
                                                  "over the target tokens the grammar forced (None: none).")
    chosen_tokens: int = Field(0, description="Target tokens the model chose, in the training examples.")
    forced_tokens: int = Field(0, description="Target tokens the grammar forced, in the training examples.")
    tokens: int = Field(description="Non-padding tokens processed over all steps.")
    wall_s: float = Field(description="Seconds spent in the training loop.")
    base_model: str = Field(description="Name of the base model folder.")
    device: str = Field("cpu", description="Kind of device trained on (cpu, cuda).")
    dtype: str = Field("float32", description="Dtype of the base weights during training.")


@dataclass
class Encoded:
    """One tokenized example: ids, labels (IGNORE on the context) and, per position, whether
    the reply grammar forced that target token (`forced_mask`; False on the context)."""

    input_ids: list[int]
    labels: list[int]
    forced: list[bool]


def _stop_ids(tokenizer: Any) -> set[int]:
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
    stops = _stop_ids(tokenizer) if stop_ids is None else stop_ids
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


def collate(batch: list[Encoded], pad_id: int, torch: Any, device: Any = "cpu") -> dict[str, Any]:
    """Right-padded tensors on `device`: input_ids, attention_mask, labels (what the model's
    forward pass takes)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _forced(batch: list[Encoded], torch: Any, device: Any = "cpu") -> Any:
    """The forced mask of `batch`, padded like `collate`'s tensors."""
    out = torch.zeros((len(batch), max(len(e.input_ids) for e in batch)), dtype=torch.bool)
    for i, e in enumerate(batch):
        out[i, :len(e.forced)] = torch.tensor(e.forced, dtype=torch.bool)
    return out.to(device)


@dataclass
class LossSums:
    """Summed cross-entropy over a batch's target tokens, chosen and forced apart."""

    chosen: Any  # a 0-d tensor (with its graph while training)
    forced: Any
    n_chosen: int
    n_forced: int

    def weighted(self, forced_weight: float) -> tuple[Any, float]:
        """The sum to train on and its normaliser (tokens, forced ones weighted)."""
        return self.chosen + forced_weight * self.forced, self.n_chosen + forced_weight * self.n_forced


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def _loss_split(model: Any, batch: dict[str, Any], forced: Any, torch: Any) -> LossSums:
    """`_loss_sum` split by `forced` (a bool tensor shaped like the labels)."""
    losses, sel = _token_losses(model, batch, torch)
    f = forced[:, 1:][sel]
    return LossSums(losses[~f].sum(), losses[f].sum(), int((~f).sum()), int(f.sum()))


def _loss_sum(model: Any, batch: dict[str, Any], torch: Any) -> tuple[Any, int]:
    """Summed cross-entropy over the target tokens of a batch, and their number."""
    losses, _ = _token_losses(model, batch, torch)
    return losses.sum(), int(losses.numel())


def _token_losses(model: Any, batch: dict[str, Any], torch: Any) -> tuple[Any, Any]:
    """Cross-entropy of each target token of a batch (in row order), and the target positions
    (a bool tensor shaped like `labels[:, 1:]`).

    Only target positions go through the output projection: for a small model with a large
    vocabulary it is a big share of the work, and contexts are long while replies are short."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = batch["labels"][:, 1:]
    sel = labels != IGNORE
    config = base.config
    direct = getattr(base, "get_decoder", None) and not (
        getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))
    if direct:
        hidden = base.get_decoder()(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"]).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][sel])
    else:  # models that transform logits in their head: take the full forward pass
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][sel]
    return F.cross_entropy(logits.float(), labels[sel], reduction="none"), sel


def encode_all(tokenizer: Any, examples: list[dict[str, Any]], max_seq_len: int) -> list[Encoded]:
    """`encode_example` of each dataset example (its messages, target, fixed prefix and
    grammar) that fits `max_seq_len`."""
    stops = _stop_ids(tokenizer)
    return [e for e in (encode_example(tokenizer, x["messages"], x["target"], max_seq_len, stops,
                                       fixed=x.get("fixed", 1), grammar=x.get("grammar"))
                        for x in examples) if e is not None]


def eval_losses(model: Any, tokenizer: Any, examples: list[dict[str, Any]], max_seq_len: int) -> LossSums:
    """Summed target-token losses of `examples` as one batch, chosen and forced apart, in eval
    mode without gradients (plain floats)."""
    import torch

    encoded = encode_all(tokenizer, examples, max_seq_len)
    if not encoded:
        raise ValueError("no example fits max_seq_len")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            sums = _loss_split(model, collate(encoded, _pad_id(tokenizer), torch, device),
                               _forced(encoded, torch, device), torch)
    finally:
        model.train(was_training)
    return LossSums(float(sums.chosen), float(sums.forced), sums.n_chosen, sums.n_forced)


def batch_loss(model: Any, tokenizer: Any, examples: list[dict[str, Any]], max_seq_len: int,
               forced_weight: float = FORCED_WEIGHT) -> float:
    """Mean target-token loss of `examples` as one batch, forced tokens weighted
    `forced_weight` (as trained), in eval mode without gradients (how `TrainResult.eval_loss`
    is measured; use it to check a reloaded adapter). NaN when no token weighs anything."""
    total, n = eval_losses(model, tokenizer, examples, max_seq_len).weighted(forced_weight)
    return float(total) / n if n else float("nan")


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _scheduler_name(lora: LoraSettings) -> str:
    # transformers' "constant" ignores warm-up
    return "constant_with_warmup" if lora.schedule == "constant" and lora.warmup_ratio > 0 else lora.schedule


#: a temp folder untouched this long belongs to a training that was killed
_STALE_TMP_S = 24 * 3600.0


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def train_lora(dataset_dir: str | Path, lora: LoraSettings, out_dir: str | Path,
               base_path: str | Path | None = None,
               progress: Callable[[StepLog], None] | None = None,
               device: str = "auto", gradient_checkpointing: bool = False,
               forced_weight: float = FORCED_WEIGHT) -> TrainResult:
    """Train a LoRA adapter on `dataset_dir/train.jsonl` and save it at `out_dir`.

    `base_path`: the base checkpoint (default: the prepared local model). `device`: auto,
    cpu, cuda or cuda:N (ValueError when this machine lacks it). `gradient_checkpointing`
    recomputes activations in the backward pass (less memory for long contexts, about a
    third more compute; the loss is the same). `forced_weight`: the weight of target tokens
    the reply grammar forced (`forced_mask`), against 1 for the model's own; the step log
    reports both losses apart. `progress` is
    called after every optimizer step; an exception from it stops training (and, like any
    failure, leaves no adapter at `out_dir`). Raises `ProgramError` when the settings do not
    fit the base model or no example fits `max_seq_len`; `FileExistsError` when `out_dir`
    already exists."""
    force_offline()
    device = resolve_device(device)  # fails fast on a device this machine lacks
    dtype = training_dtype(device)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    base = Path(base_path) if base_path is not None else local_model_path()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; train into a new folder")
    check_lora(lora, base)  # fails fast, before seconds of model loading
    examples = load_examples(dataset_dir)
    if not examples:
        raise ProgramError(f"{dataset_dir} holds no training examples")

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    if not 0.0 <= forced_weight <= 1.0:
        raise ValueError(f"forced_weight must be in [0, 1], not {forced_weight}")
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    stops = _stop_ids(tokenizer)
    fits = [(x, e) for x, e in ((x, encode_example(tokenizer, x["messages"], x["target"], lora.max_seq_len,
                                                   stops, fixed=x.get("fixed", 1), grammar=x.get("grammar")))
                                for x in examples)
            if e is not None]
    dropped = len(examples) - len(fits)
    if not fits:
        raise ProgramError(f"no example fits lora.max_seq_len {lora.max_seq_len}: every target, with the "
                           "system prompt and demonstrations that are never cut, is longer")
    train_ids, held_ids = split_held_out([x for x, _ in fits])
    held = [fits[i][0] for i in held_ids]
    encoded = [fits[i][1] for i in train_ids]
    n_forced = sum(sum(e.forced) for e in encoded)
    n_chosen = sum(sum(t != IGNORE for t in e.labels) for e in encoded) - n_forced
    if dropped:
        log.warning("%d of %d examples dropped: target and fixed prompt longer than max_seq_len %d",
                    dropped, len(examples), lora.max_seq_len)

    torch.manual_seed(lora.seed)  # LoRA A matrices and dropout draw from the global generator
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), local_files_only=True).to(device)
    model.config.use_cache = False
    if gradient_checkpointing:  # non-reentrant: needs no gradient on the frozen embeddings
        if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    check_lora(lora, base, module_names={n for n, _ in model.named_modules()})
    try:
        model = get_peft_model(model, LoraConfig(
            # an integral alpha is written as an int: some loaders (vLLM) expect one
            r=lora.rank, lora_alpha=int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM"))
    except (ValueError, TypeError) as exc:
        raise ProgramError(f"peft refused the LoRA settings: {exc}") from None
    model.train()

    micro_per_epoch = math.ceil(len(encoded) / lora.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / lora.grad_accum)
    total = steps_per_epoch * lora.epochs
    if lora.max_steps is not None:
        total = min(total, lora.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lora.learning_rate, weight_decay=0.0)
    scheduler = get_scheduler(_scheduler_name(lora), optimizer,
                              num_warmup_steps=round(lora.warmup_ratio * total), num_training_steps=total)
    pad_id = _pad_id(tokenizer)
    shuffle = torch.Generator().manual_seed(lora.seed)

    remove_stale(out_dir.parent, f"{out_dir.name}.tmp-*", _STALE_TMP_S)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        step, tokens_seen = 0, 0
        for epoch in range(lora.epochs):
            order = torch.randperm(len(encoded), generator=shuffle).tolist()
            micro = [order[i:i + lora.batch_size] for i in range(0, len(order), lora.batch_size)]
            for g in range(0, len(micro), lora.grad_accum):
                if step >= total:
                    break
                parts = [[encoded[i] for i in idx] for idx in micro[g:g + lora.grad_accum]]
                group = [(collate(p, pad_id, torch, device), _forced(p, torch, device)) for p in parts]
                # normalise by the group's weighted target tokens: every token of a kind weighs
                # the same, however the tokens fall into micro-batches
                forced_n = sum(int(f[:, 1:][b["labels"][:, 1:] != IGNORE].sum()) for b, f in group)
                norm = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b, _ in group) - forced_n \
                    + forced_weight * forced_n
                sums = LossSums(0.0, 0.0, 0, 0)
                for b, f in group:
                    split = _loss_split(model, b, f, torch)
                    loss, _ = split.weighted(forced_weight)
                    if norm and loss.requires_grad:
                        (loss / norm).backward()
                    sums = LossSums(sums.chosen + float(split.chosen.detach()), sums.forced + float(split.forced.detach()),
                                    sums.n_chosen + split.n_chosen, sums.n_forced + split.n_forced)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens = sum(int(b["attention_mask"].sum()) for b, _ in group)
                tokens_seen += tokens
                total_w, norm_w = sums.weighted(forced_weight)
                row = StepLog(step=step, total_steps=total, epoch=epoch + 1,
                              loss=total_w / norm_w if norm_w else float("nan"),
                              lr=lr, tokens=tokens, examples=sum(len(p) for p in parts),
                              elapsed_s=round(time.perf_counter() - started, 3),
                              chosen_loss=_mean(sums.chosen, sums.n_chosen),
                              forced_loss=_mean(sums.forced, sums.n_forced),
                              chosen_tokens=sums.n_chosen, forced_tokens=sums.n_forced)
                rows.append(asdict(row))
                log.info("lora step %d/%d epoch %d loss %.4f (chosen %s, forced %s) lr %.2e (%d tokens, %.1f s)",
                         step, total, row.epoch, row.loss, _fmt(row.chosen_loss), _fmt(row.forced_loss),
                         lr, tokens, row.elapsed_s)
                if progress is not None:
                    progress(row)
        wall = time.perf_counter() - started
        # measured on held-out examples (reproducible from the dataset alone, to check a
        # reloaded adapter)
        eval_loss = batch_loss(model, tokenizer, held, lora.max_seq_len, forced_weight) if held else None

        # the adapter names its base by folder name only: no machine paths in artifacts
        model.peft_config["default"].base_model_name_or_path = base.name
        # save_embedding_layers=False: the vocabulary is never resized, and the "auto" check
        # would look the base up by that name
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        curve = [r["loss"] for r in rows]
        (tmp / "loss_curve.json").write_text(json.dumps(
            [{k: r[k] for k in ("step", "loss", "chosen_loss", "forced_loss", "lr")} for r in rows], indent=1))
        with open(tmp / "train_log.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "training_config.json").write_text(json.dumps({
            "lora": lora.model_dump(mode="json"), "base_model": base.name, "dataset": dataset_dir.name,
            "examples": len(encoded), "held_out": len(held), "dropped_too_long": dropped, "steps": step,
            "scheduler": _scheduler_name(lora), "optimizer": "AdamW", "grad_clip": 1.0,
            "tokens": tokens_seen, "final_loss": curve[-1] if curve else None, "eval_loss": eval_loss,
            "forced_weight": forced_weight, "target_tokens_chosen": n_chosen, "target_tokens_forced": n_forced,
            "wall_s": round(wall, 3), "device": kind(device), "dtype": dtype,
            # as the model's layers were set, not as asked
            "gradient_checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in model.modules()),
            "versions": _versions()}, indent=2))
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TrainResult(adapter_dir=out_dir, steps=step, examples=len(encoded),
                       final_loss=curve[-1] if curve else float("nan"), eval_loss=eval_loss,
                       eval_examples=len(held),
                       loss_curve=curve, tokens=tokens_seen, wall_s=round(wall, 3), base_model=base.name,
                       device=kind(device), dtype=dtype, forced_weight=forced_weight,
                       chosen_loss_curve=[r["chosen_loss"] for r in rows],
                       forced_loss_curve=[r["forced_loss"] for r in rows],
                       chosen_tokens=n_chosen, forced_tokens=n_forced)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

"""Batches of encoded examples and their losses: the loss covers only the completion tokens
(the target reply), and of those only the ones the model chose weigh fully; the tokens the
reply grammar forced (`encoding.forced_mask`) weigh `forced_weight` (default
`FORCED_WEIGHT`, 0) and their loss is reported apart (`LossSums`).

torch is imported inside the functions (it takes seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent_core.training.encoding import IGNORE, Encoded, encode_all

#: weight of the target tokens the reply grammar forced, against 1 for the tokens the model
#: chose (0: they are not trained on; measured in docs/architecture.md, outer loop 2)
FORCED_WEIGHT = 0.0


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


def forced_batch(batch: list[Encoded], torch: Any, device: Any = "cpu") -> Any:
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


def loss_split(model: Any, batch: dict[str, Any], forced: Any, torch: Any) -> LossSums:
    """`loss_sum` split by `forced` (a bool tensor shaped like the labels)."""
    losses, sel = _token_losses(model, batch, torch)
    f = forced[:, 1:][sel]
    return LossSums(losses[~f].sum(), losses[f].sum(), int((~f).sum()), int(f.sum()))


def loss_sum(model: Any, batch: dict[str, Any], torch: Any) -> tuple[Any, int]:
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
            sums = loss_split(model, collate(encoded, pad_token_id(tokenizer), torch, device),
                              forced_batch(encoded, torch, device), torch)
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


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with (`collate`): the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

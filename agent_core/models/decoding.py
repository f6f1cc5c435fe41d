"""Decoding one reply of the local model: its row state, sampling, and grammar-constrained
decoding with jump-forward and reply closing.

With a constraint, every token is drawn from those the grammar allows next (llguidance fills
the mask); where the grammar allows exactly one continuation (the rest of a tag, an action
name's remaining tokens), those tokens are fed in the same forward pass as the sampled one
(jump-forward), not generated one by one. A constrained reply about to run out of tokens is
closed by the decoder itself (`CLOSINGS`), taking tokens back where nothing closes it.

torch, llguidance and numpy are imported when a decoder is built or used, never at module
import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_core.models.base import ModelError
from agent_core.models.prefix_cache import PrefixEntry
from agent_core.records import SamplingParams

if TYPE_CHECKING:
    from agent_core.grammar import Grammar

#: tokens that end an assistant turn in ChatML besides the configured EOS
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
#: what closes a constrained reply that is about to run out of tokens, tried in this order
#: (each only where the grammar allows it): end the open command and the reply there (a
#: look-up group ends a reply), end it and the routine, or end the routine
CLOSINGS = ("<|END|>", "<|END|><|DONE|>", "<|DONE|>")


@dataclass(eq=False)
class Row:
    """One reply being decoded: its request, its KV entry and its decoding state."""

    prompt: list[int]
    params: SamplingParams
    name: str
    matcher: Any  # llguidance.LLMatcher or None
    budget: int
    entry: PrefixEntry | None = None
    reused: int = 0
    #: tokens to feed at the next forward pass (the prompt's rest, then sampled + forced ones)
    feed: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    token_logits: list[float] = field(default_factory=list)
    passes: int = 0
    finish: str = "length"
    done: bool = False
    #: the tokens the model wrote, when the reply was closed at its budget
    #: (`Decoder.before_forward`, `Decoder._close_by_rollback`); None: the reply ended as the
    #: model wrote it
    written: list[int] | None = None
    generator: Any = None

    def seed(self, torch: Any) -> None:
        """Its own generator, seeded by the request (or from the OS): rows sample independently."""
        self.generator = torch.Generator()
        if self.params.seed is not None:
            self.generator.manual_seed(self.params.seed)
        else:
            self.generator.seed()


class Decoder:
    """Turns a row's last-position logits into its next tokens, over one tokenizer.

    Args:
        tokenizer: the model's (fast) tokenizer.
        eos: the generation config's end-of-sequence id(s).
        vocab_size: rows of the output embedding (the logits' width, padding included).
    """

    def __init__(self, tokenizer: Any, eos: int | list[int] | None, vocab_size: int) -> None:
        import torch

        self._torch = torch
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.stop_ids = {i for i in eos_ids if i is not None}
        self.stop_ids |= {vocab[t] for t in _STOP_TOKENS if t in vocab}
        if tokenizer.eos_token_id is not None:
            self.stop_ids.add(tokenizer.eos_token_id)
        self._vocab_size = vocab_size
        self._eos_id = vocab.get("<|im_end|>", tokenizer.eos_token_id)
        self._llg_tokenizer: Any = None  # llguidance's view of the tokenizer, built on first use
        self._closings = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in CLOSINGS]
        self._bar_id = vocab.get("|", -1)  # the argument separator as one token
        #: tokens kept back to close a constrained reply: the longest closing and end-of-turn
        self.close_reserve = max(len(c) for c in self._closings) + 1

    # -- a row's steps --------------------------------------------------------------------

    def before_forward(self, row: Row) -> bool:
        """Whether `row` is over before its next forward pass: its budget spent, or so nearly
        spent that the reply is closed now (see `_closing`)."""
        if row.done:
            return True
        if len(row.out) >= row.budget:
            self.end_row(row, "length")
            return True
        if row.matcher is not None and row.budget - len(row.out) <= self.close_reserve:
            closing = self._closing(row.matcher, row.budget - len(row.out), late=True)
            if closing:
                row.written = list(row.out)
                row.out.extend(closing)
                self.end_row(row, "stop")
                return True
        return False

    def after_forward(self, row: Row, logits: Any, jump_forward: bool) -> None:
        """Draw `row`'s next token from the last position's `logits` (masked by its grammar),
        then queue what it feeds next: that token and, with `jump_forward`, the tokens its
        grammar forces."""
        raw = logits
        if row.matcher is not None:
            logits = self._mask(row.matcher, logits)
        token = self.next_token(logits, row.params, row.generator)
        row.token_logits.append(float(raw[token]))
        row.out.append(token)
        if token in self.stop_ids:
            self.end_row(row, "stop")
            return
        row.feed = [token]
        matcher = row.matcher
        if matcher is None:
            return
        if not matcher.consume_token(token):
            raise ModelError(f"grammar engine refused token {token}: {matcher.get_error()}")
        if matcher.is_stopped():  # complete: only end-of-turn may follow
            self.end_row(row, "stop")
            return
        forced = matcher.compute_ff_tokens()[: row.budget - len(row.out)] if jump_forward else []
        if forced:
            matcher.consume_tokens(forced)
            row.out.extend(forced)
            row.feed.extend(forced)
            if matcher.is_stopped():
                self.end_row(row, "stop")

    def end_row(self, row: Row, finish: str) -> None:
        """Mark `row` over; a constrained reply cut off by its budget is closed by rollback
        where possible, and its KV entry forgets the tokens taken back."""
        if finish == "length" and row.matcher is not None:
            wrote = list(row.out)
            finish, kept = self._close_by_rollback(row.matcher, row.out, row.budget)
            del row.entry.tokens[len(row.prompt) + kept:]
            if finish == "stop":
                row.written = wrote
        row.finish, row.done = finish, True

    def next_token(self, logits: Any, params: SamplingParams, gen: Any) -> int:
        """The token drawn from `logits`: greedy at temperature 0, else sampled by `gen`
        within `params.top_p`."""
        torch = self._torch
        if params.temperature <= 0.0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            # keep the smallest set whose mass reaches top_p (the top token always stays)
            drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= params.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=gen))

    # -- constrained decoding ---------------------------------------------------------------

    def matcher(self, constraint: Grammar) -> Any:
        """A fresh llguidance matcher for `constraint` over this tokenizer."""
        import llguidance
        import llguidance.hf

        if self._llg_tokenizer is None:
            # the end-of-turn token ends a reply; llguidance allows it once the grammar is complete
            self._llg_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self._vocab_size, eos_token=self._eos_id)
        try:
            matcher = llguidance.LLMatcher(self._llg_tokenizer, constraint.llguidance())
        except ValueError as exc:
            raise ModelError(f"grammar does not compile: {exc}") from exc
        if matcher.is_error():
            raise ModelError(f"grammar does not compile: {matcher.get_error()}")
        return matcher

    def _closing(self, matcher: Any, room: int, late: bool = False) -> list[int]:
        """The first of `CLOSINGS` the grammar allows now that ends the reply within `room`
        tokens (with end-of-turn unless the grammar is then complete), consumed by `matcher`;
        [] if none. `late`: only when closing later might not fit any more (the model keeps
        the budget until then)."""
        if matcher.is_accepting() and room >= 1 and not (late and room > 2):
            return [self._eos_id]  # complete already: end the turn
        for tokens in self._closings:
            if len(tokens) > room or matcher.validate_tokens(tokens) != len(tokens):
                continue
            matcher.consume_tokens(tokens)
            if matcher.is_stopped():
                closed = list(tokens)
            elif matcher.is_accepting() and len(tokens) < room:
                closed = [*tokens, self._eos_id]
            else:
                matcher.rollback(len(tokens))
                continue
            if late and room - len(closed) > 1:  # one more token still leaves room to close
                matcher.rollback(len(tokens))
                return []
            return closed
        return []

    def _close_by_rollback(self, matcher: Any, out_ids: list[int], budget: int) -> tuple[str, int]:
        """A constrained reply ran out of tokens where nothing closes it (inside a file name,
        before a command's last argument): take back tokens until a closing fits, in place.
        ("stop", tokens kept before the closing), or ("length", all) when no point of the
        reply allows a closing."""
        kept = list(out_ids)
        while out_ids:
            matcher.rollback(1)
            out_ids.pop()
            closing = self._closing(matcher, budget - len(out_ids)) or \
                self._fill_and_close(matcher, budget - len(out_ids))
            if closing:
                n = len(out_ids)
                out_ids.extend(closing)
                return "stop", n
        matcher.consume_tokens(kept)  # nothing closes it: the reply stays cut off
        out_ids.extend(kept)
        return "length", len(kept)

    def _fill_and_close(self, matcher: Any, room: int, max_fill: int = 3) -> list[int]:
        """Where no closing fits (a non-final argument, a file name begun), complete the
        open part with at most `max_fill` tokens - a separator '|' where allowed, else the
        grammar's forced tokens or its first allowed token - then close; consumed by
        `matcher`, or [] (matcher unchanged) if that does not end the reply within `room`."""
        import numpy as np

        path: list[int] = []
        while len(path) < max_fill and len(path) < room:
            forced = matcher.compute_ff_tokens()
            if forced:
                step = forced
            else:
                bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8),
                                     bitorder="little")
                allowed = [int(i) for i in np.flatnonzero(bits[: self._vocab_size])[:64]
                           if int(i) not in self.stop_ids]
                if not allowed:
                    break
                step = [self._bar_id] if self._bar_id in allowed else allowed[:1]
            step = step[: room - len(path)]
            matcher.consume_tokens(step)
            path.extend(step)
            closing = self._closing(matcher, room - len(path))
            if closing:
                return path + closing
        if path:
            matcher.rollback(len(path))
        return []

    def _mask(self, matcher: Any, logits: Any) -> Any:
        """`logits` with every token the grammar forbids at -inf (applied here: llguidance's
        torch helper is compiled on first use, which costs seconds on a CPU)."""
        import numpy as np

        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = self._torch.from_numpy(bits[: logits.shape[-1]].astype(bool))
        if allowed.shape[-1] < logits.shape[-1]:  # padded vocabulary rows: never allowed
            allowed = self._torch.nn.functional.pad(allowed, (0, logits.shape[-1] - allowed.shape[-1]))
        return logits.masked_fill(~allowed, float("-inf"))

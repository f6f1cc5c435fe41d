"""What the batch scheduler (`batching.Batcher`) needs of a model: `RowModel`.

The model owns a row's life - its KV entry from the prefix cache, the forward passes, the
decoding of each pass's logits, the prefix kept at the end - and the scheduler only decides
which rows share a pass (and, on the padded path, keeps the batch's KV cache).
`local.LocalModel` implements it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from agent_core.models.decoding import Row
from agent_core.models.prefix_cache import PrefixEntry


class RowModel(Protocol):
    """A model whose replies are decoded as `Row`s, several per forward pass."""

    #: held for each scheduler step: adapters and caches change only between steps
    lock: AbstractContextManager[Any]
    #: where the forward passes run (torch device)
    device: Any
    #: rows decoded together
    max_batch: int
    #: prompt tokens prefilled per scheduler step
    prefill_chunk: int
    #: each row keeps its own KV cache (`rows_forward`); False: one padded batch cache (`forward`)
    invariant: bool
    #: finished rows' KV entries are kept for reuse
    prefix_reuse: bool

    def adapter_tag(self, name: str) -> Any:
        """The identity of model `name`'s weights now (None: the base; False: not loaded)."""
        ...

    def start_row(self, row: Row) -> None:
        """Check `row`'s model name and give it its KV entry (a cached prefix, or an empty
        one) and its first feed, the rest of its prompt."""
        ...

    def keep_prefix(self, name: str, entry: PrefixEntry) -> None:
        """Give a KV entry of model `name` back to the prefix cache."""
        ...

    def before_forward(self, row: Row) -> bool:
        """Whether `row` is over before its next forward pass (then it has ended)."""
        ...

    def rows_forward(self, rows: list[Row], feeds: list[list[int]]) -> Any:
        """One pass feeding each row its tokens into its own KV cache; last-position logits."""
        ...

    def forward(self, names: list[str], **inputs: Any) -> Any:
        """One pass of rows with models `names` over `inputs` (input_ids, cache=, masks),
        appending to the given cache; the last position's logits per row, on the CPU."""
        ...

    def after_forward(self, row: Row, logits: Any) -> None:
        """Decode `row`'s next tokens from its last-position `logits`; sets its next feed."""
        ...

    def finish_row(self, row: Row) -> None:
        """`row` is over: keep its KV entry for reuse where it has one, and count its tokens."""
        ...

    def new_cache(self) -> Any:
        """An empty KV cache for this model."""
        ...

    def count_pass(self, rows: int, tokens: int, seconds: float, prefill: bool) -> None:
        """Count one forward pass: a prefill of `tokens` prompt tokens (`prefill`), or a
        decoding pass over `rows` rows; `seconds` spent in the forward pass."""
        ...

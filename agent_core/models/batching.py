"""Continuous batching for `LocalModel`: concurrent replies share each forward pass.

Calls from many threads (episodes of a flow, clients of `automem serve`) are queued; one
scheduler thread decodes them together. Each scheduler step:

1. admits queued requests while fewer than `max_batch` rows are in flight; a new row takes
   its cached prefix (prefix KV reuse) exactly as a call alone would;
2. prefills one chunk (`prefill_chunk` tokens) of one new row in its own forward pass, so a
   long prompt does not stall the others; a row whose prompt is prefilled joins the batch;
3. runs one forward pass over every decoding row, each feeding its sampled token and the
   tokens its grammar forces (jump-forward), and hands each row its last-position logits.

Per-row state stays the row's own (`decoding.Row`): its grammar matcher and mask, sampling
settings and `torch.Generator`, budget and reply closing. Rows with different adapters run in
one pass through peft's mixed-adapter batches (`adapter_names=`, "__base__" for the base).
The scheduler drives the model only through the `row_model.RowModel` protocol (start a row,
run a forward pass over rows, decode a row's logits, finish a row): the model owns each row's
KV entry, its decoding and the prefix cache; the scheduler decides which rows share a pass.

The batch's KV cache is one transformers `DynamicCache` of shape [rows, heads, length, dim]:
a row shorter than the batch is padded on the left, and within a step a row that feeds fewer
tokens than another is padded on the left too; a 2-D attention mask hides every pad and
`position_ids` give each row its own positions, so rotary embeddings and attention see each
row as if it ran alone. A row that ends leaves the batch at once; its valid positions are
gathered back into a compact cache for prefix reuse. Columns every row pads are trimmed, and
the cache is re-packed when pads are most of it.

Faults stay with their row: a request whose prompt overflows the context fails before it is
queued; one that times out or is cancelled frees its row at the next step; a row whose
adapter is unloaded or replaced while it decodes fails with a clear error (never a silent
switch of weights); an error in one row's grammar or sampling fails that row only.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from typing import Any

from agent_core.models.base import ModelError
from agent_core.models.decoding import Row
from agent_core.models.prefix_cache import MIN_SHARED, PrefixEntry, common_prefix, copy_prefix
from agent_core.models.row_model import RowModel

#: rows decoded together by default, on CPU and CUDA (`ModelConfig.max_batch`, `automem serve`)
DEFAULT_MAX_BATCH = 8


class _Request:
    """A row plus how its caller waits for it."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self.event = threading.Event()
        self.error: BaseException | None = None
        self.cancelled = False
        self.adapter_tag: Any = None  # identity of the adapter's weights when the row started
        self.fed = 0  # prompt tokens prefilled so far


class Batcher:
    """The scheduler of one model (a `LocalModel`, which creates it with its first batched
    call), driven through the `RowModel` protocol."""

    def __init__(self, owner: RowModel) -> None:
        import torch  # loaded already: the model runs on it

        self._torch = torch
        # weak: the scheduler thread must not keep a discarded model (and its weights) alive
        self._owner = weakref.ref(owner)
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._joining: list[_Request] = []
        self._active: list[_Request] = []
        self._cache: Any = None  # DynamicCache over the active rows
        self._mask: Any = None  # bool [rows, length]: which cache positions hold a row's tokens
        self._thread = threading.Thread(target=self._loop, name="local-model-batcher", daemon=True)
        self._thread.start()

    @property
    def owner(self) -> RowModel:
        owner = self._owner()
        if owner is None:
            raise ModelError("the local model was discarded")
        return owner

    # -- callers ------------------------------------------------------------------------------

    def run(self, row: Row, timeout_s: float | None = None) -> None:
        """Decode `row` in the batch; returns when its reply is over. ModelError if it failed
        or did not finish within `timeout_s` (its row is then freed at the next step)."""
        req = _Request(row)
        with self._cond:
            self._queue.append(req)
            self._cond.notify()
        try:
            finished = req.event.wait(timeout_s)
        except BaseException:
            req.cancelled = True  # interrupted caller: free the row
            raise
        if not finished:
            req.cancelled = True
            raise ModelError(f"local model reply did not finish within {timeout_s} s; its row was freed")
        if req.error is not None:
            raise req.error

    @property
    def in_flight(self) -> int:
        """Rows queued, prefilling or decoding."""
        with self._cond:
            return len(self._queue) + len(self._joining) + len(self._active)

    # -- the scheduler thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._joining or self._active):
                    if self._owner() is None:  # the model is gone: so is the scheduler
                        return
                    self._cond.wait(timeout=5.0)
                owner = self._owner()
                if owner is None:
                    return
                while self._queue and len(self._joining) + len(self._active) < owner.max_batch:
                    self._joining.append(self._queue.popleft())
            try:
                with owner.lock, self._torch.inference_mode():
                    self._step()
            except BaseException as exc:  # a fault of the batch as a whole: fail its rows, go on
                for req in [*self._joining, *self._active]:
                    self._fail(req, ModelError(f"local model batch step failed: {exc!r}"))
                self._joining, self._active = [], []
                self._cache = self._mask = None
            del owner  # hold no reference while idle
            # the model's lock is not fair: a thread waiting for it between steps (an adapter
            # load or unload) could wait out hundreds of steps, so give it its turn now
            time.sleep(0)

    def _step(self) -> None:
        self._drop_stale()
        if self._joining:
            self._prefill(self._joining[0])
        if self._active:
            self._decode()

    def _drop_stale(self) -> None:
        """Free cancelled rows and fail rows whose adapter changed under them."""
        gone = []
        for req in [*self._joining, *self._active]:
            if req.cancelled:
                gone.append(req)
            elif req.row.entry is not None:  # started: its adapter must still be the same
                tag = self.owner.adapter_tag(req.row.name)
                if tag is not req.adapter_tag:
                    self._fail(req, ModelError(
                        f"adapter {req.row.name!r} was unloaded or replaced while this reply was "
                        "being decoded with it; the reply is abandoned rather than finished with "
                        "other weights"))
                    gone.append(req)
        for req in gone:
            self._remove(req, keep_prefix=False)

    def _prefill(self, req: _Request) -> None:
        """One chunk of a new row's prompt, in its own cache; the last chunk yields its first
        token and the row joins the batch (or ends at once)."""
        owner, torch, row = self.owner, self._torch, req.row
        try:
            if row.entry is None:
                req.adapter_tag = owner.adapter_tag(row.name)
                owner.start_row(row)
                self._share_from_batch(row)
                if owner.before_forward(row):
                    self._joining.remove(req)
                    self._complete(req)
                    return
            chunk = row.feed[req.fed: req.fed + owner.prefill_chunk]
            began = time.perf_counter()
            if owner.invariant:
                logits = owner.rows_forward([row], [chunk])[0]
            else:
                logits = owner.forward([row.name], input_ids=torch.tensor([chunk], device=owner.device),
                                       cache=row.entry.cache)[0]
            owner.count_pass(1, len(chunk), time.perf_counter() - began, prefill=True)
            row.passes += 1
            row.entry.tokens.extend(chunk)
            req.fed += len(chunk)
            if req.fed < len(row.feed):
                return
            owner.after_forward(row, logits)
        except Exception as exc:  # noqa: BLE001 (this row's fault only)
            self._fail(req, exc)
            self._joining.remove(req)
            return
        self._joining.remove(req)
        if row.done:
            self._crop_entry(row)
            self._complete(req)
        else:
            self._join(req)

    def _share_from_batch(self, row: Row) -> None:
        """A new row whose prompt shares more with a row decoding in the batch than with its
        cached prefix (episodes started together share their system prompt and worked turns,
        and none is cached yet) starts from a copy of that row's keys for the shared part:
        what episodes started at once have in common is prefilled once, not once each."""
        owner = self.owner
        best, shared = None, row.reused
        for index, req in enumerate(self._active):
            if req.row.name == row.name:
                n = common_prefix(req.row.entry.tokens, row.prompt)
                if n > shared:
                    best, shared = index, n
        shared = min(shared, len(row.prompt) - 1)  # one prompt token is fed for the logits
        if best is None or shared < MIN_SHARED or shared <= row.reused:
            return
        if row.reused:  # a shorter cached prefix: give it back to the store
            owner.keep_prefix(row.name, row.entry)
        source = self._active[best].row.entry.cache
        row.entry = PrefixEntry(row.prompt[:shared],
                                copy_prefix(source, shared) if owner.invariant else self._extract(best, shared))
        row.reused, row.feed = shared, row.prompt[shared:]

    def _decode(self) -> None:
        """One forward pass over every active row."""
        owner = self.owner
        done = [req for req in self._active if self._over(req)]
        for req in done:
            self._remove(req, keep_prefix=True)
        if not self._active:
            return
        rows = [req.row for req in self._active]
        if owner.invariant:  # each row in its own cache: no batch cache, no mask
            began = time.perf_counter()
            logits = owner.rows_forward(rows, [r.feed for r in rows])
            seconds = time.perf_counter() - began
        else:
            logits, seconds = self._padded_decode(rows)
        owner.count_pass(len(rows), 0, seconds, prefill=False)
        for i, req in enumerate(list(self._active)):
            r = req.row
            r.passes += 1
            r.entry.tokens.extend(r.feed)
            try:
                owner.after_forward(r, logits[i])
            except Exception as exc:  # noqa: BLE001 (this row's fault only)
                self._fail(req, exc)
                self._remove(req, keep_prefix=False)
        for req in [q for q in self._active if q.row.done]:
            self._remove(req, keep_prefix=True)
        self._repack_if_sparse()

    def _padded_decode(self, rows: list[Row]) -> tuple[Any, float]:
        """One pass over `rows` in the padded batch cache (not invariant); their logits and
        the seconds in the forward pass."""
        owner, torch = self.owner, self._torch
        width = max(len(r.feed) for r in rows)
        length = self._mask.shape[1]
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        step_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n, start = len(r.feed), len(r.entry.tokens)
            ids[i, width - n:] = torch.tensor(r.feed)
            step_mask[i, width - n:] = True
            positions[i, width - n:] = torch.arange(start, start + n)
            positions[i, : width - n] = start  # pads: any position, they are masked
        mask = torch.cat([self._mask, step_mask], dim=1)
        began = time.perf_counter()
        logits = owner.forward(
            [r.name for r in rows], input_ids=ids.to(owner.device),
            attention_mask=mask.to(owner.device, torch.long), position_ids=positions.to(owner.device),
            cache=self._cache,
        )
        seconds = time.perf_counter() - began
        self._mask = mask
        assert self._cache.get_seq_length() == length + width
        return logits, seconds

    def _over(self, req: _Request) -> bool:
        try:
            return self.owner.before_forward(req.row)
        except Exception as exc:  # noqa: BLE001
            self._fail(req, exc)
            req.cancelled = True
            return True

    # -- the batch's KV cache -----------------------------------------------------------------

    def _layers(self, cache: Any) -> list[Any]:
        return list(cache.layers)

    def _join(self, req: _Request) -> None:
        """Move a prefilled row's own cache into the batch (left-padded to a common length)."""
        torch = self._torch
        row = req.row
        if self.owner.invariant:  # it keeps its own cache
            self._active.append(req)
            return
        own = row.entry.cache
        n = own.get_seq_length()
        row_mask = torch.ones((1, n), dtype=torch.bool)
        if not self._active:
            self._cache, self._mask = own, row_mask
        else:
            length = self._mask.shape[1]
            if n < length:
                self._pad_cache(own, length - n)
                row_mask = torch.cat([torch.zeros((1, length - n), dtype=torch.bool), row_mask], dim=1)
            elif n > length:
                self._pad_cache(self._cache, n - length)
                self._mask = torch.cat(
                    [torch.zeros((self._mask.shape[0], n - length), dtype=torch.bool), self._mask], dim=1)
            for mine, theirs in zip(self._layers(self._cache), self._layers(own), strict=True):
                mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
                mine.values = torch.cat([mine.values, theirs.values], dim=0)
            self._mask = torch.cat([self._mask, row_mask], dim=0)
        row.entry.cache = None  # its keys live in the batch until it leaves
        self._active.append(req)

    def _pad_cache(self, cache: Any, n: int) -> None:
        torch = self._torch
        for layer in self._layers(cache):
            k, v = layer.keys, layer.values
            layer.keys = torch.cat([k.new_zeros((*k.shape[:2], n, k.shape[3])), k], dim=2)
            layer.values = torch.cat([v.new_zeros((*v.shape[:2], n, v.shape[3])), v], dim=2)

    def _extract(self, index: int, count: int) -> Any:
        """Row `index`'s first `count` valid positions as a compact cache of its own."""
        owner = self.owner
        where = self._mask[index].nonzero().squeeze(1)[:count].to(owner.device)
        cache = owner.new_cache()
        for mine, theirs in zip(self._layers(cache), self._layers(self._cache), strict=True):
            k = theirs.keys[index: index + 1].index_select(2, where)
            v = theirs.values[index: index + 1].index_select(2, where)
            mine.lazy_initialization(k, v)
            mine.keys, mine.values = k, v
        return cache

    def _remove(self, req: _Request, keep_prefix: bool) -> None:
        """Take a row out of the queue, the new rows or the batch; finish it if asked."""
        if req in self._joining:
            self._joining.remove(req)
            if keep_prefix:
                self._complete(req)
            return
        if req not in self._active:
            return
        index = self._active.index(req)
        row = req.row
        if self.owner.invariant:  # its own cache, less any tokens taken back
            self._crop_entry(row)
            self._active.pop(index)
            if keep_prefix:
                self._complete(req)
            return
        if keep_prefix and self.owner.prefix_reuse:
            row.entry.cache = self._extract(index, len(row.entry.tokens))
        self._active.pop(index)
        if not self._active:
            self._cache = self._mask = None
        else:
            torch = self._torch
            keep = torch.tensor([i for i in range(self._mask.shape[0]) if i != index])
            on_device = keep.to(self.owner.device)
            for layer in self._layers(self._cache):
                layer.keys = layer.keys.index_select(0, on_device)
                layer.values = layer.values.index_select(0, on_device)
            self._mask = self._mask.index_select(0, keep)
            self._trim()
        if keep_prefix:
            self._complete(req)

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        used = self._mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else self._mask.shape[1]
        if first:
            self._mask = self._mask[:, first:]
            for layer in self._layers(self._cache):
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]

    def _repack_if_sparse(self, threshold: float = 0.5) -> None:
        """Re-pack the batch (each row's positions contiguous, left-padded) when pads, left by
        rows that fed fewer tokens than others in a step, are over `threshold` of it."""
        if self._mask is None or self._mask.shape[1] < 64:
            return
        if float(self._mask.float().mean()) >= 1.0 - threshold:
            return
        torch = self._torch
        counts = self._mask.sum(dim=1)
        length = int(counts.max())
        order = []
        for i in range(self._mask.shape[0]):
            valid = self._mask[i].nonzero().squeeze(1)
            pad = length - len(valid)
            order.append(torch.cat([valid.new_zeros(pad), valid]))
        index = torch.stack(order).to(self.owner.device)  # [rows, length]
        new_mask = torch.zeros((self._mask.shape[0], length), dtype=torch.bool)
        for i, c in enumerate(counts.tolist()):
            new_mask[i, length - c:] = True
        for layer in self._layers(self._cache):
            k, v = layer.keys, layer.values
            gather = index[:, None, :, None].expand(k.shape[0], k.shape[1], length, k.shape[3])
            layer.keys = torch.gather(k, 2, gather)
            layer.values = torch.gather(v, 2, gather)
        self._mask = new_mask

    # -- ends ---------------------------------------------------------------------------------

    def _crop_entry(self, row: Row) -> None:
        cache = row.entry.cache
        if cache is not None and cache.get_seq_length() > len(row.entry.tokens):
            cache.crop(len(row.entry.tokens) - cache.get_seq_length())

    def _complete(self, req: _Request) -> None:
        if req.cancelled:
            return
        self.owner.finish_row(req.row)
        req.event.set()

    def _fail(self, req: _Request, exc: BaseException) -> None:
        req.error = exc if isinstance(exc, ModelError) else ModelError(f"local model reply failed: {exc!r}")
        req.row.done = True
        req.event.set()

"""Prefix KV reuse for the local model: KV caches kept per model name, and the cache layers.

LOG and PLAN send the same long conversation again every step with a little appended. Each
handle therefore keeps the KV cache of the tokens it processed last (prompt and reply); a
new prompt that starts with those tokens is only prefilled from where it departs.

torch and transformers are imported when a cache is made, never at module import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: the fewest shared tokens worth copying from another conversation's keys
MIN_SHARED = 16
#: a cached conversation is handed over (not copied) when a prompt continues it up to this
#: many of its last tokens
_MOVE_SLACK = 64


@dataclass
class PrefixEntry:
    """A KV cache and exactly the tokens whose keys/values it holds."""

    tokens: list[int]
    cache: Any  # transformers DynamicCache
    last_used: float = field(default_factory=time.monotonic)


class PrefixCache:
    """The KV entries kept for prefix reuse, per model name (the base or an adapter)."""

    def __init__(self) -> None:
        self._entries: dict[str, list[PrefixEntry]] = {}

    def start(self, name: str, prompt: list[int], config: Any, reuse: bool) -> tuple[PrefixEntry, int]:
        """The KV entry a reply to `prompt` starts from, and how many of its tokens it holds:
        the cached entry with the longest common prefix (cropped to it) when `reuse`, or an
        empty one for the model of `config`. At least one prompt token is left to feed."""
        entry, reused = self.take(name, prompt) if reuse else (None, 0)
        # at least one prompt token must be fed to get the next-token logits
        reused = min(reused, len(prompt) - 1)
        if entry is None or reused == 0:
            entry = PrefixEntry([], new_cache(config))
            reused = 0
        elif len(entry.tokens) > reused:
            entry.cache.crop(reused - len(entry.tokens))  # negative: tokens to drop
            del entry.tokens[reused:]
        return entry, reused

    def take(self, name: str, prompt: list[int]) -> tuple[PrefixEntry | None, int]:
        """The cached entry sharing the longest prefix with `prompt`: removed from the store
        when `prompt` continues all of it but its last `_MOVE_SLACK` tokens (the same
        conversation; a reply re-tokenised in the template differs at its end), else a copy of
        just the shared part (another episode's conversation sharing the system prompt:
        cropping it would destroy the cache of the episode that owns it)."""
        entries = self._entries.get(name, [])
        best, best_len = None, 0
        for entry in entries:
            n = common_prefix(entry.tokens, prompt)
            if n > best_len:
                best, best_len = entry, n
        if best is None:
            return None, 0
        if len(best.tokens) - best_len <= _MOVE_SLACK:
            entries.remove(best)
            return best, best_len
        if best_len < MIN_SHARED:
            return None, 0
        return PrefixEntry(best.tokens[:best_len], copy_prefix(best.cache, best_len)), best_len

    def keep(self, name: str, entry: PrefixEntry, slots: int) -> None:
        """Keep `entry` under `name`; past `slots` entries the least recently used is dropped."""
        entries = self._entries.setdefault(name, [])
        entries.append(entry)
        if len(entries) > max(1, slots):
            entries.remove(min(entries, key=lambda e: e.last_used))

    def forget(self, name: str) -> None:
        """Drop the entries of `name` (its weights changed or are gone)."""
        self._entries.pop(name, None)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def new_cache(config: Any) -> Any:
    """An empty KV cache for `config` whose layers append into spare room (`_growing_layer`)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cls = _growing_layer()
    cache.layers = [cls() for _ in cache.layers]
    return cache


def copy_prefix(cache: Any, n: int) -> Any:
    """A new cache holding copies of the first `n` positions of `cache` (batch of one)."""
    copy = new_cache_like(cache)
    for mine, theirs in zip(copy.layers, cache.layers, strict=True):
        k = theirs.keys[:, :, :n].clone()
        v = theirs.values[:, :, :n].clone()
        mine.lazy_initialization(k, v)
        mine.keys, mine.values = k, v
    return copy


def new_cache_like(cache: Any) -> Any:
    """An empty growing cache with as many layers as `cache`."""
    from transformers import DynamicCache

    copy = DynamicCache()
    cls = _growing_layer()
    copy.layers = [cls() for _ in cache.layers]
    return copy


_GROWING: Any = None


def _growing_layer() -> Any:
    """transformers' `DynamicLayer`, appending new keys/values into spare capacity instead of
    concatenating (a copy of the whole cache per layer and decoding step: with several rows of
    ~2,000 tokens that copy rivals the forward pass). Tensors assigned from outside (a crop,
    a batch join or re-pack) are adopted at the next update."""
    global _GROWING
    if _GROWING is not None:
        return _GROWING
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        _kbuf: Any = None
        _vbuf: Any = None
        _kview: Any = None
        _n = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, reserve: int = 0,
                   **kwargs: Any) -> tuple[Any, Any]:
            """Append; `reserve`: room for at least that many positions (`_kbuf`, `_vbuf`;
            never-written room is zeros)."""
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            if self._kbuf is None or self.keys is not self._kview:  # assigned from outside: adopt
                self._kbuf, self._vbuf = self.keys, self.values
                self._n = self.keys.shape[-2] if self.keys.numel() else 0
            n, t = self._n, key_states.shape[-2]
            if (self._kbuf.numel() == 0 or max(n + t, reserve) > self._kbuf.shape[-2]
                    or self._kbuf.shape[:2] != key_states.shape[:2]):
                room = max(reserve, n + t + max(128, (n + t) // 4))
                shape = (*key_states.shape[:2], room, key_states.shape[-1])
                keys, values = key_states.new_zeros(shape), value_states.new_zeros(shape)
                if n:
                    keys[:, :, :n] = self._kbuf[:, :, :n]
                    values[:, :, :n] = self._vbuf[:, :, :n]
                self._kbuf, self._vbuf = keys, values
            self._kbuf[:, :, n:n + t] = key_states
            self._vbuf[:, :, n:n + t] = value_states
            self._n = n + t
            self.keys = self._kview = self._kbuf[:, :, :n + t]
            self.values = self._vbuf[:, :, :n + t]
            return self.keys, self.values

    _GROWING = GrowingLayer
    return GrowingLayer

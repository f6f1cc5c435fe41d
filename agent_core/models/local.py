"""A `ChatModel` over a local transformers checkpoint (CPU or CUDA), with LoRA handles and prefix KV reuse.

One `LocalModel` holds one copy of the weights. LoRA adapters (peft format) are loaded next
to them under names; `handle(name)` gives a `ChatModel` that answers with that adapter, or
with the bare base model when `name` is the base `model_id`. So the action model and a LoRA
memory specialist share one set of weights.

The model composes its parts: the prefix cache (`prefix_cache.py`: LOG and PLAN send the same
long conversation again every step, so each handle keeps the KV cache of the tokens it
processed last and a new prompt is only prefilled from where it departs), the decoding of a
reply (`decoding.py`: sampling, grammar-constrained decoding with jump-forward and reply
closing), the adapters (`adapters.py`) and the batch scheduler (`batching.py`), which drives
it through the `row_model.RowModel` protocol.

torch, transformers and peft are imported when a model is built, never at module import.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_core.grammar import Grammar
from agent_core.models.adapters import AdapterSet
from agent_core.models.base import ChatModel, ModelError
from agent_core.models.batching import DEFAULT_MAX_BATCH, Batcher
from agent_core.models.decoding import Decoder, Row
from agent_core.models.devices import INFERENCE_DTYPE, resolve_device
from agent_core.models.prefix_cache import PrefixCache, PrefixEntry, new_cache
from agent_core.models.weights import LOCAL_MODEL_NAME, local_model_path, set_runtime_env
from agent_core.records import Completion, Message, SamplingParams

#: the base model's name in traces, cache keys and on the server
DEFAULT_MODEL_ID = LOCAL_MODEL_NAME


@dataclass
class Generation:
    """A completion plus what only the local backend knows about it."""

    completion: Completion
    #: "stop" (end-of-turn token) or "length" (max_tokens or the context window)
    finish_reason: str
    #: prompt tokens whose KV came from the prefix cache instead of being recomputed
    reused_tokens: int
    #: model forward passes (one per generated token, fewer with jump-forward decoding)
    forward_passes: int = 0
    #: the raw logit of each sampled token (forced tokens have none): batched vs alone checks
    token_logits: list[float] = field(default_factory=list)


class LocalHandle:
    """A `ChatModel` view of one adapter (or the base) of a `LocalModel`; holds no weights."""

    def __init__(self, owner: LocalModel, name: str) -> None:
        self._owner = owner
        self.model_id = name

    def complete(self, messages: list[Message], params: SamplingParams,
                 constraint: Grammar | None = None) -> Completion:
        return self._owner.generate(messages, params, model=self.model_id, constraint=constraint).completion

    def __repr__(self) -> str:
        return f"LocalHandle({self.model_id!r})"


class LocalModel:
    """transformers causal LM implementing `ChatModel` (as its base handle).

    Args:
        path: checkpoint folder; default: the prepared SmolLM2 (`weights.local_model_path()`).
        adapters: LoRA adapters to load at start, name -> peft adapter folder.
        dtype: "bfloat16" (prefills twice as fast on an AVX-512 BF16 CPU, native on GPU) or
            "float32" (bit-stable across prefill splits and batch compositions).
        device: "auto" (CUDA when torch sees a GPU, else CPU), "cpu", "cuda" or "cuda:N".
        model_id: the base model's name in traces and on the server.
        prefix_reuse: reuse the KV cache of a previous call's common token prefix.
        cache_slots: prefix caches kept per handle (several episodes may share a handle);
            None: two per row of `max_batch` (at least 4), so concurrent episodes do not evict
            each other's conversations.
        jump_forward: under a grammar, feed the tokens the grammar forces in one forward pass.
        max_batch: replies decoded together (continuous batching, `batching.Batcher`):
            concurrent calls share each forward pass. 1: one reply at a time under a lock
            (the baseline the batching benchmark compares against).
        prefill_chunk: with batching, prompt tokens prefilled per scheduler step, so a long
            new prompt does not stall the rows already decoding.
        invariant: batch- and cache-invariant decoding (`invariant.py`): each row keeps its
            own KV cache and attends in fixed shapes, so a reply is the same bit for bit alone,
            in any batch and after any prefix-cache history (bf16 on CPU; LoRA weights are
            kept in the model's dtype). False: the padded batch cache and transformers' fused
            attention (faster in wide batches; replies vary with batch-mates in bf16).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        adapters: dict[str, Path] | dict[str, str] | None = None,
        dtype: str = INFERENCE_DTYPE,
        device: str = "auto",
        model_id: str = DEFAULT_MODEL_ID,
        prefix_reuse: bool = True,
        cache_slots: int | None = None,
        jump_forward: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
        prefill_chunk: int = 256,
        invariant: bool = True,
    ) -> None:
        set_runtime_env()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path) if path is not None else local_model_path()
        self.model_id = model_id
        self.device = resolve_device(device)
        self.prefix_reuse = prefix_reuse
        self.jump_forward = jump_forward
        self._cache_slots = cache_slots
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(f"max_batch and prefill_chunk must be >= 1; got {max_batch} and {prefill_chunk}")
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.invariant = invariant
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        #: a reply is the same bit for bit in any batch and after any cache history: the
        #: invariant path in bf16 (in fp32 a linear layer rounds a row differently in 1 and 2+
        #: rows, `invariant.py`); what `automem serve` tells clients
        self.batch_invariant = invariant and torch_dtype == torch.bfloat16
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self._model = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=torch_dtype, local_files_only=True
            ).to(self.device).eval()
        except OSError as exc:
            raise ModelError(f"cannot load local model from {self.path}: {exc}") from exc
        if invariant:
            from agent_core.models.invariant import piecewise_linears, register

            self._model.set_attn_implementation(register())
            piecewise_linears(self._model)
        self._torch = torch
        self._prefixes = PrefixCache()
        #: generation mutates shared state (active adapter, KV caches): one forward pass (or,
        #: with max_batch 1, one reply) at a time; adapters change between them
        self.lock = threading.RLock()
        self._tokenizer_lock = threading.Lock()  # the fast tokenizer is not re-entrant
        self._lora = AdapterSet(self._model, model_id, self.lock, torch_dtype, invariant, self._prefixes.forget)
        self._batcher: Batcher | None = None  # started by the first batched call
        self.max_context = int(getattr(self._model.config, "max_position_embeddings", 2048))
        self._decoder = Decoder(self.tokenizer, self._model.generation_config.eos_token_id,
                                int(self._model.get_output_embeddings().weight.shape[0]))
        #: totals over this model's life (benchmarks read them)
        self.forward_passes = 0
        self.generated_tokens = 0
        #: rows summed over batched decoding passes (rows per pass = this / batched_passes)
        self.batched_rows = 0
        self.batched_passes = 0
        #: prompt tokens computed (not reused from a cache), and seconds spent in forward passes
        #: that prefill prompts and that decode replies: where a model's time goes
        self.prefill_tokens = 0
        self.prefill_s = 0.0
        self.decode_s = 0.0
        for name, adapter_path in (adapters or {}).items():
            self.load_adapter(name, adapter_path)

    @property
    def close_reserve(self) -> int:
        """Tokens kept back to close a constrained reply: the longest closing and end-of-turn."""
        return self._decoder.close_reserve

    # -- adapters (`adapters.AdapterSet`) ---------------------------------------------------

    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapters, name -> folder."""
        return self._lora.served

    @property
    def names(self) -> list[str]:
        """Every model name this instance answers to: the base first, then the adapters."""
        return self._lora.names

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a peft LoRA adapter from `path` under `name`; `ModelError` if the name is taken."""
        self._lora.load(name, path)

    def stage_adapter(self, path: str | Path) -> str:
        """Load a peft adapter under a fresh internal name that is not served (not in
        `names`), for `swap_adapter`; `ModelError` when it cannot be loaded (nothing is left
        behind: the adapters served are untouched)."""
        return self._lora.stage(path)

    def swap_adapter(self, name: str, staged: str) -> None:
        """Serve the staged adapter's weights as `name`, replacing the adapter loaded under
        `name` (if any), in one step under the lock (`AdapterSet.swap`); the staged name is
        gone after. On failure the old adapter is restored and `ModelError` raised."""
        self._lora.swap(name, staged)

    def replace_adapter(self, name: str, path: str | Path) -> None:
        """Reload adapter `name` from `path` in place (`stage_adapter`, then `swap_adapter`):
        the old adapter serves until the new one is loaded, and a load that fails raises
        `ModelError` and keeps it; loads it as new when `name` is not loaded."""
        self.swap_adapter(name, self.stage_adapter(path))

    def unload_adapter(self, name: str) -> None:
        """Drop an adapter and its KV caches; `ModelError` if it is not loaded."""
        self._lora.unload(name)

    def handle(self, name: str | None = None) -> ChatModel:
        """A `ChatModel` over these weights using adapter `name` (the base when None/model_id)."""
        name = name or self.model_id
        with self.lock:
            self._lora.check(name)
        return LocalHandle(self, name)

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix (frees their memory)."""
        with self.lock:
            self._prefixes.clear()

    # -- generation -----------------------------------------------------------------------

    def complete(self, messages: list[Message], params: SamplingParams,
                 constraint: Grammar | None = None) -> Completion:
        """`ChatModel.complete` with the base model."""
        return self.generate(messages, params, constraint=constraint).completion

    def encode(self, messages: list[Message]) -> list[int]:
        """Prompt token ids: the chat template with the assistant turn opened."""
        chat = [{"role": m.role, "content": m.content} for m in messages]
        text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        # the template already writes the special tokens
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, messages: list[Message], params: SamplingParams, model: str | None = None,
        constraint: Grammar | None = None, timeout_s: float | None = None,
    ) -> Generation:
        """Complete `messages` with adapter `model` (None: base); the details of `complete`.

        With a `constraint`, every token is drawn from those the grammar allows next
        (llguidance fills the mask); where the grammar allows exactly one continuation (the
        rest of a tag, an action name's remaining tokens), those tokens are fed in the same
        forward pass as the sampled one (jump-forward), not generated one by one.

        With `max_batch` > 1 the reply is decoded in the shared batch, next to the other
        calls in flight; `timeout_s` then bounds the wait (ModelError, and the row is freed)."""
        name = model or self.model_id
        started = time.perf_counter()
        with self._tokenizer_lock:
            prompt = self.encode(messages)
            matcher = self._decoder.matcher(constraint) if constraint is not None else None
        budget = min(params.max_tokens, self.max_context - len(prompt))
        if budget < 1:
            raise ModelError(
                f"prompt of {len(prompt)} tokens leaves no room in the "
                f"{self.max_context}-token context of {self.model_id}"
            )
        row = Row(prompt=prompt, params=params, name=name, matcher=matcher, budget=budget)
        row.seed(self._torch)
        if self.max_batch <= 1 and not self.invariant:
            self._generate_alone(row)
        else:
            if self._batcher is None:
                with self.lock:
                    if self._batcher is None:
                        self._batcher = Batcher(self)
            self._batcher.run(row, timeout_s)
        out_ids = row.out
        text_ids = out_ids[:-1] if out_ids and out_ids[-1] in self._decoder.stop_ids else out_ids
        with self._tokenizer_lock:
            text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
            written = None if row.written is None else self.tokenizer.decode(row.written, skip_special_tokens=True)
        completion = Completion(
            text=text,
            prompt_tokens=len(prompt),
            completion_tokens=len(out_ids),  # counts the end-of-turn token, as vLLM does
            latency_s=time.perf_counter() - started,
            model=name,
            finish_reason=row.finish,
            closed_at_budget=written is not None,
            written=written,
        )
        return Generation(completion, row.finish, row.reused, row.passes, row.token_logits)

    def _generate_alone(self, row: Row) -> None:
        """One reply under the lock, batch of one (max_batch 1: the baseline)."""
        torch = self._torch
        with self.lock:
            self.start_row(row)
            with self._lora.select(row.name), torch.inference_mode():
                while not self.before_forward(row):
                    began = time.perf_counter()
                    logits = self._model(
                        input_ids=torch.tensor([row.feed], device=self.device),
                        cache=row.entry.cache,
                        use_cache=True,
                        logits_to_keep=1,  # the vocab projection of every prompt token is waste
                    ).logits[0, -1].cpu()  # masking and sampling on the CPU (no-op there)
                    if row.passes == 0:
                        self.prefill_tokens += len(row.feed)
                        self.prefill_s += time.perf_counter() - began
                    else:
                        self.decode_s += time.perf_counter() - began
                    row.passes += 1
                    self.forward_passes += 1
                    row.entry.tokens.extend(row.feed)
                    self.after_forward(row, logits)
            entry = row.entry
            if entry.cache.get_seq_length() > len(entry.tokens):  # tokens taken back
                entry.cache.crop(len(entry.tokens) - entry.cache.get_seq_length())
            self.finish_row(row)

    # -- rows: the `row_model.RowModel` protocol the scheduler drives ------------------------

    def adapter_tag(self, name: str) -> Any:
        """The identity of model `name`'s weights now (None: the base; False: not loaded)."""
        return self._lora.tag(name)

    def start_row(self, row: Row) -> None:
        """Give `row` its KV cache: the cached entry with the longest common prefix (cropped
        to it), or an empty one; what is left of the prompt is its first feed. `ModelError`
        if its model name is not loaded."""
        self._lora.check(row.name)
        row.entry, row.reused = self._prefixes.start(row.name, row.prompt, self._model.config, self.prefix_reuse)
        row.feed = row.prompt[row.reused:]

    def keep_prefix(self, name: str, entry: PrefixEntry) -> None:
        """Keep `entry` for prefix reuse by model `name` (`cache_slots` entries per name)."""
        self._prefixes.keep(name, entry, self._cache_slots or max(4, 2 * self.max_batch))

    def before_forward(self, row: Row) -> bool:
        """Whether `row` is over before its next forward pass (`Decoder.before_forward`)."""
        return self._decoder.before_forward(row)

    def after_forward(self, row: Row, logits: Any) -> None:
        """Decode `row`'s next tokens from `logits` (`Decoder.after_forward`, jump-forward
        as this model's `jump_forward` says)."""
        self._decoder.after_forward(row, logits, self.jump_forward)

    def finish_row(self, row: Row) -> None:
        """Keep `row`'s KV entry for prefix reuse (its cache holds exactly its tokens; a row
        without one keeps nothing) and count its tokens."""
        if self.prefix_reuse and row.entry is not None and row.entry.cache is not None:
            row.entry.last_used = time.monotonic()
            self.keep_prefix(row.name, row.entry)
        self.generated_tokens += len(row.out)

    def rows_forward(self, rows: list[Row], feeds: list[list[int]]) -> Any:
        """One invariant forward pass (`invariant.py`) feeding each row its tokens (left-padded
        to the widest) into its own KV cache; the last position's logits per row, on the CPU."""
        from agent_core.models.invariant import rows_pass

        torch = self._torch
        width = max(len(f) for f in feeds)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, feed) in enumerate(zip(rows, feeds, strict=True)):
            n, start = len(feed), row.entry.cache.get_seq_length()
            ids[i, width - n:] = torch.tensor(feed)
            positions[i, width - n:] = torch.arange(start, start + n)
            positions[i, :width - n] = start  # pads: never attended, never cached
        model, kwargs = self._lora.batch_module([r.name for r in rows])
        with rows_pass([(r.entry.cache, len(f)) for r, f in zip(rows, feeds, strict=True)]):
            return model(input_ids=ids.to(self.device), position_ids=positions.to(self.device), use_cache=False,
                         logits_to_keep=1, **kwargs).logits[:, -1].cpu()

    def forward(self, names: list[str], **inputs: Any) -> Any:
        """One pass of rows with models `names` (peft's mixed-adapter batch where adapters are
        loaded) over `inputs`, appending to their `cache=`; last-position logits, on the CPU."""
        model, kwargs = self._lora.batch_module(names)
        return model(**inputs, use_cache=True, logits_to_keep=1, **kwargs).logits[:, -1].cpu()

    def new_cache(self) -> Any:
        """An empty KV cache for this model (`prefix_cache.new_cache`)."""
        return new_cache(self._model.config)

    def count_pass(self, rows: int, tokens: int, seconds: float, prefill: bool) -> None:
        """Count one batched forward pass: a prefill of `tokens` prompt tokens, or a decoding
        pass over `rows` rows; `seconds` in the forward pass."""
        self.forward_passes += 1
        if prefill:
            self.prefill_tokens += tokens
            self.prefill_s += seconds
        else:
            self.batched_passes += 1
            self.batched_rows += rows
            self.decode_s += seconds

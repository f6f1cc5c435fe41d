"""A `ChatModel` over a local transformers checkpoint (CPU or CUDA), with LoRA handles and prefix KV reuse.

One `LocalModel` holds one copy of the weights. LoRA adapters (peft format) are loaded next
to them under names; `handle(name)` gives a `ChatModel` that answers with that adapter, or
with the bare base model when `name` is the base `model_id`. So the action model and a LoRA
memory specialist share one set of weights.

LOG and PLAN send the same long conversation again every step with a little appended. Each
handle therefore keeps the KV cache of the tokens it processed last (prompt and reply); a
new prompt that starts with those tokens is only prefilled from where it departs.

torch, transformers and peft are imported when a model is built, never at module import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_core.grammar import Grammar
from agent_core.models.base import ChatModel, ModelError
from agent_core.models.batching import (
    DEFAULT_MAX_BATCH, MIN_SHARED, PrefixEntry, common_prefix, copy_prefix, new_cache,
)
from agent_core.models.devices import INFERENCE_DTYPE, resolve_device
from agent_core.models.weights import LOCAL_MODEL_NAME, local_model_path, set_runtime_env
from agent_core.records import Completion, Message, SamplingParams

#: the base model's name in traces, cache keys and on the server
DEFAULT_MODEL_ID = LOCAL_MODEL_NAME
#: tokens that end an assistant turn in ChatML besides the configured EOS
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
#: what closes a constrained reply that is about to run out of tokens, tried in this order
#: (each only where the grammar allows it): end the open command and the reply there (a
#: look-up group ends a reply), end it and the routine, or end the routine
CLOSINGS = ("<|END|>", "<|END|><|DONE|>", "<|DONE|>")


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


@dataclass(eq=False)
class _Row:
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
    #: the tokens the model wrote, when the reply was closed at its budget (`_before_forward`,
    #: `_close_by_rollback`); None: the reply ended as the model wrote it
    written: list[int] | None = None
    generator: Any = None

    def seed(self, torch: Any) -> None:
        """Its own generator, seeded by the request (or from the OS): rows sample independently."""
        self.generator = torch.Generator()
        if self.params.seed is not None:
            self.generator.manual_seed(self.params.seed)
        else:
            self.generator.seed()


#: a cached conversation is handed over (not copied) when a prompt continues it up to this
#: many of its last tokens
_MOVE_SLACK = 64


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
        self._dtype = torch_dtype
        self._torch = torch
        self._peft: Any = None  # PeftModel, created with the first adapter
        self._adapters: dict[str, Path] = {}
        self._prefixes: dict[str, list[PrefixEntry]] = {}
        # generation mutates shared state (active adapter, KV caches): one forward pass (or,
        # with max_batch 1, one reply) at a time; adapters change between them
        self._lock = threading.RLock()
        self._tokenizer_lock = threading.Lock()  # the fast tokenizer is not re-entrant
        self._batcher: Any = None  # batching.Batcher, started by the first batched call
        vocab = self.tokenizer.get_vocab()
        eos = self._model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._stop_ids = {i for i in eos_ids if i is not None}
        self._stop_ids |= {vocab[t] for t in _STOP_TOKENS if t in vocab}
        if self.tokenizer.eos_token_id is not None:
            self._stop_ids.add(self.tokenizer.eos_token_id)
        self.max_context = int(getattr(self._model.config, "max_position_embeddings", 2048))
        self._vocab_size = int(self._model.get_output_embeddings().weight.shape[0])
        self._eos_id = vocab.get("<|im_end|>", self.tokenizer.eos_token_id)
        self._llg_tokenizer: Any = None  # llguidance's view of the tokenizer, built on first use
        self._closings = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in CLOSINGS]
        self._bar_id = vocab.get("|", -1)  # the argument separator as one token
        #: tokens kept back to close a constrained reply: the longest closing and end-of-turn
        self.close_reserve = max(len(c) for c in self._closings) + 1
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

    # -- adapters -------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapters, name -> folder."""
        with self._lock:
            return {n: p for n, p in self._adapters.items() if n not in self._staged}

    @property
    def names(self) -> list[str]:
        """Every model name this instance answers to: the base first, then the adapters."""
        with self._lock:
            return [self.model_id, *(n for n in self._adapters if n not in self._staged)]

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a peft LoRA adapter from `path` under `name`; `ModelError` if the name is taken."""
        from peft import PeftModel

        path = Path(path)
        with self._lock:
            if name == self.model_id or name in self._adapters:
                raise ModelError(f"adapter name {name!r} is already in use")
            if not (path / "adapter_config.json").is_file():
                raise ModelError(f"no peft adapter at {path} (adapter_config.json missing)")
            try:
                if self._peft is None:
                    # wraps in place: self._model keeps its identity, now with LoRA layers
                    self._peft = PeftModel.from_pretrained(
                        self._model, path, adapter_name=name, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ModelError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
            self._peft.eval()
            self._adapters[name] = path
            self._prefixes.pop(name, None)
            self._adapter_dtype()

    #: adapters loaded by `stage_adapter`, not served until `swap_adapter` (never in `names`)
    _staged: frozenset[str] = frozenset()

    def stage_adapter(self, path: str | Path) -> str:
        """Load a peft adapter under a fresh internal name that is not served (not in
        `names`), for `swap_adapter`; `ModelError` when it cannot be loaded (nothing is left
        behind: the adapters served are untouched)."""
        from uuid import uuid4

        staged = f"automem-staged-{uuid4().hex[:12]}"  # peft forbids "." in adapter names
        with self._lock:
            try:
                self.load_adapter(staged, path)
            except Exception as exc:  # a half-made adapter is dropped
                if self._peft is not None and staged in self._peft.peft_config:
                    self._peft.delete_adapter(staged)
                self._adapters.pop(staged, None)
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"cannot load adapter from {path}: {type(exc).__name__}: {exc}") from exc
            self._staged = self._staged | {staged}
        return staged

    def swap_adapter(self, name: str, staged: str) -> None:
        """Serve the staged adapter's weights as `name`, replacing the adapter loaded under
        `name` (if any), in one step under the lock: no call finds `name` missing, and each
        forward pass runs with the old or the new weights. The staged name is gone after. On
        failure the old adapter is restored and `ModelError` raised."""
        import copy

        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        with self._lock:
            if staged not in self._staged:
                raise ModelError(f"no staged adapter {staged!r}")
            try:
                old = None
                if name in self._adapters:  # kept until the new one is in, to restore it on failure
                    old = (self._peft.peft_config[name], get_peft_model_state_dict(self._peft, adapter_name=name),
                           self._adapters[name])
                    self._peft.delete_adapter(name)
                    del self._adapters[name]
                try:  # peft has no rename: the staged configuration and weights under `name`
                    self._peft.add_adapter(name, copy.deepcopy(self._peft.peft_config[staged]))
                    set_peft_model_state_dict(self._peft, get_peft_model_state_dict(self._peft, adapter_name=staged),
                                              adapter_name=name)
                    self._adapters[name] = self._adapters[staged]
                except Exception as exc:
                    if name in self._peft.peft_config:
                        self._peft.delete_adapter(name)
                    if old is not None:
                        self._peft.add_adapter(name, old[0])
                        set_peft_model_state_dict(self._peft, old[1], adapter_name=name)
                        self._adapters[name] = old[2]
                    raise ModelError(f"cannot swap in adapter {name!r}: {type(exc).__name__}: {exc}") from exc
                finally:
                    self._prefixes.pop(name, None)  # KV caches made with the old weights
                    self._peft.eval()
                    self._adapter_dtype()
            finally:
                self._peft.delete_adapter(staged)
                self._adapters.pop(staged, None)
                self._prefixes.pop(staged, None)
                self._staged = self._staged - {staged}

    def _adapter_dtype(self) -> None:
        """Invariant decoding: LoRA weights in the model's dtype (peft upcasts them to fp32,
        whose matmuls on a CPU change with the number of rows; bf16's do not), computed in
        pieces of rows like the base layers."""
        if not self.invariant or self._peft is None:
            return
        from agent_core.models.invariant import piecewise_linears

        for pname, param in self._peft.named_parameters():
            if "lora_" in pname and param.dtype != self._dtype:
                param.data = param.data.to(self._dtype)
        piecewise_linears(self._peft)

    def replace_adapter(self, name: str, path: str | Path) -> None:
        """Reload adapter `name` from `path` in place (`stage_adapter`, then `swap_adapter`):
        the old adapter serves until the new one is loaded, and a load that fails raises
        `ModelError` and keeps it; loads it as new when `name` is not loaded."""
        self.swap_adapter(name, self.stage_adapter(path))

    def unload_adapter(self, name: str) -> None:
        """Drop an adapter and its KV caches; `ModelError` if it is not loaded."""
        with self._lock:
            if name not in self._adapters:
                raise ModelError(f"adapter {name!r} is not loaded")
            self._peft.delete_adapter(name)
            del self._adapters[name]
            self._prefixes.pop(name, None)

    def handle(self, name: str | None = None) -> ChatModel:
        """A `ChatModel` over these weights using adapter `name` (the base when None/model_id)."""
        name = name or self.model_id
        with self._lock:
            if name != self.model_id and name not in self._adapters:
                raise ModelError(f"unknown model {name!r}; loaded: {self.names}")
        return LocalHandle(self, name)

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix (frees their memory)."""
        with self._lock:
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

    @contextmanager
    def _select(self, name: str) -> Iterator[None]:
        """Make `name` the active adapter, or switch adapters off for the base."""
        if name == self.model_id:
            if not self._adapters:  # no LoRA layer has an adapter left: they are inert
                yield
                return
            if self._peft.active_adapter not in self._adapters:
                # peft keeps a deleted adapter as active, and disable_adapter() looks it up
                self._peft.set_adapter(next(iter(self._adapters)))
            with self._peft.disable_adapter():
                yield
            return
        if name not in self._adapters:
            raise ModelError(f"unknown model {name!r}; loaded: {self.names}")
        self._peft.set_adapter(name)
        yield

    def _take_prefix(self, name: str, prompt: list[int]) -> tuple[PrefixEntry | None, int]:
        """The cached entry sharing the longest prefix with `prompt`: removed from the store
        when `prompt` continues all of it but its last `_MOVE_SLACK` tokens (the same
        conversation; a reply re-tokenised in the template differs at its end), else a copy of
        just the shared part (another episode's conversation sharing the system prompt:
        cropping it would destroy the cache of the episode that owns it)."""
        entries = self._prefixes.get(name, [])
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

    def _keep_prefix(self, name: str, entry: PrefixEntry) -> None:
        entries = self._prefixes.setdefault(name, [])
        entries.append(entry)
        slots = self._cache_slots or max(4, 2 * self.max_batch)
        if len(entries) > max(1, slots):
            entries.remove(min(entries, key=lambda e: e.last_used))

    def _next_token(self, logits: Any, params: SamplingParams, gen: Any) -> int:
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
            matcher = self._matcher(constraint) if constraint is not None else None
        budget = min(params.max_tokens, self.max_context - len(prompt))
        if budget < 1:
            raise ModelError(
                f"prompt of {len(prompt)} tokens leaves no room in the "
                f"{self.max_context}-token context of {self.model_id}"
            )
        row = _Row(prompt=prompt, params=params, name=name, matcher=matcher, budget=budget)
        row.seed(self._torch)
        if self.max_batch <= 1 and not self.invariant:
            self._generate_alone(row)
        else:
            if self._batcher is None:
                from agent_core.models.batching import Batcher

                with self._lock:
                    if self._batcher is None:
                        self._batcher = Batcher(self)
            self._batcher.run(row, timeout_s)
        out_ids = row.out
        text_ids = out_ids[:-1] if out_ids and out_ids[-1] in self._stop_ids else out_ids
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

    def _generate_alone(self, row: "_Row") -> None:
        """One reply under the lock, batch of one (max_batch 1: the baseline)."""
        torch = self._torch
        with self._lock:
            self._check_model(row.name)
            self._start_row(row)
            with self._select(row.name), torch.inference_mode():
                while not self._before_forward(row):
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
                    self._after_forward(row, logits)
            entry = row.entry
            if entry.cache.get_seq_length() > len(entry.tokens):  # tokens taken back
                entry.cache.crop(len(entry.tokens) - entry.cache.get_seq_length())
            self._finish_row(row)

    def _adapter_kwargs(self, names: list[str]) -> tuple[Any, dict[str, Any]]:
        """The module to call for rows with adapters `names` and its keyword arguments: the
        plain model, or peft's mixed-adapter batch (`adapter_names=`, "__base__" for the base)."""
        from agent_core.models.batching import BASE_ADAPTER

        if not self._adapters:  # no LoRA layer holds an adapter: the plain model
            return self._model, {}
        if self._peft.active_adapter not in self._adapters:
            # peft keeps a deleted adapter as the active one, and its mixed-batch hooks look it up
            self._peft.set_adapter(next(iter(self._adapters)))
        return self._peft, {"adapter_names": [BASE_ADAPTER if n == self.model_id else n for n in names]}

    def rows_forward(self, rows: list["_Row"], feeds: list[list[int]]) -> Any:
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
        model, kwargs = self._adapter_kwargs([r.name for r in rows])
        with rows_pass([(r.entry.cache, len(f)) for r, f in zip(rows, feeds, strict=True)]):
            return model(input_ids=ids.to(self.device), position_ids=positions.to(self.device), use_cache=False,
                         logits_to_keep=1, **kwargs).logits[:, -1].cpu()

    def _check_model(self, name: str) -> None:
        if name != self.model_id and name not in self._adapters:
            raise ModelError(f"unknown model {name!r}; loaded: {self.names}")

    def _start_row(self, row: "_Row") -> None:
        """Give `row` its KV cache: the cached entry with the longest common prefix (cropped
        to it), or an empty one; what is left of the prompt is its first feed."""
        prompt = row.prompt
        entry, reused = self._take_prefix(row.name, prompt) if self.prefix_reuse else (None, 0)
        # at least one prompt token must be fed to get the next-token logits
        reused = min(reused, len(prompt) - 1)
        if entry is None or reused == 0:
            entry = PrefixEntry([], new_cache(self._model.config))
            reused = 0
        elif len(entry.tokens) > reused:
            entry.cache.crop(reused - len(entry.tokens))  # negative: tokens to drop
            del entry.tokens[reused:]
        row.entry, row.reused = entry, reused
        row.feed = prompt[reused:]

    def _before_forward(self, row: "_Row") -> bool:
        """Whether `row` is over before its next forward pass: its budget spent, or so nearly
        spent that the reply is closed now (see `_closing`)."""
        if row.done:
            return True
        if len(row.out) >= row.budget:
            self._end_row(row, "length")
            return True
        if row.matcher is not None and row.budget - len(row.out) <= self.close_reserve:
            closing = self._closing(row.matcher, row.budget - len(row.out), late=True)
            if closing:
                row.written = list(row.out)
                row.out.extend(closing)
                self._end_row(row, "stop")
                return True
        return False

    def _after_forward(self, row: "_Row", logits: Any) -> None:
        """Draw `row`'s next token from the last position's `logits` (masked by its grammar),
        then queue what it feeds next: that token and the tokens its grammar forces."""
        raw = logits
        if row.matcher is not None:
            logits = self._mask(row.matcher, logits)
        token = self._next_token(logits, row.params, row.generator)
        row.token_logits.append(float(raw[token]))
        row.out.append(token)
        if token in self._stop_ids:
            self._end_row(row, "stop")
            return
        row.feed = [token]
        matcher = row.matcher
        if matcher is None:
            return
        if not matcher.consume_token(token):
            raise ModelError(f"grammar engine refused token {token}: {matcher.get_error()}")
        if matcher.is_stopped():  # complete: only end-of-turn may follow
            self._end_row(row, "stop")
            return
        forced = matcher.compute_ff_tokens()[: row.budget - len(row.out)] if self.jump_forward else []
        if forced:
            matcher.consume_tokens(forced)
            row.out.extend(forced)
            row.feed.extend(forced)
            if matcher.is_stopped():
                self._end_row(row, "stop")

    def _end_row(self, row: "_Row", finish: str) -> None:
        """Mark `row` over; a constrained reply cut off by its budget is closed by rollback
        where possible, and its KV entry forgets the tokens taken back."""
        if finish == "length" and row.matcher is not None:
            wrote = list(row.out)
            finish, kept = self._close_by_rollback(row.matcher, row.out, row.budget)
            del row.entry.tokens[len(row.prompt) + kept:]
            if finish == "stop":
                row.written = wrote
        row.finish, row.done = finish, True

    def _finish_row(self, row: "_Row") -> None:
        """Keep `row`'s KV entry for prefix reuse (its cache holds exactly its tokens) and
        count its tokens."""
        if self.prefix_reuse:
            row.entry.last_used = time.monotonic()
            self._keep_prefix(row.name, row.entry)
        self.generated_tokens += len(row.out)

    # -- constrained decoding ---------------------------------------------------------------

    def _matcher(self, constraint: Grammar) -> Any:
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
                           if int(i) not in self._stop_ids]
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

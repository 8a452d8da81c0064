"""Rollouts: sample G completions per prompt with Hugging Face ``generate``, or, for groups
sampled with per-group seeds or greedily, with :func:`_generate_shared`, which runs each distinct
completion prefix once per decode step and samples the same tokens (in fp32; in bf16 up to
rounding).

Shape legend: N prompts, G completions per prompt, B = N * G rows (grouped contiguously:
rows ``i*G .. i*G+G-1`` belong to prompt ``i``), P = padded prompt length, T = padded
completion length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from tokenrl.keyed import KeyedSampler, derive_seed  # noqa: F401 (derive_seed: re-exported)
from tokenrl.kvcache import growing_cache


@dataclass
class RolloutBatch:
    """Prompts and their sampled completions.

    ``prompt_ids`` are left-padded and ``completion_ids`` right-padded with the pad token, so
    ``torch.cat([prompt_ids, completion_ids], 1)`` is the full sequence each row was sampled as.
    """

    prompt_ids: torch.Tensor  # [B, P] long, left-padded
    prompt_mask: torch.Tensor  # [B, P] bool, True = real prompt token
    completion_ids: torch.Tensor  # [B, T] long, right-padded
    completion_mask: torch.Tensor  # [B, T] bool, True = generated token (EOS / stop included)
    truncated: torch.Tensor  # [B] bool, True = hit max_new_tokens without EOS or stop string
    texts: list[str]  # [B] decoded completions (cut at the stop string)
    group_size: int  # G
    prompt_index: torch.Tensor  # [B] long, which of the N prompts each row continues
    timings: dict[str, float] = field(default_factory=dict)
    token_entropy: torch.Tensor | None = None  # [B, T] float32, only when a selector needs it
    entropy_threshold: float | None = None  # the whole batch's top-q entropy cut (per_batch)

    @property
    def num_prompts(self) -> int:
        return self.prompt_ids.shape[0] // self.group_size

    @property
    def input_ids(self) -> torch.Tensor:  # [B, P + T]
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # [B, P + T]
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def completion_lengths(self) -> torch.Tensor:  # [B]
        return self.completion_mask.sum(1)

    def completion_token_lists(self) -> list[list[int]]:
        """Each row's completion token ids, without padding."""
        return [ids[m].tolist() for ids, m in zip(self.completion_ids, self.completion_mask)]


@dataclass
class SamplingConfig:
    """How completions are sampled."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False  # argmax decoding (evaluation); ignores temperature / top_p
    stop: tuple[str, ...] = ()  # stop strings; the completion ends with the one that matched
    shared_prefill: bool = True  # encode each prompt once per group, not G times (measured faster)
    shared_decode: bool = (
        True  # run each distinct completion prefix once per decode step (_generate_shared)
    )
    batch_size: int = 64  # most rows generated at once

    def generate_kwargs(self) -> dict:
        if self.greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": None,
        }


def _finished_length(
    ids: list[int], end_ids: set[int], text_of, stop: tuple[str, ...]
) -> tuple[int, bool]:
    """Length of a generated row (EOS included) and whether it was truncated.

    Rows that finished early are padded by ``generate`` with the pad token, which may equal EOS.
    A row that ended on a stop string has no EOS of its own: its stop-completing token is the
    last one before the padding.
    """
    end = next((i for i, t in enumerate(ids) if t in end_ids), len(ids))
    if stop and any(s in text_of(ids[:end]) for s in stop):
        return end, False
    if end < len(ids):
        return end + 1, False
    return len(ids), True


@torch.no_grad()
def generate_rollouts(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    sampling: SamplingConfig,
    *,
    group_size: int = 1,
    prompt_ids: list[list[int]] | None = None,
    group_seeds: list[int] | None = None,
) -> RolloutBatch:
    """Sample ``group_size`` completions for each prompt; return them as one :class:`RolloutBatch`.

    ``prompt_ids`` (token ids, e.g. a prompt plus a replayed completion prefix) replaces the
    tokenisation of ``prompts`` when given. Without ``group_seeds``, sampling uses torch's
    global RNG (seed it for reproducible rollouts). With ``group_seeds`` (one int per prompt),
    every completion row draws its randomness from its own generator seeded from its prompt's
    seed and its index in the group (:class:`KeyedSampler`), so a row's sample does not depend
    on which other prompts share its ``generate`` call: the trainer relies on this to make
    data-parallel runs match a single process (docs/distributed.md).
    """
    if group_seeds is not None and len(group_seeds) != len(
        prompt_ids if prompt_ids is not None else prompts
    ):
        raise ValueError("group_seeds needs one seed per prompt")
    if prompt_ids is None:
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    end_ids = {tokenizer.eos_token_id, pad_id} - {None}
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None and gen_cfg.eos_token_id is not None:
        eos = gen_cfg.eos_token_id
        end_ids |= set(eos if isinstance(eos, list) else [eos])
    prompts_per_call = max(1, sampling.batch_size // group_size)
    rows: list[tuple[list[int], list[int], int]] = []  # (prompt ids, completion ids, prompt index)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompt_ids), prompts_per_call):
            chunk = prompt_ids[start : start + prompts_per_call]
            seeds = None if group_seeds is None else group_seeds[start : start + prompts_per_call]
            out = _generate_chunk(
                model, tokenizer, chunk, sampling, group_size, pad_id, device, seeds
            )
            for j, completion in enumerate(out.tolist()):
                rows.append((chunk[j // group_size], completion, start + j // group_size))
    finally:
        model.train(was_training)
    gen_time = time.perf_counter() - t0

    def text_of(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    P = max(len(p) for p, _, _ in rows)
    lengths, truncated, texts = [], [], []
    for _, comp, _ in rows:
        n, trunc = _finished_length(comp, end_ids, text_of, sampling.stop)
        text = text_of(comp[:n])
        for s in sampling.stop:  # the text ends before the stop string
            if s in text:
                text = text[: text.index(s)]
        lengths.append(n)
        truncated.append(trunc)
        texts.append(text)
    T = max(max(lengths), 1)
    B = len(rows)
    prompt_t = torch.full((B, P), pad_id, dtype=torch.long)
    prompt_m = torch.zeros((B, P), dtype=torch.bool)
    comp_t = torch.full((B, T), pad_id, dtype=torch.long)
    comp_m = torch.zeros((B, T), dtype=torch.bool)
    for b, ((p, comp, _), n) in enumerate(zip(rows, lengths)):
        prompt_t[b, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        prompt_m[b, P - len(p) :] = True
        comp_t[b, :n] = torch.tensor(comp[:n], dtype=torch.long)
        comp_m[b, :n] = True
    return RolloutBatch(
        prompt_ids=prompt_t,
        prompt_mask=prompt_m,
        completion_ids=comp_t,
        completion_mask=comp_m,
        truncated=torch.tensor(truncated, dtype=torch.bool),
        texts=texts,
        group_size=group_size,
        prompt_index=torch.tensor([r[2] for r in rows], dtype=torch.long),
        timings={"generate": gen_time},
    )


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), P), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, P - len(s) :] = torch.tensor(s, dtype=torch.long, device=device)
        mask[i, P - len(s) :] = 1
    return ids, mask


def mask_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids as ``generate`` makes them for left-padded rows: cumsum(mask) - 1, 0 on pads."""
    mask = attention_mask.to(torch.long)  # [B, L]
    return (mask.cumsum(dim=1) - 1).masked_fill(mask == 0, 0)


def _keyed_kwargs(sampling: SamplingConfig, seeds: list[int], G: int, device) -> dict:
    """generate() options for :class:`KeyedSampler`: warp the scores, add noise, take the argmax."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    row_seeds = [
        derive_seed(s, j) for s in seeds for j in range(G)
    ]  # row b = prompt b // G, sample b % G
    processors: list = []
    if sampling.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_p < 1.0:
        processors.append(TopPLogitsWarper(sampling.top_p))
    processors.append(KeyedSampler(row_seeds, device))
    greedy = SamplingConfig(greedy=True).generate_kwargs()
    return {**greedy, "logits_processor": LogitsProcessorList(processors)}


def _generate_chunk(
    model, tokenizer, chunk, sampling: SamplingConfig, G: int, pad_id, device, seeds=None
):
    """Generate G completions for each prompt of ``chunk``; returns only the new tokens [n*G, T].

    ``seeds`` (one per prompt of the chunk) switches to per-row generators (:class:`KeyedSampler`).
    """
    ids, mask = _left_pad(chunk, pad_id, device)  # [n, P]
    sample_kwargs = sampling.generate_kwargs()
    if seeds is not None and not sampling.greedy:
        sample_kwargs = _keyed_kwargs(sampling, seeds, G, device)
    if (
        sampling.shared_decode
        and (sampling.greedy or seeds is not None)
        and not _extra_processors(model)
    ):
        # also for G == 1 (greedy evaluation): the in-place KV cache, and ended rows leave the batch
        processors = sample_kwargs.get("logits_processor", [])
        return _generate_shared(model, tokenizer, ids, mask, G, processors, sampling, pad_id)
    kwargs = dict(
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=pad_id,
        **sample_kwargs,
    )
    if sampling.stop:
        kwargs.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
    P = ids.shape[1]
    if sampling.shared_prefill and G > 1 and P > 1:
        # Encode each prompt once, then copy its KV cache G times: generate only has to run
        # the last prompt token for each of the n*G rows.
        # positions as generate makes them (the model's own arange would shift left-padded rows)
        prefill = model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=mask_position_ids(mask[:, :-1]),
            use_cache=True,
        )
        cache = prefill.cache
        cache.batch_repeat_interleave(G)
        ids, mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
        out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, **kwargs)
    else:
        ids, mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return out[:, P:]


def select_rows(batch: RolloutBatch, rows: torch.Tensor) -> RolloutBatch:
    """The rows ``rows`` [b] of a batch (a micro-batch); grouping is the caller's business."""
    idx = rows.tolist()
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[rows],
        prompt_mask=batch.prompt_mask[rows],
        completion_ids=batch.completion_ids[rows],
        completion_mask=batch.completion_mask[rows],
        truncated=batch.truncated[rows],
        texts=[batch.texts[i] for i in idx],
        group_size=batch.group_size,
        prompt_index=batch.prompt_index[rows],
        timings=dict(batch.timings),
        token_entropy=None if batch.token_entropy is None else batch.token_entropy[rows],
        entropy_threshold=batch.entropy_threshold,
    )


# generation-config fields that make ``generate`` add a logits processor of its own in greedy mode
# (the mode both the keyed sampler and evaluation use); :func:`_generate_shared` adds none of them
_GENERATE_PROCESSOR_FIELDS = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id",
    "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty",
    "remove_invalid_values", "renormalize_logits", "guidance_scale", "watermarking_config",
)  # fmt: skip


def _extra_processors(model) -> list[str]:
    """The fields of ``model.generation_config`` that would add a ``generate`` logits processor."""
    cfg = getattr(model, "generation_config", None)
    return [
        f
        for f in _GENERATE_PROCESSOR_FIELDS
        if getattr(cfg, f, None) not in (None, 0, 1.0, False, [], {})
    ]


def _last_logits(model, **inputs) -> tuple[torch.Tensor, object]:
    """(logits at each row's last position [R, V] in the model's dtype, the cache) of one
    forward pass."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_supports_logits_to_keep", lambda: False)():
        inputs["logits_to_keep"] = 1
    out = model(**inputs, use_cache=True)
    return out.logits[:, -1, :], out.cache


@torch.no_grad()
def _generate_shared(
    model, tokenizer, ids, mask, G: int, processors, sampling: SamplingConfig, pad_id
):
    """``generate``'s greedy loop over n prompts x G rows, with each distinct prefix run once.

    Rows that have sampled the same tokens so far (the G rows of a prompt before they part, and
    rows that agree to the end, as a sharpened policy's often do) have the same next-token
    logits, so a decode step runs the model once per distinct (prompt, completion-so-far) prefix
    and hands each row its prefix's logits; each row then draws its own token (``processors``:
    temperature / top-p warpers and :class:`KeyedSampler`, or none for greedy). The prompt is
    encoded once per prompt, its cache rows copied as prefixes part. Otherwise the same rules as
    ``generate``: positions count real tokens (left padding), a finished row (EOS, a stop string)
    gets the pad token, and the loop ends when every row has finished or at ``max_new_tokens``.
    Returns the new tokens [n*G, T].
    """
    from transformers.generation.stopping_criteria import StopStringCriteria

    n, P = ids.shape
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = torch.tensor(
        eos if isinstance(eos, list) else [] if eos is None else [eos], device=ids.device
    )
    stop = StopStringCriteria(tokenizer, list(sampling.stop)) if sampling.stop else None
    cache = growing_cache(model, P + sampling.max_new_tokens)  # None: the model's own
    logits, cache = _last_logits(
        model, input_ids=ids, attention_mask=mask, position_ids=mask_position_ids(mask), cache=cache
    )
    prefix_mask = mask  # [U, P + t] attention mask of each distinct prefix
    of_row = torch.arange(n, device=ids.device).repeat_interleave(
        G
    )  # [B] each row's distinct prefix
    rows = ids.repeat_interleave(G, 0)  # [B, P + t] every row's tokens so far
    running = torch.ones(n * G, dtype=torch.bool, device=ids.device)
    sampler = next((p for p in processors if isinstance(p, KeyedSampler)), None)
    warpers = [p for p in processors if p is not sampler]  # temperature, top-p: row by row
    for t in range(sampling.max_new_tokens):
        if sampler is None and not warpers:  # greedy: the first largest logit, read in the
            pick = logits.max(-1).indices[of_row]  # model's dtype (no float copy; same index)
        else:
            logits = logits.float()
            for warper in warpers:  # on each distinct prefix's logits [U, V], not each row's
                logits = warper(None, logits)
            pick = logits.argmax(-1)[of_row] if sampler is None else sampler.sample(logits, of_row)
        token = torch.where(running, pick, torch.full_like(of_row, pad_id))
        rows = torch.cat([rows, token[:, None]], 1)
        running &= ~torch.isin(token, eos)
        if stop is not None:
            running &= ~stop(rows, None)
        if t == sampling.max_new_tokens - 1 or not running.any():
            break
        # the distinct prefixes of the rows still running: (parent prefix, new token)
        V = logits.shape[-1]
        keys, inverse = torch.unique(of_row[running] * V + token[running], return_inverse=True)
        parent, new_token = keys // V, keys % V
        if not torch.equal(parent, torch.arange(len(prefix_mask), device=parent.device)):
            cache.batch_select_indices(parent)  # prefixes parted or finished: copy their rows
            prefix_mask = prefix_mask[parent]
        prefix_mask = torch.cat([prefix_mask, prefix_mask.new_ones(len(keys), 1)], 1)
        logits, cache = _last_logits(model, input_ids=new_token[:, None], attention_mask=prefix_mask,
                                     position_ids=mask_position_ids(prefix_mask)[:, -1:], cache=cache)  # fmt: skip
        of_row = torch.zeros_like(of_row).masked_scatter(
            running, inverse
        )  # finished rows: any prefix
    return rows[:, P:]

"""A key/value cache whose tensors are allocated once per rollout, not grown token by token.

Hugging Face's :class:`~transformers.DynamicCache` appends each decode step's keys and values with
``torch.cat``, which copies every layer's whole cache once per generated token: O(L^2) bytes
over a completion. :class:`GrowingLayer` keeps each layer's keys and values in a buffer with room
for the whole rollout (prompt + ``max_new_tokens``) and writes each step's token in place; what the
attention reads is a view of the filled part, so it computes exactly what it computes with the
dynamic cache. Used by :func:`tokenrl.rollout._generate_shared`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """One layer's keys and values [B, H, L, D] as views of buffers [B, H, capacity, D].

    ``capacity`` is a hint: a write past it doubles the buffer (one copy), so a wrong hint costs
    time, never tokens.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._keys: torch.Tensor | None = None  # [B, H, capacity, D]
        self._values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._allocate(key_states, value_states, max(self.capacity, key_states.shape[-2]))
        self.is_initialized = True

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """New buffers of ``capacity`` positions for ``keys``' rows, holding their first
        ``self.length`` positions."""
        B, H, _, D = keys.shape
        new_k = keys.new_empty((B, H, capacity, D))
        new_v = values.new_empty((B, H, capacity, values.shape[-1]))
        new_k[:, :, : self.length] = keys[:, :, : self.length]
        new_v[:, :, : self.length] = values[:, :, : self.length]
        self._keys, self._values, self.capacity = new_k, new_v, capacity
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._allocate(self._keys, self._values, max(end, 2 * self.capacity))
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices`` (a row may repeat); copies the filled positions only."""
        if self.is_initialized:
            self._allocate(self.keys[indices], self.values[indices], self.capacity)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            keep = torch.arange(self._keys.shape[0], device=self.device)
            self.batch_select_indices(keep.repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number: the tokens to remove")
        if self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._expose()

    def reset(self) -> None:
        self._keys = self._values = None
        self.length = 0
        super().reset()


def growing_cache(model: torch.nn.Module, capacity: int) -> DynamicCache | None:
    """A :class:`DynamicCache` of :class:`GrowingLayer` with room for ``capacity`` positions, or
    None (let the model make its own) for models with layers other than full attention."""
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if config is not None else None
    layer_types = getattr(text, "layer_types", None) or []
    if text is None or any(t != "full_attention" for t in layer_types):
        return None
    cache = DynamicCache()
    cache.layer_class_to_replicate = lambda: GrowingLayer(capacity)
    return cache

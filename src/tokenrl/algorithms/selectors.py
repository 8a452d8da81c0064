"""Token selectors: which completion tokens enter the loss (a boolean ``update_mask``).

A selector is a function ``(completion_mask, generator, **options) -> update_mask``; it sees no
model and no rewards, so it can be tested alone. Register your own with :func:`register_selector`
and pick it by name (``GRPOConfig(selector="name", selector_options={...})``).

Shape legend: B = completion rows, T = padded completion length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Selector = Callable[..., torch.Tensor]
"""``(completion_mask [B, T] bool, generator: torch.Generator | None, **options) -> [B, T] bool``"""


def select_all(
    completion_mask: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Every real completion token (full-token GRPO).

    ``completion_mask`` [B, T] bool -> ``update_mask`` [B, T] bool (a copy).
    """
    return completion_mask.clone()


def sgrpo_select(
    completion_mask: torch.Tensor,
    generator: torch.Generator | None,
    *,
    alpha: int,
    p: float,
    k: int,
) -> torch.Tensor:
    """S-GRPO token subset T_i of each completion (Lee & Tong, arXiv 2504.20834).

    The rule is a sequential scan over completion positions t = 0, 1, 2, ...:

    * t < alpha: always selected;
    * t >= alpha and |T_i| < k: selected with probability ``p`` (independent Bernoulli draw);
    * otherwise the cap is reached: not selected, and the scan stops.

    The cap k counts the always-selected early tokens; only real completion tokens
    (``completion_mask``) are eligible. A fresh draw is made on every call.

    Vectorised form (exact): draw u ~ U(0, 1) for every [b, t]; a position is a candidate if it
    is real and (t < alpha or u < p); the sequential scan keeps a candidate iff fewer than k tokens
    were kept before it, i.e. iff the running count of candidates up to and including t is <= k.
    Early tokens are kept regardless (they come first, so this only matters when alpha > k).

    Shapes: ``completion_mask`` [B, T] bool -> ``update_mask`` [B, T] bool.
    """
    B, T = completion_mask.shape
    device = completion_mask.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    u = torch.rand(B, T, generator=generator, device=gen_device).to(device)  # [B, T]
    is_early = torch.arange(T, device=device) < alpha  # [T]
    candidate = completion_mask & (is_early | (u < p))  # [B, T]
    under_cap = torch.cumsum(candidate.to(torch.int64), dim=1) <= k  # [B, T]
    return candidate & (under_cap | is_early)


SELECTORS: dict[str, Selector] = {
    "all": select_all,
    "sgrpo": sgrpo_select,
}


def register_selector(name: str, fn: Selector, *, overwrite: bool = False) -> None:
    """Make ``fn`` usable as ``GRPOConfig(selector=name)``.

    ``fn(completion_mask [B, T] bool, generator, **selector_options) -> [B, T] bool`` must only
    select real completion tokens; it is combined with group-normalised advantages.
    """
    if name in SELECTORS and not overwrite:
        raise ValueError(
            f"a token selector named {name!r} is already registered ({SELECTORS[name].__name__}); "
            "pick another name or pass overwrite=True to replace it"
        )
    SELECTORS[name] = fn


def run_selector(
    name: str,
    completion_mask: torch.Tensor,
    generator: torch.Generator | None,
    options: dict[str, Any],
) -> torch.Tensor:
    """Call the selector ``name`` and check what it returns (shape, dtype, no padding selected)."""
    if name not in SELECTORS:
        raise ValueError(
            f"unknown token selector {name!r}; registered: {', '.join(sorted(SELECTORS))}"
        )
    update_mask = SELECTORS[name](completion_mask, generator, **options)
    if update_mask.shape != completion_mask.shape or update_mask.dtype != torch.bool:
        raise ValueError(
            f"selector {name!r} returned {tuple(update_mask.shape)} {update_mask.dtype}; "
            f"it must return a bool mask shaped like completion_mask {tuple(completion_mask.shape)}"
        )
    if (update_mask & ~completion_mask).any():
        raise ValueError(
            f"selector {name!r} selected padding positions; AND its mask with completion_mask"
        )
    return update_mask


def run_selector_by_group(
    name: str,
    completion_mask: torch.Tensor,
    generators: list[torch.Generator],
    group_size: int,
    options: dict[str, Any],
) -> torch.Tensor:
    """:func:`run_selector` on each group alone, with that group's own generator.

    Group g (rows g*G .. g*G+G-1) is cut to its own longest completion before the call, so its
    random draws depend only on its generator and its completions, not on the other groups in the
    batch or the batch's padded width: a data-parallel run that splits the groups over processes
    selects the same tokens as one process (docs/distributed.md).
    ``completion_mask`` [B, T] bool, B = len(generators) * G -> ``update_mask`` [B, T] bool.
    """
    B = completion_mask.shape[0]
    if B != len(generators) * group_size:
        raise ValueError(f"{len(generators)} generators for {B} rows in groups of {group_size}")
    update_mask = torch.zeros_like(completion_mask)  # [B, T]
    for g, gen in enumerate(generators):
        rows = slice(g * group_size, (g + 1) * group_size)
        width = int(completion_mask[rows].sum(dim=1).max())  # right-padded: nothing real beyond it
        update_mask[rows, :width] = run_selector(name, completion_mask[rows, :width], gen, options)
    return update_mask

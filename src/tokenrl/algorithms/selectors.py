"""Token selectors: which completion tokens enter the loss (a boolean ``update_mask``).

A selector is a function ``(completion_mask, generator, **options) -> update_mask``; it sees no
model and no rewards, so it can be tested alone. Register your own with :func:`register_selector`
and pick it by name (``GRPOConfig(selector="name", selector_options={...})``).

A selector can declare, with the :func:`selector` decorator, what else it needs and what it is:

* ``needs``: per-token inputs beyond the mask, passed as keyword arguments of the same [B, T]
  shape; today ``"entropy"`` (the policy's predictive entropy, computed by the trainer under
  ``no_grad`` only when a selector asks for it, :func:`tokenrl.algorithms.logprobs.token_entropy`);
* ``inclusion``: ``(completion_mask, **options) -> pi [B, T]``, each real token's probability of
  being selected, for Horvitz-Thompson weights ``1 / pi`` that make the masked loss an unbiased
  estimate of the full-token loss (:func:`ht_weights`); ``weighted=True`` applies them always;
* ``check``: ``(options) -> None``, raising ValueError for a bad option before any model loads.

Shape legend: B = completion rows, T = padded completion length.
"""

from __future__ import annotations

import math
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


def selector(
    *,
    needs: tuple[str, ...] = (),
    inclusion: Callable[..., torch.Tensor] | None = None,
    weighted: bool = False,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[Selector], Selector]:
    """Declare a selector's extra inputs, inclusion probabilities and option check (see above)."""

    def mark(fn: Selector) -> Selector:
        fn.needs, fn.inclusion, fn.weighted, fn.check = needs, inclusion, weighted, check  # type: ignore[attr-defined]
        return fn

    return mark


def _in_unit(name: str, value: Any, *, open_low: bool = True) -> None:
    ok = isinstance(value, (int, float)) and (0 < value <= 1 if open_low else 0 <= value <= 1)
    if not ok:
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name}={value!r} must be a number in {interval}")


def _options(allowed: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def check(options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r}; this selector takes {', '.join(allowed) or 'none'}"
            )

    return check


# ---------------------------------------------------------------------------------------------
# S-GRPO's inclusion probabilities (for its unbiased variant, sgrpo.unbiased)


def sgrpo_inclusion(completion_mask: torch.Tensor, *, alpha: int, p: float, k: int) -> torch.Tensor:
    """P(token t is selected) under :func:`sgrpo_select`, for every real position.

    pi_t = 1 for t < alpha; for t >= alpha the token is a candidate with probability p and is kept
    iff fewer than k - alpha of the t - alpha candidates before it were kept, so
    pi_t = p * P(Binomial(t - alpha, p) <= k - alpha - 1) (0 when k <= alpha).
    ``completion_mask`` [B, T] -> pi [B, T] float32 (0 on padding).
    """
    B, T = completion_mask.shape
    pi = torch.zeros(T, dtype=torch.float64)
    pi[: min(alpha, T)] = 1.0
    cap = k - alpha - 1  # most candidates that may come before a kept one
    if cap >= 0 and T > alpha:
        n = torch.arange(T - alpha, dtype=torch.float64)  # candidates drawn before position t
        j = torch.arange(cap + 1, dtype=torch.float64)  # how many of them were kept
        if 0 < p < 1:
            log_binom = (torch.lgamma(n[:, None] + 1) - torch.lgamma(j + 1)
                         - torch.lgamma(n[:, None] - j + 1))  # fmt: skip
            log_pmf = log_binom + j * math.log(p) + (n[:, None] - j) * math.log1p(-p)
            log_pmf = torch.where(j <= n[:, None], log_pmf, torch.full_like(log_pmf, -math.inf))
            cdf = log_pmf.exp().sum(dim=1).clamp(max=1.0)
        else:  # p = 1: every candidate kept, so t is kept iff t - alpha <= cap; p = 0: none
            cdf = (n <= cap).to(torch.float64)
        pi[alpha:] = p * cdf
    return (pi.to(torch.float32)[None, :] * completion_mask).to(torch.float32)


def _check_sgrpo(options: dict[str, Any]) -> None:
    _options(("alpha", "p", "k"))(options)


sgrpo_select = selector(inclusion=sgrpo_inclusion, check=_check_sgrpo)(sgrpo_select)


# ---------------------------------------------------------------------------------------------
# the field's selectors beside S-GRPO


ENTROPY_Q = 0.2  # the entropy selector's default top fraction (the paper's 20%)


def _check_entropy(options: dict[str, Any]) -> None:
    _options(("q", "per_sequence", "per_batch"))(options)
    _in_unit("q", options.get("q", ENTROPY_Q))
    for flag in ("per_sequence", "per_batch"):
        if not isinstance(options.get(flag, False), bool):
            raise ValueError(f"{flag}={options[flag]!r} must be true or false")
    if options.get("per_sequence") and options.get("per_batch"):
        raise ValueError("per_sequence and per_batch: choose one scope of the top-q cut")


@selector(needs=("entropy",), check=_check_entropy)
def entropy_select(
    completion_mask: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    entropy: torch.Tensor,
    q: float = ENTROPY_Q,
    per_sequence: bool = False,
    per_batch: bool = False,
    threshold: float | None = None,
) -> torch.Tensor:
    """The top-q fraction of tokens by the policy's predictive entropy H_t = -sum_v pi(v) log pi(v)
    ("Beyond the 80/20 Rule", arXiv 2506.01939; TRL's ``top_entropy_quantile``).

    Of the n real tokens passed in, the ceil(q n) with the highest entropy are selected (ties: the
    earlier position first); with ``per_sequence`` the ceil(q n_b) highest of each row b. The
    trainer passes one group at a time (:func:`run_selector_by_group`), so by default the cut is
    per group: the choice does not depend on how groups are batched or sharded. ``per_batch``
    is TRL's rule: every token with H_t >= ``threshold``, the (1 - q) quantile of the entropies
    of the whole step's batch over all data-parallel ranks
    (:func:`tokenrl.algorithms.entropy.batch_entropy_threshold`, computed by the step).
    ``completion_mask`` [B, T] bool, ``entropy`` [B, T] float -> ``update_mask`` [B, T] bool.
    """
    if per_batch:
        if threshold is None:
            raise ValueError("entropy per_batch: the batch's threshold was not computed")
        return completion_mask & (entropy >= threshold)
    # highest entropy first, padding last; a stable sort keeps equal entropies in position order
    score = torch.where(
        completion_mask, entropy.double(), torch.full_like(entropy.double(), -math.inf)
    )
    mask = torch.zeros_like(completion_mask)
    rows = [score[b] for b in range(score.shape[0])] if per_sequence else [score.flatten()]
    flat = mask.view(len(rows), -1)  # a view: writing it writes ``mask``
    for r, row in enumerate(rows):
        n = int((row > -math.inf).sum())
        top = torch.sort(row, descending=True, stable=True).indices[: math.ceil(q * n)]
        flat[r, top] = True
    return mask & completion_mask


def nat_urs_inclusion(completion_mask: torch.Tensor, *, p: float = 0.5) -> torch.Tensor:
    """pi_t = p for every real token."""
    return completion_mask.to(torch.float32) * p


def _check_nat_urs(options: dict[str, Any]) -> None:
    _options(("p",))(options)
    _in_unit("p", options.get("p", 0.5))


@selector(inclusion=nat_urs_inclusion, weighted=True, check=_check_nat_urs)
def nat_urs_select(
    completion_mask: torch.Tensor, generator: torch.Generator | None, *, p: float = 0.5
) -> torch.Tensor:
    """NAT-URS ("Not All Tokens Are Needed", arXiv 2603.06619): each real token independently with
    probability p, weighted 1 / p (Horvitz-Thompson) so the gradient is unbiased.
    ``completion_mask`` [B, T] bool -> ``update_mask`` [B, T] bool."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(completion_mask.shape, generator=generator, device=gen_device)
    return completion_mask & (u.to(completion_mask.device) < p)


def nat_rpc_inclusion(completion_mask: torch.Tensor, **options: Any) -> torch.Tensor:
    """pi_t = (L_b - t) / L_b: the cut c ~ Uniform{1..L_b} keeps t iff t < c."""
    lengths = completion_mask.sum(dim=1, keepdim=True).clamp(min=1).to(torch.float32)  # [B, 1]
    t = torch.arange(completion_mask.shape[1], dtype=torch.float32)[None, :]  # [1, T]
    return ((lengths - t) / lengths).clamp(min=0) * completion_mask


@selector(inclusion=nat_rpc_inclusion, weighted=True, check=_options(()))
def nat_rpc_select(
    completion_mask: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """NAT-RPC (arXiv 2603.06619): a random prefix of each completion, every token up to a cut
    c_b ~ Uniform{1, ..., L_b} (so at least the first token), weighted 1 / pi_t with
    pi_t = (L_b - t) / L_b (Horvitz-Thompson). The update runs each row only up to its last
    selected token, so the forward and backward passes stop at the cut.
    Completions are right-padded (real tokens first). ``[B, T] bool -> [B, T] bool``."""
    lengths = completion_mask.sum(dim=1)  # [B]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(lengths.shape, generator=generator, device=gen_device).to(lengths.device)
    cut = (u * lengths).floor().long() + 1  # [B] in 1..L_b
    t = torch.arange(completion_mask.shape[1], device=completion_mask.device)[None, :]
    return completion_mask & (t < cut[:, None])


SELECTORS: dict[str, Selector] = {
    "all": select_all,
    "sgrpo": sgrpo_select,
    "entropy": entropy_select,
    "nat-urs": nat_urs_select,
    "nat-rpc": nat_rpc_select,
}


def selector_needs(name: str) -> tuple[str, ...]:
    """The extra per-token inputs selector ``name`` declares (``()`` for most)."""
    return tuple(getattr(SELECTORS[name], "needs", ()))


def check_selector_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming the problem when ``options`` do not suit selector ``name``."""
    check = getattr(SELECTORS[name], "check", None)
    if check is not None:
        check(options)


def ht_weights(name: str, completion_mask: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
    """Horvitz-Thompson weights 1 / pi [B, T] of selector ``name`` (0 on padding): with them and
    a denominator counting every real token, E[masked loss] = the full-token loss."""
    inclusion = getattr(SELECTORS[name], "inclusion", None)
    if inclusion is None:
        raise ValueError(
            f"selector {name!r} declares no inclusion probabilities (needed for 1/pi weights)"
        )
    pi = inclusion(completion_mask, **options)
    return torch.where(pi > 0, 1.0 / pi.clamp(min=1e-30), torch.zeros_like(pi))


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
    inputs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Call the selector ``name`` with the per-token ``inputs`` it declares (``needs``) and check
    what it returns (shape, dtype, no padding selected)."""
    if name not in SELECTORS:
        raise ValueError(
            f"unknown token selector {name!r}; registered: {', '.join(sorted(SELECTORS))}"
        )
    extra = {}
    for need in selector_needs(name):
        if inputs is None or need not in inputs:
            raise ValueError(
                f"selector {name!r} needs the per-token {need!r}, which was not computed"
            )
        extra[need] = inputs[need]
    update_mask = SELECTORS[name](completion_mask, generator, **options, **extra)
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
    inputs: dict[str, torch.Tensor] | None = None,
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
        part = {k: v[rows, :width] for k, v in (inputs or {}).items()}
        update_mask[rows, :width] = run_selector(
            name, completion_mask[rows, :width], gen, options, part
        )
    return update_mask

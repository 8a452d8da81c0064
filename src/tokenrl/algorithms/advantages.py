"""Group-normalised advantages (GRPO, S-GRPO): one number per completion.

    A_i = (r_i - mean(r)) / (std(r) + eps)        over the G completions of one prompt

DeepSeekMath GRPO, https://arxiv.org/abs/2402.03300 (section 4.1.2); S-GRPO uses the same
advantage (Lee & Tong, https://arxiv.org/abs/2504.20834).

std is the *sample* standard deviation (Bessel's correction, ``torch.std``'s default), as in
TRL's GRPOTrainer, so our numbers are comparable with it; for G = 8 it is sqrt(8/7) = 1.07 times
the population std. A group whose rewards are all equal (or a group of one) has no signal and
gets advantages of exactly 0, with no division by a zero std.

Shape legend: B = N * G rows (grouped contiguously: rows i*G .. i*G+G-1 belong to prompt i),
N = prompts, G = completions per prompt.
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:
    """A_i = (r_i - mean_group(r)) / (std_group(r) + eps), or without the division.

    ``rewards`` [B] float -> advantages [B] float32. ``scale_by_std=False`` gives Dr. GRPO's
    unscaled advantage r_i - mean(r) (https://arxiv.org/abs/2503.20783).
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be a 1-D tensor whose length is a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}; pass one reward per completion, groups contiguous"
        )
    r = rewards.detach().to(torch.float32).view(-1, group_size)  # [N, G]
    centred = r - r.mean(dim=1, keepdim=True)  # [N, G]
    # All-equal groups: the mean can differ from the rewards by rounding (0.1 * 3 / 3 != 0.1),
    # so set them to exactly zero rather than trusting the subtraction.
    no_signal = (r == r[:, :1]).all(dim=1, keepdim=True)  # [N, 1]
    if scale_by_std and group_size > 1:
        # eps keeps a tiny-but-nonzero std (rewards 1.0 and 1.0 + 1e-9) from exploding.
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return torch.where(no_signal, torch.zeros_like(centred), centred).view(-1)  # [B]


def settled_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] bool: which groups of ``group_size`` consecutive rewards are all equal (no learning signal)."""
    r = rewards.detach().view(-1, group_size)  # [N, G]
    return (r == r[:, :1]).all(dim=1)


def zero_std_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal (they carry no learning signal)."""
    return settled_groups(rewards, group_size).float().mean().item()

"""The algorithms' config classes (one per algorithm, the ``grpo`` / ``sgrpo`` / ``tspmo``
sections of a run's config), validated with messages that say what to set. Defaults are tagged
**[paper]** or **[ours]** (docs/paper.md). :mod:`tokenrl.algorithms.registry` pairs each with its
``prepare``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenrl.algorithms.losses import AGGREGATIONS
from tokenrl.algorithms.replay import ReplayConfig
from tokenrl.algorithms.selectors import SELECTORS, check_selector_options
from tokenrl.algorithms.trie import WEIGHTINGS


def _fail(what: str, why: str, fix: str) -> None:
    raise ValueError(f"{what}: {why}. Fix: {fix}")


def _check_std_eps(std_eps: float) -> None:
    if std_eps < 0:
        _fail(
            f"std_eps={std_eps} is negative",
            "it guards the division by the reward std",
            "use a small positive value such as 1e-4",
        )


# ---------------------------------------------------------------------------------------------
# configs


@dataclass
class PolicyLossConfig:
    """Loss settings shared by every algorithm."""

    aggregation: str = "seq_mean"
    """How token terms are averaged: "seq_mean" (mean per completion, then over completions:
    original GRPO and S-GRPO [paper]), "token_mean" (over all loss tokens of the batch; for
    T-SPMO the mean over unique pairs), "constant" (sum / (B * constant_normaliser), Dr. GRPO)."""

    constant_normaliser: int | None = None
    """Denominator per row for aggregation="constant"; set it to max_new_tokens."""

    beta: float = 0.0
    """KL(pi || reference) coefficient, k3 estimator, reference = the model with LoRA disabled.
    0 [ours]: the paper calls the KL term optional; 0 skips a forward pass and the log-probs of
    zero-advantage tokens. DeepSeekMath used 0.04."""

    clip_low: float = 0.2
    """PPO clip: ratios below 1 - clip_low stop pushing down (only used from the second inner
    update on a batch; the first is on-policy with ratio 1). 0.2 [PPO/GRPO standard]."""

    clip_high: float = 0.2
    """PPO clip: ratios above 1 + clip_high stop pushing up. 0.2 [PPO/GRPO standard]; DAPO: 0.28."""

    def validate(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            _fail(
                f"aggregation={self.aggregation!r} is unknown",
                "the loss cannot average its token terms",
                f"choose one of {', '.join(AGGREGATIONS)}",
            )
        if self.aggregation == "constant" and (
            self.constant_normaliser is None or self.constant_normaliser < 1
        ):
            _fail(
                f"aggregation='constant' with constant_normaliser={self.constant_normaliser}",
                "Dr. GRPO divides each row's sum by a fixed token count",
                "set constant_normaliser to max_new_tokens",
            )
        if self.beta < 0:
            _fail(
                f"beta={self.beta} is negative",
                "a negative KL weight rewards moving away from the reference",
                "use beta >= 0 (0 = no KL term)",
            )
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            _fail(
                f"clip_low={self.clip_low}, clip_high={self.clip_high} is out of range",
                "the ratio is clipped to [1 - clip_low, 1 + clip_high], which must hold 1",
                "use 0 <= clip_low < 1 and clip_high >= 0 (0.2 is standard)",
            )


@dataclass
class GRPOConfig(PolicyLossConfig):
    """Full-token GRPO (DeepSeekMath, arXiv 2402.03300), or GRPO with a custom token selector."""

    scale_by_std: bool = True
    """Divide group-centred rewards by the group's (sample) reward std [paper]. False = Dr. GRPO."""

    std_eps: float = 1e-4
    """Added to the std before dividing [ours: TRL's value]; all-equal groups get A = 0 anyway."""

    selector: str = "all"
    """Token selector name in SELECTORS: "all" = every completion token (GRPO), "sgrpo", or one
    added with register_selector."""

    selector_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options passed to the selector."""

    def selector_spec(self) -> tuple[str, dict[str, Any]]:
        return self.selector, dict(self.selector_options)

    def validate(self) -> None:
        super().validate()
        if self.selector not in SELECTORS:
            _fail(
                f"selector={self.selector!r} is not registered",
                "it picks the tokens of the loss",
                f"choose one of {', '.join(sorted(SELECTORS))} or call register_selector first",
            )
        try:
            check_selector_options(self.selector, self.selector_options)
        except ValueError as err:
            _fail(
                f"selector_options for {self.selector!r}: {err}",
                "the selector could not run with them",
                "see docs/algorithms.md for each selector's options",
            )
        _check_std_eps(self.std_eps)


@dataclass
class SGRPOConfig(PolicyLossConfig):
    """S-GRPO: group advantages on a random token subset per completion [paper].

    With alpha=16, p=0.3, k=64 [ours] a completion of n tokens keeps on average
    min(k, alpha + p (n - alpha)) tokens: 41% of 100 tokens, 37% of 150, 32% of 200, inside the
    30-50% the paper reports (short completions keep more: 65% of 32 tokens).
    """

    alpha: int = 16
    """The first alpha completion tokens are always selected (they set the solution path)."""

    p: float = 0.3
    """Probability of selecting each later token while fewer than k are selected."""

    k: int = 64
    """Cap on selected tokens per completion, counting the first alpha; must be >= alpha."""

    scale_by_std: bool = True
    """As GRPOConfig.scale_by_std [paper]."""

    std_eps: float = 1e-4
    """As GRPOConfig.std_eps [ours]."""

    unbiased: bool = False
    """Weight each selected token by 1 / P(selected) and average over every real token
    (Horvitz-Thompson): an unbiased estimate of the full-token GRPO loss. False = the paper's
    rule, a plain mean over the selected tokens [paper]."""

    def selector_spec(self) -> tuple[str, dict[str, Any]]:
        return "sgrpo", {"alpha": self.alpha, "p": self.p, "k": self.k}

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.p <= 1.0:
            _fail(
                f"p={self.p} is not a probability",
                "each token after alpha is selected with probability p",
                "use 0 <= p <= 1 (0.3 selects about a third)",
            )
        if self.alpha < 0:
            _fail(
                f"alpha={self.alpha} is negative",
                "alpha counts the always-selected first tokens",
                "use alpha >= 0 (0 = no forced tokens)",
            )
        if self.k < 1:
            _fail(
                f"k={self.k} is below 1",
                "k caps the selected tokens per completion, so no token would train",
                "use k >= 1",
            )
        if self.k < self.alpha:
            _fail(
                f"k={self.k} < alpha={self.alpha}",
                "the cap counts the always-selected tokens, so the first alpha would already "
                "exceed it and no later token could be drawn",
                "use k >= alpha (k == alpha keeps a fixed prefix)",
            )
        _check_std_eps(self.std_eps)


@dataclass
class TSPMOConfig(PolicyLossConfig):
    """T-SPMO: credit on (prefix, next token) pairs of the group's prefix trie [paper; ours]."""

    aggregation: str = "token_mean"
    """Mean over unique pairs (each sits at one position), weighted by ``weighting`` [paper]."""

    normalise_std: bool = True
    """Divide A(p, v) by the group's (sample) reward std + std_eps, like GRPO's advantage [ours]."""

    std_eps: float = 1e-4
    """Added to the std before dividing [ours]."""

    min_visits: int = 1
    """Keep a pair only if at least this many completions pass through p + v [ours: all pairs]."""

    weighting: str = "uniform"
    """"uniform": each unique pair weighs 1 [paper: counts once]; "visit": weight N(p + v)."""

    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """Replay: fresh groups continuing stored successful completions from a cut (see replay.py)."""

    def validate(self) -> None:
        super().validate()
        self.replay.validate()
        if self.min_visits < 1:
            _fail(
                f"min_visits={self.min_visits} is below 1",
                "every pair is visited at least once",
                "use min_visits >= 1 (1 keeps every pair)",
            )
        if self.weighting not in WEIGHTINGS:
            _fail(
                f"weighting={self.weighting!r} is unknown",
                "it sets how much each pair counts",
                f"choose one of {', '.join(WEIGHTINGS)}",
            )
        _check_std_eps(self.std_eps)

"""The RL algorithms of tokenrl: full-token GRPO, S-GRPO and T-SPMO (Lee & Tong, arXiv 2504.20834).

One training step uses them in this order (see docs/algorithms.md)::

    algo = get_algorithm("sgrpo"); cfg = algo.config_cls(); cfg.validate()
    inputs = algo.prepare(batch, rewards, cfg, generator)        # credit + token selection
    ref = reference_logprobs(model, batch, inputs.logprob_mask) if cfg.beta > 0 else None
    logp = completion_logprobs(model, batch, inputs.logprob_mask)  # only where needed
    loss, metrics = policy_loss(logp, None, inputs, clip_low=cfg.clip_low,
                                clip_high=cfg.clip_high, beta=cfg.beta, ref_logp=ref)
"""

from tokenrl.algorithms.advantages import group_advantages, zero_std_fraction
from tokenrl.algorithms.logprobs import (
    completion_logprobs,
    head_logprobs,
    mask_position_ids,
    reference_logprobs,
    selective_logprobs,
)
from tokenrl.algorithms.losses import (
    AGGREGATIONS,
    LossInputs,
    clipped_objective,
    constant_coef,
    k3_kl,
    make_loss_inputs,
    pg_objective,
    policy_loss,
    seq_mean_coef,
    token_mean_coef,
    weighted_policy_loss,
)
from tokenrl.algorithms.registry import (
    ALGORITHMS,
    Algorithm,
    GRPOConfig,
    PolicyLossConfig,
    SGRPOConfig,
    TSPMOConfig,
    get_algorithm,
    prepare_group,
    prepare_tspmo,
)
from tokenrl.algorithms.replay import (
    ReplayBuffer,
    ReplayConfig,
    ReplayItem,
    ReplayPrefix,
    cut_position,
    sample_replay_prefixes,
)
from tokenrl.algorithms.selectors import SELECTORS, register_selector, select_all, sgrpo_select
from tokenrl.algorithms.trie import (
    PrefixPair,
    PrefixTrie,
    TokenCredit,
    group_pairs,
    pairs_to_token_tensors,
)

__all__ = [
    "AGGREGATIONS",
    "ALGORITHMS",
    "SELECTORS",
    "Algorithm",
    "GRPOConfig",
    "LossInputs",
    "PolicyLossConfig",
    "PrefixPair",
    "PrefixTrie",
    "ReplayBuffer",
    "ReplayConfig",
    "ReplayItem",
    "ReplayPrefix",
    "SGRPOConfig",
    "TSPMOConfig",
    "TokenCredit",
    "clipped_objective",
    "completion_logprobs",
    "constant_coef",
    "cut_position",
    "get_algorithm",
    "group_advantages",
    "group_pairs",
    "head_logprobs",
    "k3_kl",
    "make_loss_inputs",
    "mask_position_ids",
    "pairs_to_token_tensors",
    "pg_objective",
    "policy_loss",
    "prepare_group",
    "prepare_tspmo",
    "reference_logprobs",
    "register_selector",
    "sample_replay_prefixes",
    "select_all",
    "selective_logprobs",
    "seq_mean_coef",
    "sgrpo_select",
    "token_mean_coef",
    "weighted_policy_loss",
    "zero_std_fraction",
]

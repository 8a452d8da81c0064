"""tokenrl: token-efficient RL (S-GRPO, T-SPMO, GRPO) with LoRA for LLM reasoning."""

__version__ = "0.1.0"

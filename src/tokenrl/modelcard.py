"""The model card of a trained adapter: ``adapter/README.md`` in the format the Hugging Face Hub
and ``huggingface_hub.ModelCard`` read (YAML metadata between ``---`` lines, then Markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HUB_IDS = {
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "qwen2.5-coder-0.5b-instruct": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
    "qwen2.5-coder-1.5b-instruct": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
}
"""tokenrl's built-in model names -> the hub model they are converted from."""


def base_model_id(name: str) -> str:
    """The hub id (or folder) the adapter applies to: a built-in name maps to its hub model."""
    return HUB_IDS.get(name, name)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def model_card(cfg: dict[str, Any], summary: dict[str, Any], command: str | None = None) -> str:
    """README.md text for an adapter trained with ``cfg`` (a Config as a dict) that reached
    ``summary`` (eval.json)."""
    algo, task, model = cfg["train"]["algo"], cfg["task"]["name"], cfg["model"]["name"]
    meta = {
        "base_model": base_model_id(model),
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["tokenrl", "reinforcement-learning", "lora", algo],
    }
    before = summary.get("before", {})
    after = summary.get("after", {})
    lora, rollout, optim = cfg["lora"], cfg["rollout"], cfg["optim"]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {algo} LoRA adapter for {model} on {task}",
        "",
        f"Trained with [tokenrl](https://arxiv.org/abs/2504.20834) ({algo}, {summary.get('steps', '?')} steps, "
        f"seed {cfg['train']['seed']}). Base model: `{base_model_id(model)}`"
        + (f" (tokenrl built-in `{model}`)" if model in HUB_IDS else "")
        + ".",
        "",
        "| held-out accuracy (greedy) | before | after | problems |",
        "|---|---|---|---|",
        f"| {task} | {_pct(before.get('accuracy'))} | {_pct(after.get('accuracy'))} | {after.get('n', '-')} |",
        "",
        "Key settings: "
        f"LoRA r={lora['r']}, alpha={lora['alpha']}, targets {', '.join(lora['target_modules'])}; "
        f"{rollout['prompts_per_step']} prompts x {rollout['group_size']} completions a step, "
        f"at most {rollout['max_new_tokens']} new tokens, temperature {rollout['temperature']}; "
        f"AdamW lr {optim['lr']}. Tokens in the loss: "
        + (
            f"{100 * summary['tokens_update_frac']:.1f}%"
            if summary.get("tokens_update_frac") is not None
            else "-"
        )
        + ". The whole configuration is the run folder's `config.yaml`.",
        "",
        "Use it with peft:",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/adapter")',
        "```",
    ]
    if command:
        lines += ["", "Reproduce:", "", "```bash", command, "```"]
    return "\n".join(lines) + "\n"


def write_model_card(
    adapter_dir: Path, cfg: dict[str, Any], summary: dict[str, Any], command: str | None = None
) -> Path:
    """Write (replace) ``adapter_dir/README.md``; returns its path."""
    path = Path(adapter_dir) / "README.md"
    path.write_text(model_card(cfg, summary, command), encoding="utf-8")
    return path

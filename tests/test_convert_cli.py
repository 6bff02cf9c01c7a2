"""`neox convert`: our checkpoint -> Hugging Face directory -> our checkpoint, train-free.

A tiny random model is written in the layout DeepSpeed produces
(``mp_rank_00_model_states.pt`` with ``{'module': state_dict}``), exported with
``--to hf``, loaded by Transformers (no missing or unexpected keys, same
logits), imported back with ``--from hf`` and loaded with ``load_for_inference``.
The Hub upload is checked at the HTTP boundary: ``HfApi``'s methods are replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from neoxcli.checkpoint import load_for_inference  # noqa: E402
from neoxcli.cli import main  # noqa: E402
from neoxcli.config.loader import dump_config  # noqa: E402
from neoxcli.config.schema import ModelConfig, NeoXConfig, TokenizerConfig  # noqa: E402
from neoxcli.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from neoxcli.model import GPTModel  # noqa: E402

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "def convert(model):\n    return model\n",
    "Pythia, GPT-J, Llama and GPT-2 all read the same tokens.",
] * 20

BASE: dict[str, Any] = dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32)
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    # partial rotary, parallel residual, untied, exact GELU: Pythia's block
    "gpt_neox": (
        "GPTNeoXForCausalLM",
        dict(pos_emb="rotary", rotary_pct=0.25, gpt_j_residual=True, no_weight_tying=True),
    ),
    # one shared LayerNorm, no attention biases, an output bias, tanh GELU
    "gptj": (
        "GPTJForCausalLM",
        dict(
            pos_emb="rotary",
            rotary_pct=0.5,
            gpt_j_residual=True,
            gpt_j_tied=True,
            use_bias_in_attn_linear=False,
            use_bias_in_output_layer=True,
            no_weight_tying=True,
            activation="gelu_tanh",
        ),
    ),
    # grouped-query attention, RMSNorm, SwiGLU, no biases
    "llama": (
        "LlamaForCausalLM",
        dict(
            pos_emb="rotary",
            num_attention_heads=8,
            num_kv_heads=2,
            norm="rmsnorm",
            rms_norm_epsilon=1e-6,
            activation="swiglu",
            use_bias_in_norms=False,
            use_bias_in_attn_linear=False,
            use_bias_in_mlp=False,
            no_weight_tying=True,
            intermediate_size=96,
        ),
    ),
    # learned positions, sequential residual, tied embeddings, tanh GELU
    "gpt2": ("GPT2LMHeadModel", dict(pos_emb="learned", activation="gelu_tanh")),
}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe_tokenizer(TEXT, vocab_size=300, out_path=path, min_frequency=1)
    return path


def write_neox_checkpoint(
    save: Path, model_cfg: ModelConfig, tokenizer_file: Path, step: int = 3, seed: int = 0
) -> GPTModel:
    """What a training run leaves on disk, without DeepSpeed: latest -> global_stepN/{model states, config, tokenizer}."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
    cfg = NeoXConfig(
        model=model_cfg,
        tokenizer=TokenizerConfig(tokenizer_type="HFTokenizer", vocab_file=str(tokenizer_file)),
    )
    padded = -(-vocab // model_cfg.make_vocab_size_divisible_by) * model_cfg.make_vocab_size_divisible_by
    torch.manual_seed(seed)
    model = GPTModel(model_cfg, padded).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that every mapped tensor matters
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    tag_dir = save / f"global_step{step}"
    tag_dir.mkdir(parents=True)
    torch.save({"module": model.state_dict(), "iteration": step}, tag_dir / "mp_rank_00_model_states.pt")
    (tag_dir / "config.yml").write_text(dump_config(cfg))
    (tag_dir / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    (save / "latest").write_text(f"global_step{step}")
    return model


def ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(1))


def convert(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["convert", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_round_trip_through_transformers(
    arch: str, tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cls_name, extra = ARCHS[arch]
    model_cfg = ModelConfig(**{**BASE, **extra})
    ours = write_neox_checkpoint(tmp_path / "run", model_cfg, tokenizer_file)
    x = ids(300)

    hf_dir = tmp_path / "hf"
    code, out, err = convert(capsys, str(tmp_path / "run"), "--to", "hf", str(hf_dir))
    assert code == 0, err
    assert cls_name in out
    assert not list(tmp_path.glob("hf.tmp-*"))
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == [cls_name]
    assert config["vocab_size"] == 384  # 300 padded to a multiple of 128

    hf, info = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, output_loading_info=True)
    assert type(hf).__name__ == cls_name
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hf.eval()
    with torch.no_grad():
        expected = ours(x)
        assert (hf(x).logits - expected).abs().max().item() <= 1e-5

    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|padding|>"
    assert tok("The quick brown fox")["input_ids"] == ours_tokenizer_ids(
        tokenizer_file, "The quick brown fox"
    )

    back = tmp_path / "back"
    code, out, err = convert(capsys, str(hf_dir), "--from", "hf", str(back))
    assert code == 0, err
    model, tokenizer, cfg = load_for_inference(back)
    assert model.vocab_size == 384 and tokenizer.vocab_size == 300
    assert cfg.model.make_vocab_size_divisible_by == 128
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def ours_tokenizer_ids(path: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).encode(text).ids


def test_dtype_and_forced_arch(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open

    write_neox_checkpoint(tmp_path / "run", ModelConfig(**{**BASE, **ARCHS["gpt_neox"][1]}), tokenizer_file)
    code, out, err = convert(
        capsys, str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf"), "--dtype", "bf16"
    )
    assert code == 0, err
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    # A GPT-NeoX-style block has no shared LayerNorm: GPT-J cannot express it.
    code, out, err = convert(
        capsys, str(tmp_path / "run"), "--to", "hf", str(tmp_path / "j"), "--arch", "gptj"
    )
    assert code == 2 and "GPT-J cannot express" in err and "gpt_j_tied" in err
    assert not (tmp_path / "j").exists() and not list(tmp_path.glob("j.tmp-*"))


def test_tensor_parallel_checkpoint_exports_like_one_shard(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DeepSpeed's per-rank files of a model_parallel_size=2 run are merged before export."""
    import shutil

    from safetensors.torch import load_file

    from neoxcli.checkpoint.reshard import model_specs, split_shard

    model_cfg = ModelConfig(**{**BASE, **ARCHS["llama"][1]})  # GQA and a gated MLP: the uneven cuts
    model = write_neox_checkpoint(tmp_path / "one", model_cfg, tokenizer_file)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    tag = tmp_path / "two" / "global_step3"
    (tag / "mp_rank_00_model_states.pt").unlink()
    full = {n: {"w": p.detach()} for n, p in model.named_parameters()}
    for rank in range(2):
        shard = split_shard(full, full, model_specs(model_cfg), rank, 2, model_cfg.num_layers)
        module = {n: e["w"] for n, e in shard.items()}
        torch.save({"module": module, "iteration": 3}, tag / f"mp_rank_{rank:02d}_model_states.pt")
    for name in ("one", "two"):
        code, _out, err = convert(capsys, str(tmp_path / name), "--to", "hf", str(tmp_path / f"hf-{name}"))
        assert code == 0, err
    one, two = (load_file(str(tmp_path / f"hf-{n}" / "model.safetensors")) for n in ("one", "two"))
    assert set(one) == set(two) and all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (dict(pos_emb="alibi"), "pos_emb='alibi'"),
        (
            dict(
                pos_emb="rotary",
                gpt_j_residual=True,
                attention_config=[[["local", "global"], 1]],
                sliding_window_width=8,
            ),
            "local attention",
        ),
        (dict(pos_emb="rotary", use_mup=True, mup_width_scale=2.0), "muP"),
    ],
)
def test_refuses_what_the_target_cannot_express(
    extra: dict[str, Any],
    message: str,
    tmp_path: Path,
    tokenizer_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_neox_checkpoint(tmp_path / "run", ModelConfig(**{**BASE, **extra}), tokenizer_file)
    code, out, err = convert(capsys, str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf"))
    assert code == 2
    assert err.startswith("error:") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "hf").exists()


def test_output_must_be_new_and_flags_are_checked(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_neox_checkpoint(tmp_path / "run", ModelConfig(**{**BASE, **ARCHS["gpt2"][1]}), tokenizer_file)
    out_dir = tmp_path / "hf"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("x")
    code, _, err = convert(capsys, str(tmp_path / "run"), "--to", "hf", str(out_dir))
    assert code == 2 and "already exists" in err and (out_dir / "keep.txt").exists()
    code, _, err = convert(capsys, str(tmp_path / "run"), "--to", "hf", str(out_dir), "--overwrite")
    assert code == 0 and not (out_dir / "keep.txt").exists() and (out_dir / "model.safetensors").exists()
    code, _, err = convert(capsys, str(tmp_path / "run"), str(tmp_path / "x"))
    assert code == 2 and "exactly one of --to hf or --from hf" in err
    code, _, err = convert(capsys, str(tmp_path / "run"), "--to", "onnx", str(tmp_path / "x"))
    assert code == 2 and "unknown format" in err
    code, _, err = convert(capsys, str(tmp_path / "nowhere"), "--from", "hf", str(tmp_path / "x"))
    assert code == 2 and "config.json" in err


def test_push_to_hub_uploads_without_printing_the_token(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self: Any, **kwargs: Any) -> str:
        calls.append(("create_repo", {**kwargs, "token": self.token}))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self: Any, **kwargs: Any) -> None:
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        calls.append(("upload_folder", {**kwargs, "files": files}))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    write_neox_checkpoint(tmp_path / "run", ModelConfig(**{**BASE, **ARCHS["gpt2"][1]}), tokenizer_file)
    code, out, err = convert(
        capsys, str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf"), "--push-to-hub", "me/tiny"
    )
    assert code == 0, err
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1]["repo_id"] == "me/tiny"
    assert calls[1][1]["folder_path"] == str(tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        calls[1][1]["files"]
    )
    assert "https://huggingface.co/me/tiny" in out
    assert secret not in out + err

    def failing_upload(self: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"401 Unauthorized for token {secret}")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", failing_upload)
    code, out, err = convert(
        capsys, str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf2"), "--push-to-hub", "me/tiny"
    )
    assert code == 2 and "upload to the Hugging Face Hub" in err
    assert secret not in out + err


def test_damaged_inputs_are_one_error_line_and_write_nothing(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Broken config.json, missing or mis-shaped tensors and damaged weight files never convert."""
    import shutil

    from safetensors.torch import load_file, save_file

    write_neox_checkpoint(tmp_path / "run", ModelConfig(**{**BASE, **ARCHS["gpt_neox"][1]}), tokenizer_file)
    good = tmp_path / "hf"
    assert convert(capsys, str(tmp_path / "run"), "--to", "hf", str(good))[0] == 0
    weights = load_file(str(good / "model.safetensors"))
    dense = "gpt_neox.layers.0.attention.dense.weight"

    def variant(name: str, edit: Any) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        edit(path)
        return path

    def drop_tensor(p: Path) -> None:
        save_file({k: v for k, v in weights.items() if k != dense}, str(p / "model.safetensors"))

    def reshape_tensor(p: Path) -> None:
        save_file({**weights, dense: torch.zeros(3, 3)}, str(p / "model.safetensors"))

    def drop_key(p: Path) -> None:
        config = json.loads((p / "config.json").read_text())
        del config["num_attention_heads"]
        (p / "config.json").write_text(json.dumps(config))

    def to_bin(p: Path, data: bytes) -> None:
        (p / "model.safetensors").unlink()
        (p / "pytorch_model.bin").write_bytes(data)

    cases = {
        "not-json": (lambda p: (p / "config.json").write_text("{nope"), "not valid JSON"),
        "json-list": (lambda p: (p / "config.json").write_text("[1]"), "JSON object"),
        "no-key": (drop_key, "'num_attention_heads'"),
        "no-tensor": (drop_tensor, "missing tensor"),
        "bad-shape": (reshape_tensor, "has shape [3, 3]"),
        "bad-safetensors": (lambda p: (p / "model.safetensors").write_bytes(b"x" * 64), "damaged"),
        "bad-bin": (lambda p: to_bin(p, b"junk"), "damaged"),
    }
    for name, (edit, message) in cases.items():
        out = tmp_path / f"out-{name}"
        code, _, err = convert(capsys, str(variant(name, edit)), "--from", "hf", str(out))
        assert code == 2 and err.startswith("error:") and message in err, (name, err)
        assert "Traceback" not in err and not out.exists(), name
    assert not list(tmp_path.glob("out-*"))

    # A damaged checkpoint file, and weights that do not fit their config.yml, for --to hf and generate.
    states = tmp_path / "run" / "global_step3" / "mp_rank_00_model_states.pt"
    blob = torch.load(states, weights_only=False)
    blob["module"].pop("layers.1.attention.dense.weight")
    torch.save(blob, states)
    for args in (
        ["convert", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "x")],
        ["generate", "-c", str(tmp_path / "run")],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "missing tensor 'layers.1.attention.dense.weight'" in err and "Traceback" not in err
    states.write_bytes(states.read_bytes()[:500])
    for args in (
        ["convert", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "x")],
        ["generate", "-c", str(tmp_path / "run")],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "cannot read" in err and "mp_rank_00_model_states.pt" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_output_replaces_a_file_and_is_not_private(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--overwrite of a plain file leaves no `.old-PID` behind; the directory follows the umask."""
    import os
    import stat

    write_neox_checkpoint(tmp_path / "run", ModelConfig(**{**BASE, **ARCHS["gpt2"][1]}), tokenizer_file)
    (tmp_path / "hf").write_text("a file")
    code, _, err = convert(capsys, str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf"), "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
    umask = os.umask(0o022)
    try:
        code, _, err = convert(capsys, str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf2"))
    finally:
        os.umask(umask)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "hf2").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "hf2" / "model.safetensors").stat().st_mode) == 0o644
    (tmp_path / "plain").write_text("x")
    code, _, err = convert(capsys, str(tmp_path / "run"), "--to", "hf", str(tmp_path / "plain" / "out"))
    assert code == 2 and "plain is a file" in err and "Traceback" not in err


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_generate_reads_a_hugging_face_directory_in_memory(
    arch: str, tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`neox generate -c HF_DIR` samples what the neox checkpoint it came from samples, writing no copy."""
    model_cfg = ModelConfig(**{**BASE, **ARCHS[arch][1]})
    write_neox_checkpoint(tmp_path / "run", model_cfg, tokenizer_file)
    hf_dir = tmp_path / "hf"
    assert convert(capsys, str(tmp_path / "run"), "--to", "hf", str(hf_dir))[0] == 0
    before = sorted(p.name for p in hf_dir.iterdir())
    texts = []
    for source in (tmp_path / "run", hf_dir):
        argv = ["generate", "-c", str(source), "-p", "The quick", "--greedy", "--max-new-tokens", "8"]
        assert main(argv) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("The quick")
    assert sorted(p.name for p in hf_dir.iterdir()) == before

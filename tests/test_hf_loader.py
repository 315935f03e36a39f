"""``--model hf:<path>``: a tiny CLIP saved with ``save_pretrained`` runs through the CLI.

The checkpoint is built here from config classes (randomly initialised; no hub access), with
a word-level tokenizer over the world's words saved beside it, as a real checkpoint ships its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.errors import BenchError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
WORDS = ("a an the red green blue yellow purple orange circle square triangle cross at top bottom left right "
         "centre center middle of on in glyph from is photo").split()


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-clip")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                      special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                            eos_token="[EOS]").save_pretrained(out)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5],
                                                              "image_std": [0.25, 0.25, 0.25]}))
    return out


def test_hf_clip_loads_with_its_tokenizer_and_sites(tiny_clip_dir):
    from models.hf_loader import family_of, load_hf

    name = f"hf:{tiny_clip_dir}"
    assert family_of(name) == "contrastive"
    m = load_hf(name)
    assert m.family == "contrastive" and m.image_size == 32 and len(m.weights_hash) == 64
    ids, mask = m.tokenize(["a red circle", "a blue square at the top"])
    assert ids[0, 0] == 2 and ids[0, 4] == 3 and mask[0].sum() == 5 and mask[1].sum() == 8
    with torch.no_grad(), m.trace(read=["vision.blocks.1.mlp", "text.blocks.0.attn"]) as t:
        sims = m.similarity(torch.rand(3, 3, 32, 32), ["a red circle", "a blue square"])
    assert sims.shape == (3, 2) and t["vision.blocks.1.mlp"].shape == (3, 17, 32)


def test_malformed_checkpoints_get_one_line_errors(tmp_path):
    from models.hf_loader import family_of, load_hf

    with pytest.raises(BenchError, match="is not a folder"):
        load_hf(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(BenchError, match="has no config.json"):
        family_of(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BenchError, match="config.json is not valid JSON"):
        load_hf(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BenchError, match="'bert' is not supported yet"):
        family_of(f"hf:{tmp_path}")


def test_cli_evaluates_a_saved_clip_on_attribution(tiny_clip_dir, tmp_path):
    store = tmp_path / "r.sqlite"
    cp = subprocess.run([sys.executable, "-m", "bench", "evaluate", "--model", f"hf:{tiny_clip_dir}", "--task",
                         "attribution", "--method", "saliency", "--quick", "--store", str(store), "--jobs", "1",
                         "--no-progress"], capture_output=True, text=True, timeout=300, env=ENV)
    assert cp.returncode == 0, cp.stderr
    assert "3 cells ran" in cp.stderr and "0 failed" in cp.stderr
    assert f"attribution v" in cp.stdout and "saliency" in cp.stdout

"""Parity: reading each site returns what the underlying computation produces."""

import pytest
import torch

from bench.errors import UnknownName
from bench.sites import replace_rows, zero_ablate


def _inputs(model):
    torch.manual_seed(1)
    return torch.rand(3, 3, 32, 32), ["a red circle", "a blue square and a green cross", "a glyph"]


def _block_reference(tower, layers, hs, att):
    """Per-block site values of a CLIP-style encoder (pre-norm attention and MLP), recomputed from
    the hidden states and attention maps the model reports and its weights."""
    ref = {f"{tower}.embed": hs[0]}
    for i, layer in enumerate(layers):
        pre, post = hs[i], hs[i + 1]
        a = layer.self_attn
        v = a.v_proj(layer.layer_norm1(pre)).unflatten(-1, (a.num_heads, a.head_dim))  # [B, P, H, dh]
        z = torch.einsum("bhqk,bkhd->bqhd", att[i], v)
        attn_out = a.out_proj(z.flatten(-2))
        mid = pre + attn_out
        neurons = layer.mlp.activation_fn(layer.mlp.fc1(layer.layer_norm2(mid)))
        n = f"{tower}.blocks.{i}"
        ref.update({f"{n}.resid_post": post, f"{n}.attn": attn_out, f"{n}.attn.pattern": att[i],
                    f"{n}.mlp": post - mid, f"{n}.mlp.neurons": neurons})
        for h in range(a.num_heads):
            ref[f"{n}.attn.head.{h}"] = z[:, :, h]
        assert torch.allclose(layer.mlp.fc2(neurons), post - mid, atol=1e-5)
    return ref


def _reference(model, tower, pixels, texts):
    """Independent per-site values from the model's own outputs and weights."""
    clip = model.clip
    if tower == "vision":
        sub = clip.vision_model
        out = sub(pixel_values=(pixels - 0.5) / 0.25, output_hidden_states=True, output_attentions=True)
    else:
        sub = clip.text_model
        ids, am = model.tokenize(texts)
        out = sub(input_ids=ids, attention_mask=am, output_hidden_states=True, output_attentions=True)
    ref = _block_reference(tower, sub.encoder.layers, out.hidden_states, out.attentions)
    final = out.pooler_output
    ref[f"{tower}.final"] = sub.post_layernorm(out.hidden_states[-1]) if tower == "vision" else out.last_hidden_state
    proj_in = final
    ref[f"{tower}.proj"] = (clip.visual_projection if tower == "vision" else clip.text_projection)(proj_in)
    return ref


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_every_site_reads_what_the_module_computes(tiny_clip, tower):
    pixels, texts = _inputs(tiny_clip)
    names = [s.name for s in tiny_clip.sites(tower=tower)]
    with torch.no_grad():
        ref = _reference(tiny_clip, tower, pixels, texts)
        with tiny_clip.trace(read=names) as t:
            tiny_clip.encode_image(pixels) if tower == "vision" else tiny_clip.encode_text(texts)
    assert set(ref) == set(names), "parity reference must cover every declared site"
    for name in names:
        got, want = t[name], ref[name]
        if name.endswith(".final") and tower == "vision":  # post_layernorm acts on the pooled CLS token
            want = tiny_clip.clip.vision_model.post_layernorm(ref["vision.blocks.1.resid_post"][:, 0])
        assert got.shape == want.shape, name
        assert torch.allclose(got, want, atol=1e-5), name


def test_site_metadata(tiny_clip):
    s = tiny_clip.site("vision.blocks.1.attn.head.3")
    assert (s.tower, s.layer, s.kind, s.head, s.stream) == ("vision", 1, "head", 3, "image")
    assert tiny_clip.site("text.blocks.0.mlp").stream == "text"
    layout = tiny_clip.token_layout()
    assert layout.cls == 0 and layout.image == slice(1, 65) and layout.grid == (8, 8)
    with pytest.raises(UnknownName, match="did you mean"):
        tiny_clip.site("vision.blocks.1.mlpp")


def _hooks(model):
    # transformers installs its own persistent output-capturing hooks; count ours relative to a baseline
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.module.modules())


def test_hooks_always_removed(tiny_clip):
    pixels, _ = _inputs(tiny_clip)
    base = _hooks(tiny_clip)
    with tiny_clip.trace(read=["vision.blocks.0.mlp"], write={"vision.blocks.1.attn.head.0": zero_ablate()}):
        assert _hooks(tiny_clip) == base + 2
        tiny_clip.encode_image(pixels)
    assert _hooks(tiny_clip) == base
    with pytest.raises(RuntimeError):
        with tiny_clip.trace(read=["vision.blocks.0.mlp"]):
            raise RuntimeError("boom")
    assert _hooks(tiny_clip) == base
    with tiny_clip.trace() as t:  # an empty trace registers nothing
        assert _hooks(tiny_clip) == base
    assert t.values == {}


def test_write_changes_output_as_intended(tiny_clip):
    pixels, _ = _inputs(tiny_clip)
    last = "vision.blocks.1"
    with torch.no_grad():
        with tiny_clip.trace(read=[f"{last}.resid_post", f"{last}.mlp"]) as clean:
            tiny_clip.encode_image(pixels)
        with tiny_clip.trace(read=[f"{last}.resid_post"], write={f"{last}.mlp": zero_ablate()}) as abl:
            tiny_clip.encode_image(pixels)
    # removing the MLP's contribution shifts the residual stream by exactly that contribution
    assert torch.allclose(abl[f"{last}.resid_post"], clean[f"{last}.resid_post"] - clean[f"{last}.mlp"], atol=1e-5)


def test_head_write_touches_only_that_head(tiny_clip):
    pixels, _ = _inputs(tiny_clip)
    heads = [f"vision.blocks.0.attn.head.{h}" for h in range(4)]
    with torch.no_grad():
        with tiny_clip.trace(read=heads) as clean:
            tiny_clip.encode_image(pixels)
        with tiny_clip.trace(read=heads, write={heads[2]: zero_ablate()}) as abl:
            tiny_clip.encode_image(pixels)
    for h, name in enumerate(heads):
        if h == 2:
            assert torch.count_nonzero(abl[name]) == 0
        else:
            assert torch.equal(abl[name], clean[name])


def test_batched_writes_match_single_runs(tiny_clip):
    """One pass where row k is patched at site k equals k separate patched passes."""
    pixels, _ = _inputs(tiny_clip)
    src, dst = pixels[:1], pixels[1:2]
    sites = ["vision.blocks.0.mlp", "vision.blocks.1.attn", "vision.blocks.0.attn.head.1"]
    with torch.no_grad():
        with tiny_clip.trace(read=sites) as s:
            tiny_clip.encode_image(src)
        batch = dst.expand(len(sites), -1, -1, -1)
        edits = {site: replace_rows(torch.tensor([k]), s[site]) for k, site in enumerate(sites)}
        with tiny_clip.trace(write=edits):
            batched = tiny_clip.encode_image(batch)
        for k, site in enumerate(sites):
            with tiny_clip.trace(write={site: replace_rows(torch.tensor([0]), s[site])}):
                single = tiny_clip.encode_image(dst)
            assert torch.allclose(batched[k], single[0], atol=1e-6), site


def test_stop_after_reads_skips_the_rest(tiny_clip):
    pixels, _ = _inputs(tiny_clip)
    base = _hooks(tiny_clip)
    calls = []
    h = tiny_clip.clip.visual_projection.register_forward_hook(lambda *a: calls.append(1))
    try:
        with tiny_clip.trace(read=["vision.blocks.0.resid_post"], stop_after_reads=True) as t:
            tiny_clip.encode_image(pixels)
        assert t["vision.blocks.0.resid_post"].shape == (3, 65, 64)
        assert calls == []
        tiny_clip.encode_image(pixels)
        assert calls == [1]
    finally:
        h.remove()
    assert _hooks(tiny_clip) == base


def test_unknown_site_in_trace(tiny_clip):
    with pytest.raises(UnknownName, match="did you mean"):
        tiny_clip.trace(read=["vision.blocks.0.mlp.neuron"])


# ----------------------------------------------------------------------------- SigLIP
@pytest.fixture(scope="module")
def tiny_siglip(world):
    """A randomly initialised SigLIP from its config classes (no hub), behind SiglipWrapper."""
    from transformers import SiglipConfig, SiglipModel

    from bench.kit.world import Vocab
    from models.hf_clip import SiglipWrapper

    vocab = Vocab.for_world(world)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    cfg = SiglipConfig(text_config=dict(**tower, vocab_size=len(vocab), max_position_embeddings=16),
                       vision_config=dict(**tower, image_size=32, patch_size=8))
    return SiglipWrapper("tiny-siglip", SiglipModel(cfg), lambda t: vocab.batch(t, 16), "tiny", 0.5, 0.25)


def _siglip_reference(model, tower, pixels, texts):
    """Per-site values of a SigLIP from its own outputs and weights (no class token, no pre-norm;
    ``proj`` is the pooling head)."""
    m = model.clip
    if tower == "vision":
        sub = m.vision_model
        out = sub(pixel_values=(pixels - 0.5) / 0.25, output_hidden_states=True, output_attentions=True)
    else:
        sub = m.text_model
        out = sub(input_ids=model.tokenize(texts)[0], output_hidden_states=True, output_attentions=True)
    ref = _block_reference(tower, sub.encoder.layers, out.hidden_states, out.attentions)
    ref[f"{tower}.final"] = out.last_hidden_state
    ref[f"{tower}.proj"] = out.pooler_output
    return ref


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_every_siglip_site_reads_what_the_module_computes(tiny_siglip, tower):
    pixels, texts = _inputs(tiny_siglip)
    names = [s.name for s in tiny_siglip.sites(tower=tower)]
    with torch.no_grad():
        ref = _siglip_reference(tiny_siglip, tower, pixels, texts)
        with tiny_siglip.trace(read=names) as t:
            tiny_siglip.encode_image(pixels) if tower == "vision" else tiny_siglip.encode_text(texts)
    assert set(ref) == set(names), "parity reference must cover every declared site"
    for name in names:
        assert t[name].shape == ref[name].shape, name
        assert torch.allclose(t[name], ref[name], atol=1e-5), name


def test_siglip_layout_similarity_and_writes(tiny_siglip):
    layout = tiny_siglip.token_layout()
    assert layout.cls is None and layout.image == slice(0, 16) and layout.grid == (4, 4)
    pixels, texts = _inputs(tiny_siglip)
    m = tiny_siglip.clip
    with torch.no_grad():
        want = m(input_ids=tiny_siglip.tokenize(texts)[0], pixel_values=(pixels - 0.5) / 0.25).logits_per_image
        assert torch.allclose(tiny_siglip.similarity(pixels, texts), want, atol=1e-5)  # sigmoid logits, with bias
        with tiny_siglip.trace(read=["vision.blocks.1.resid_post", "vision.blocks.1.mlp"]) as clean:
            base = tiny_siglip.encode_image(pixels)
        with tiny_siglip.trace(read=["vision.blocks.1.resid_post"], write={"vision.blocks.1.mlp": zero_ablate()}) as abl:
            ablated = tiny_siglip.encode_image(pixels)
    assert torch.allclose(abl["vision.blocks.1.resid_post"],
                          clean["vision.blocks.1.resid_post"] - clean["vision.blocks.1.mlp"], atol=1e-5)
    assert not torch.allclose(base, ablated)


def _ramp(v: torch.Tensor) -> torch.Tensor:
    """A perturbation no norm layer undoes (a constant shift is removed by LayerNorm's centring)."""
    return v + torch.linspace(-1.0, 1.0, v.shape[-1])


@pytest.mark.parametrize("which", ["tiny_clip", "tiny_siglip"])
def test_every_writable_contrastive_site_acts_on_the_embedding(which, request):
    """Writing each site is bit-identical under the identity and moves the tower's embedding
    otherwise (the patterns are read-only: transformers returns them after use)."""
    model = request.getfixturevalue(which)
    pixels, texts = _inputs(model)
    with torch.no_grad():
        base = {"vision": model.encode_image(pixels), "text": model.encode_text(texts)}
        for site in model.sites():
            if model.site_specs[site.name].read_only:
                continue
            run = (lambda: model.encode_image(pixels)) if site.tower == "vision" else (lambda: model.encode_text(texts))
            with model.trace(write={site.name: lambda v: v}):
                assert torch.equal(run(), base[site.tower]), site.name
            with model.trace(write={site.name: _ramp}):
                assert not torch.allclose(run(), base[site.tower]), site.name


def test_a_nested_trace_sees_the_outer_traces_edit(tiny_clip):
    """Hooks of a trace opened inside another run after the outer ones (and before any other
    hook on the module), so an inner read observes the outer write."""
    pixels, _ = _inputs(tiny_clip)
    with torch.no_grad():
        with tiny_clip.trace(write={"vision.blocks.0.mlp": zero_ablate()}):
            with tiny_clip.trace(read=["vision.blocks.0.mlp"]) as inner:
                tiny_clip.encode_image(pixels)
    assert torch.count_nonzero(inner["vision.blocks.0.mlp"]) == 0

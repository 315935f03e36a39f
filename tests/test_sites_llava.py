"""Parity for every site of the LLaVA wrapper, on a tiny randomly initialised LLaVA."""

import pytest
import torch

from bench.sites import zero_ablate
from models.hf_llava import LlavaWrapper
from models.zoo.vlm import CAPTION_PROMPT


@pytest.fixture(scope="module")
def tiny_llava(make_tiny_llava):
    return make_tiny_llava()


def _reference(m: LlavaWrapper, pixels, prompts):
    ids, mask, _ = m.encode(prompts, None)
    llava = m.llava
    x = m.preprocess(pixels)
    v = llava.model.vision_tower(pixel_values=x, output_hidden_states=True, output_attentions=True)
    ref = {"vision.embed": v.hidden_states[0]}
    feats = v.hidden_states[llava.config.vision_feature_layer][:, 1:]
    ref["projector"] = llava.model.multi_modal_projector(feats)
    out = llava(input_ids=ids, attention_mask=mask, pixel_values=x, output_hidden_states=True,
                output_attentions=True)
    for tower, hs, att, layers in (("vision", v.hidden_states, v.attentions, llava.model.vision_tower.encoder.layers),
                                   ("lm", out.hidden_states, out.attentions, llava.model.language_model.layers)):
        if tower == "lm":
            ref["lm.embed"] = hs[0]
        for i, layer in enumerate(layers):
            pre, post = hs[i], hs[i + 1]
            a = layer.self_attn
            if tower == "lm":
                normed, o_proj = layer.input_layernorm(pre), a.o_proj
                n_heads = llava.config.text_config.num_attention_heads
            else:
                normed, o_proj = layer.layer_norm1(pre), a.out_proj
                n_heads = llava.config.vision_config.num_attention_heads
            val = a.v_proj(normed).unflatten(-1, (n_heads, -1))
            z = torch.einsum("bhqk,bkhd->bqhd", att[i], val)
            attn_out = o_proj(z.flatten(-2))
            mid = pre + attn_out
            if tower == "lm":
                h2 = layer.post_attention_layernorm(mid)
                neurons = layer.mlp.act_fn(layer.mlp.gate_proj(h2)) * layer.mlp.up_proj(h2)
                mlp = layer.mlp.down_proj(neurons)
            else:
                neurons = layer.mlp.activation_fn(layer.mlp.fc1(layer.layer_norm2(mid)))
                mlp = layer.mlp.fc2(neurons)
            if tower == "lm" and i == len(layers) - 1:
                # transformers reports the last LM hidden state after the final norm
                assert torch.allclose(llava.model.language_model.norm(mid + mlp), post, atol=1e-5)
                post = mid + mlp
            assert torch.allclose(mid + mlp, post, atol=1e-5)
            n = f"{tower}.blocks.{i}"
            ref.update({f"{n}.resid_post": post, f"{n}.attn": attn_out, f"{n}.attn.pattern": att[i],
                        f"{n}.mlp": mlp, f"{n}.mlp.neurons": neurons})
            for h in range(n_heads):
                ref[f"{n}.attn.head.{h}"] = z[:, :, h]
    # the last hidden state transformers reports is already normed
    ref["lm.final"] = out.hidden_states[-1]
    return ref, out


def test_every_llava_site_reads_what_the_module_computes(tiny_llava):
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 32, 32)
    prompts = ["what colour is the circle?", "what colour is the cross?"]
    names = [s.name for s in tiny_llava.sites()]
    with torch.no_grad():
        ref, out = _reference(tiny_llava, pixels, prompts)
        with tiny_llava.trace(read=names) as t:
            ids, mask, _ = tiny_llava.encode(prompts, None)
            tiny_llava.llava(input_ids=ids, attention_mask=mask, pixel_values=tiny_llava.preprocess(pixels))
    assert set(ref) == set(names)
    for name in names:
        got, want = t[name], ref[name]
        assert got.shape == want.shape, name
        assert torch.allclose(got, want, atol=1e-5), name
    assert torch.allclose(tiny_llava.unembed(t["lm.blocks.1.resid_post"]), out.logits, atol=1e-4)


def test_image_positions_and_family_ops(tiny_llava):
    mask = tiny_llava.image_positions([CAPTION_PROMPT])
    assert mask.shape[0] == 1 and int(mask.sum()) == tiny_llava.llava.config.image_seq_length
    assert mask[0, 1] and not mask[0, 0]
    pixels = torch.rand(2, 3, 32, 32)
    gen = tiny_llava.generate(pixels, [CAPTION_PROMPT] * 2, max_new_tokens=3)
    assert len(gen) == 2 and all(isinstance(g, str) for g in gen)
    lp = tiny_llava.logprobs(pixels, ["is there a red circle?"] * 2, ["yes", "no"])
    assert lp.shape == (2,) and (lp < 0).all()
    assert tiny_llava.site("lm.blocks.0.mlp").stream == "mixed"


def test_encode_spans_marks_exactly_the_span(tiny_llava):
    enc = tiny_llava.encode_spans(["describe the image", "is there a red circle?"],
                                  ["a blue square and a", ""], ["red circle", "yes"])
    vocab_words = tiny_llava.decode
    spans = [vocab_words(enc.ids_BL[i][enc.span_BL[i]].tolist()) for i in range(2)]
    assert spans == ["red circle", "yes"]
    assert int(enc.image_BL[0].sum()) == tiny_llava.llava.config.image_seq_length
    logits = tiny_llava.forward_tokens(torch.rand(2, 3, 32, 32), enc.ids_BL, enc.mask_BL)
    assert logits.shape[:2] == enc.ids_BL.shape


def test_generate_batches_prompts_of_different_lengths(tiny_llava):
    pixels = torch.rand(3, 3, 32, 32)
    prompts = ["describe the image", "is there a red circle?", "describe the image"]
    together = tiny_llava.generate(pixels, prompts, max_new_tokens=3)
    alone = [tiny_llava.generate(pixels[i : i + 1], prompts[i : i + 1], max_new_tokens=3)[0] for i in range(3)]
    assert together == alone


def _ramp(v: torch.Tensor) -> torch.Tensor:
    """A perturbation no norm layer undoes (a constant shift is removed by LayerNorm's centring)."""
    return v + torch.linspace(-1.0, 1.0, v.shape[-1])


def test_every_writable_llava_site_acts_on_the_output(tiny_llava):
    """Writing each site is a no-op when the edit is the identity (bit for bit) and moves the
    logits when it is not; except the vision tower's last block, which LLaVA's features skip
    (``vision_feature_layer=-2``): writing it must change nothing."""
    m = tiny_llava
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32)
    ids, mask, _ = m.encode(["describe the image", "is there a red circle?"], None)
    skipped_block = m.llava.config.vision_config.num_hidden_layers - 1
    with torch.no_grad():
        base = m.forward_tokens(pixels, ids, mask)
        for site in m.sites():
            if m.site_specs[site.name].read_only:
                continue
            with m.trace(write={site.name: lambda v: v}):
                same = m.forward_tokens(pixels, ids, mask)
            assert torch.equal(same, base), site.name
            with m.trace(write={site.name: _ramp}):
                moved = m.forward_tokens(pixels, ids, mask)
            unused = site.tower == "vision" and site.layer == skipped_block
            assert torch.equal(moved, base) if unused else not torch.allclose(moved, base), site.name


def test_llava_mlp_and_head_writes_do_exactly_what_they_say(tiny_llava):
    m = tiny_llava
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32)
    ids, mask, _ = m.encode(["describe the image", "is there a red circle?"], None)
    heads = [f"lm.blocks.0.attn.head.{h}" for h in range(4)]
    with torch.no_grad():
        with m.trace(read=["lm.blocks.1.resid_post", "lm.blocks.1.mlp", *heads]) as clean:
            m.forward_tokens(pixels, ids, mask)
        with m.trace(read=["lm.blocks.1.resid_post"], write={"lm.blocks.1.mlp": zero_ablate()}) as no_mlp:
            m.forward_tokens(pixels, ids, mask)
        with m.trace(read=heads, write={heads[2]: zero_ablate()}) as abl:
            m.forward_tokens(pixels, ids, mask)
    # removing the MLP's output shifts the residual stream by exactly that output
    assert torch.allclose(no_mlp["lm.blocks.1.resid_post"],
                          clean["lm.blocks.1.resid_post"] - clean["lm.blocks.1.mlp"], atol=1e-5)
    for h, name in enumerate(heads):
        assert torch.count_nonzero(abl[name]) == 0 if h == 2 else torch.equal(abl[name], clean[name])

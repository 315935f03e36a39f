"""Parity for every site of the diffusion wrapper, and its family operations, on tiny
randomly initialised diffusers UNets + CLIP text encoders (no hub).

Two tiny models: ``zoo`` is zoo-diffusion's own architecture code (pixel space, v-prediction,
DDIM, prompt mask) built through :mod:`models.zoo.diffusion`; ``sd`` is Stable-Diffusion
shaped (an ``AutoencoderKL``, latent space, epsilon prediction, no prompt mask, linear
projections and two transformer blocks per spatial transformer).
"""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from bench.errors import BenchError, UnknownName
from bench.model import DiffusionModel, PromptEncoding
from bench.sites import zero_ablate
from bench.kit.world import Vocab
from models.hf_diffusion import DiffusionWrapper, SamplingConfig
from models.zoo_models import wrap_zoo_diffusion

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=12, eos_token_id=3, pad_token_id=0, bos_token_id=1)
PROMPTS = ["a red circle", "a blue square at the top left"]


@pytest.fixture(scope="module")
def vocab(world):
    return Vocab.for_world(world)


@pytest.fixture(scope="module")
def zoo_pair(vocab):
    """(wrapper, an untouched deep copy of the ZooDiffusion it wraps)."""
    from models.zoo.diffusion import DiffusionConfig, ZooDiffusion, build_text_encoder, build_unet

    cfg = replace(DiffusionConfig(), block_out_channels=(16, 32), image_size=16, attention_heads=2, max_text_len=12)
    torch.manual_seed(0)
    text = build_text_encoder({**TEXT, "vocab_size": len(vocab)})
    zoo = ZooDiffusion(build_unet(cfg, TEXT["hidden_size"]), text, vocab, cfg)
    ref = copy.deepcopy(zoo)
    return wrap_zoo_diffusion(zoo, "tiny-zoo-diffusion", "tiny"), ref


@pytest.fixture(scope="module")
def tiny_zoo(zoo_pair):
    return zoo_pair[0]


@pytest.fixture(scope="module")
def tiny_sd(vocab):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2, transformer_layers_per_block=2,
        use_linear_projection=True)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(**TEXT, vocab_size=len(vocab)))
    sched = DDIMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)
    return DiffusionWrapper("tiny-sd", unet, text, lambda p: vocab.batch(p, 12), sched, "tiny-sd", vae=vae,
                            sampling=SamplingConfig(steps=3, guidance=2.0, mask_padding=False))


# ------------------------------------------------------------------ independent reference
def _attention(attn, x_BQC, ctx_BKC, bias_BK):
    """Attention recomputed from the weights: softmax(q·kᵀ/√d + bias)·v, then ``to_out``."""
    q, k, v = (F.linear(a, lin.weight, lin.bias) for a, lin in ((x_BQC, attn.to_q), (ctx_BKC, attn.to_k),
                                                                (ctx_BKC, attn.to_v)))
    qh, kh, vh = (a.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for a in (q, k, v))  # [B, H, n, d]
    scores = qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5
    if bias_BK is not None:
        scores = scores + bias_BK[:, None, None, :]
    probs = scores.softmax(-1)
    z = (probs @ vh).transpose(1, 2).flatten(-2)
    return F.linear(z, attn.to_out[0].weight, attn.to_out[0].bias), probs, k, v


def _transformer(tr, h, ctx, bias, ref, name):
    B, C, H, W = h.shape
    x = tr.norm(h)
    if tr.use_linear_projection:
        x = tr.proj_in(x.permute(0, 2, 3, 1).reshape(B, H * W, C))
    else:
        x = tr.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(B, H * W, -1)
    blocks = tr.transformer_blocks
    for k, tb in enumerate(blocks):
        n = name + (f".block.{k}" if len(blocks) > 1 else "")
        n1 = tb.norm1(x)
        a, p, _, _ = _attention(tb.attn1, n1, n1, None)
        x = x + a
        c, pc, kk, vv = _attention(tb.attn2, tb.norm2(x), ctx, bias)
        x = x + c
        f = tb.ff(tb.norm3(x))
        x = x + f
        ref.update({f"{n}.self": a, f"{n}.self.pattern": p, f"{n}.cross": c, f"{n}.cross.pattern": pc,
                    f"{n}.cross.k": kk, f"{n}.cross.v": vv, f"{n}.ff": f})
    if tr.use_linear_projection:
        x = tr.proj_out(x).reshape(B, H, W, -1).permute(0, 3, 1, 2)
    else:
        x = tr.proj_out(x.reshape(B, H, W, -1).permute(0, 3, 1, 2))
    ref[name] = x + h
    return ref[name]


def _unet_reference(unet, x, t_B, ctx, mask):
    """The UNet's forward pass recomposed by hand, attention recomputed from weights."""
    bias = None if mask is None else (1 - mask.float()) * -10000.0
    ref = {}
    emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=t_B))
    ref["unet.time_embed"] = emb
    h = unet.conv_in(x)
    skips = [h]
    for i, blk in enumerate(unet.down_blocks):
        for j, rn in enumerate(blk.resnets):
            h = ref[f"unet.down.{i}.resnet.{j}"] = rn(h, emb)
            if getattr(blk, "attentions", None):
                h = _transformer(blk.attentions[j], h, ctx, bias, ref, f"unet.down.{i}.attn.{j}")
            skips.append(h)
        if blk.downsamplers:
            h = blk.downsamplers[0](h)
            skips.append(h)
        ref[f"unet.down.{i}"] = h
    mid = unet.mid_block
    h = ref["unet.mid.resnet.0"] = mid.resnets[0](h, emb)
    for j, tr in enumerate(mid.attentions):
        h = _transformer(tr, h, ctx, bias, ref, f"unet.mid.attn.{j}")
        h = ref[f"unet.mid.resnet.{j + 1}"] = mid.resnets[j + 1](h, emb)
    ref["unet.mid"] = h
    for i, blk in enumerate(unet.up_blocks):
        for j, rn in enumerate(blk.resnets):
            h = ref[f"unet.up.{i}.resnet.{j}"] = rn(torch.cat([h, skips.pop()], dim=1), emb)
            if getattr(blk, "attentions", None):
                h = _transformer(blk.attentions[j], h, ctx, bias, ref, f"unet.up.{i}.attn.{j}")
        if blk.upsamplers:
            h = blk.upsamplers[0](h)
        ref[f"unet.up.{i}"] = h
    return ref, unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def _text_reference(m: DiffusionWrapper, prompts):
    ids, am = m.tokenize(prompts)
    out = m.text_encoder(input_ids=ids, attention_mask=am if m.sampling.mask_padding else None,
                         output_hidden_states=True, output_attentions=True)
    hs, att = out.hidden_states, out.attentions
    ref = {"text.embed": hs[0], "text.final": out.last_hidden_state}
    for i, layer in enumerate(m.text_encoder.encoder.layers):
        a = layer.self_attn
        v = a.v_proj(layer.layer_norm1(hs[i])).unflatten(-1, (a.num_heads, a.head_dim))
        z = torch.einsum("bhqk,bkhd->bqhd", att[i], v)
        attn_out = a.out_proj(z.flatten(-2))
        mid = hs[i] + attn_out
        neurons = layer.mlp.activation_fn(layer.mlp.fc1(layer.layer_norm2(mid)))
        n = f"text.blocks.{i}"
        ref.update({f"{n}.resid_post": hs[i + 1], f"{n}.attn": attn_out, f"{n}.attn.pattern": att[i],
                    f"{n}.mlp": layer.mlp.fc2(neurons), f"{n}.mlp.neurons": neurons})
        for h in range(a.num_heads):
            ref[f"{n}.attn.head.{h}"] = z[:, :, h]
        assert torch.allclose(mid + ref[f"{n}.mlp"], hs[i + 1], atol=1e-5)
    return ref, out.last_hidden_state


def _noisy(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(PROMPTS), *m.sample_shape, generator=g), torch.tensor([700, 30])


@pytest.mark.parametrize("which", ["tiny_zoo", "tiny_sd"])
def test_every_site_reads_what_the_module_computes(which, request):
    m = request.getfixturevalue(which)
    x, t = _noisy(m)
    names = [s.name for s in m.sites()]
    with torch.no_grad():
        ref, hidden = _text_reference(m, PROMPTS)
        mask = m.tokenize(PROMPTS)[1] if m.sampling.mask_padding else None
        uref, out = _unet_reference(m.unet, x, t, hidden, mask)
        ref.update(uref)
        with m.trace(read=names) as tr:
            pred = m.noise_pred(x, t, PROMPTS)
    assert set(ref) == set(names), "the reference must cover every declared site"
    assert torch.allclose(out, pred, atol=1e-5), "the hand-composed UNet must match the UNet"
    for name in names:
        got, want = tr[name], ref[name]
        assert got.shape == want.shape, name
        assert torch.allclose(got, want, atol=1e-5), name
        if m.site(name).kind in ("attn", "pattern", "cross_attn", "cross_pattern") and m.site(name).tower == "unet":
            h, w = m.attention_grid(name)
            assert got.shape[-2 if "pattern" in name else 1] == h * w, name
    # the maps are distributions over the prompt's tokens; padding gets none where masked
    p = tr[m.layer_sites("unet", "cross_pattern")[0]]
    assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
    if mask is not None:
        assert float(p.transpose(1, 3)[~mask.bool()].abs().max()) < 1e-6


def test_site_names_layers_and_grids(tiny_zoo, tiny_sd):
    names = [s.name for s in tiny_zoo.sites(tower="unet")]
    assert names[:3] == ["unet.time_embed", "unet.down.0.resnet.0", "unet.down.0"]
    assert tiny_zoo.layer_sites("unet", "cross_attn") == [
        "unet.down.1.attn.0.cross", "unet.mid.attn.0.cross", "unet.up.0.attn.0.cross", "unet.up.0.attn.1.cross"]
    assert tiny_zoo.layer_sites("unet", "block") == ["unet.down.0", "unet.down.1", "unet.mid", "unet.up.0", "unet.up.1"]
    assert tiny_zoo.layer_sites("text", "mlp") == ["text.blocks.0.mlp", "text.blocks.1.mlp"]
    s = tiny_zoo.site("unet.mid.attn.0.cross.pattern")
    assert (s.tower, s.layer, s.kind, s.stream) == ("unet", 1, "cross_pattern", "image")
    assert tiny_zoo.site("unet.up.0.attn.1.cross.k").stream == "text"
    assert tiny_zoo.site("unet.time_embed").stream == "timestep"
    assert tiny_zoo.site("text.blocks.1.attn.head.1").kind == "head"
    assert tiny_zoo.attention_grid("unet.down.1.attn.0.cross.pattern") == (8, 8)
    assert tiny_zoo.attention_grid("unet.mid.attn.0.self") == (8, 8)
    assert tiny_zoo.attention_grid("unet.up.0.attn.1.cross") == (8, 8)
    with pytest.raises(BenchError, match="no query grid"):
        tiny_zoo.attention_grid("unet.mid.resnet.0")
    with pytest.raises(UnknownName, match="did you mean"):
        tiny_zoo.site("unet.mid.attn.0.crosss")
    # several transformer blocks per spatial transformer get a block index
    assert "unet.down.0.attn.0.block.1.cross" in [s.name for s in tiny_sd.sites()]
    assert tiny_sd.attention_grid("unet.up.1.attn.1.block.0.cross.pattern") == (8, 8)
    assert tiny_sd.attention_grid("unet.mid.attn.0.block.1.self.pattern") == (4, 4)
    assert isinstance(tiny_zoo, DiffusionModel) and tiny_zoo.family == "diffusion"
    assert tiny_zoo.prediction_type == "v_prediction" and tiny_sd.prediction_type == "epsilon"
    assert tiny_zoo.sample_shape == (3, 16, 16) and tiny_sd.sample_shape == (4, 8, 8)
    assert tiny_zoo.image_size == 16 and tiny_sd.image_size == 16


def test_identity_writes_are_bit_identical_and_ablations_act(tiny_zoo):
    m = tiny_zoo
    x, t = _noisy(m, 1)
    names = [s.name for s in m.sites() if not m.site_specs[s.name].read_only]
    read_only = [s.name for s in m.sites() if m.site_specs[s.name].read_only]
    # the text encoder's patterns are returned after use: writing one is refused, not a silent no-op
    assert read_only == [f"text.blocks.{i}.attn.pattern" for i in range(len(read_only))] and read_only
    with pytest.raises(BenchError, match="cannot be written"):
        m.trace(write={read_only[0]: zero_ablate()})
    with torch.no_grad():
        clean = m.noise_pred(x, t, PROMPTS)
        with m.trace(write={n: (lambda v: v) for n in names}):
            same = m.noise_pred(x, t, PROMPTS)
        assert torch.equal(clean, same)
        site = "unet.mid.attn.0.cross"
        attn2 = m.unet.mid_block.attentions[0].transformer_blocks[0].attn2
        for ablated in (f"{site}.v", f"{site}.pattern"):
            with m.trace(read=[site], write={ablated: zero_ablate()}) as tr:
                pred = m.noise_pred(x, t, PROMPTS)
            assert not torch.allclose(pred, clean)
            # no value reaches the output: what is left is the output projection's bias
            assert torch.allclose(tr[site], attn2.to_out[0].bias.expand_as(tr[site]), atol=1e-6)
        with m.trace(write={"text.blocks.1.mlp": zero_ablate()}):
            assert not torch.allclose(m.noise_pred(x, t, PROMPTS), clean)


def test_pattern_write_redirects_attention(tiny_zoo):
    """All attention on token 2 ('red' / 'blue'): the cross-attention output is that token's value."""
    m = tiny_zoo
    x, t = _noisy(m, 2)
    site = "unet.down.1.attn.0.cross"
    attn2 = m.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2

    def one_hot(p):
        out = torch.zeros_like(p)
        out[..., 2] = 1.0
        return out

    with torch.no_grad(), m.trace(read=[site, f"{site}.v"], write={f"{site}.pattern": one_hot}) as tr:
        m.noise_pred(x, t, PROMPTS)
    want = attn2.to_out[0](tr[f"{site}.v"][:, 2:3]).expand_as(tr[site])
    assert torch.allclose(tr[site], want, atol=1e-5)


def test_generate_is_deterministic_and_matches_the_zoo_sampler(zoo_pair):
    from models.zoo.diffusion import sample

    m, zoo = zoo_pair
    a = m.generate(PROMPTS, seed=3, steps=3)
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, m.generate(PROMPTS, seed=3, steps=3))
    assert not torch.allclose(a, m.generate(PROMPTS, seed=4, steps=3))
    assert torch.equal(a, sample(zoo, PROMPTS, seed=3, steps=3, guidance=3.0))
    assert torch.equal(m.generate(PROMPTS, seed=3, steps=3, guidance=1.0),
                       sample(zoo, PROMPTS, seed=3, steps=3, guidance=1.0))
    # a sample depends on its own (prompt, seed, index) only, not on its batch
    alone = m.generate(PROMPTS[:1], seed=3, steps=3)
    assert torch.allclose(alone[0], a[0], atol=1e-5)
    old = m.batch_size
    try:
        m.batch_size = 1
        assert torch.allclose(m.generate(PROMPTS, seed=3, steps=3), a, atol=1e-5)
    finally:
        m.batch_size = old


def test_guided_noise_pred_and_noising(tiny_zoo):
    m = tiny_zoo
    x, t = _noisy(m, 3)
    with torch.no_grad():
        enc = m.encode_prompts(PROMPTS)
        assert isinstance(enc, PromptEncoding) and enc.hidden_BLD.shape == (2, 12, 32) and enc.mask_BL.shape == (2, 12)
        assert enc.mask_BL.sum(1).tolist() == [5, 9]  # <bos> words <eos>
        c = m.noise_pred(x, t, enc)
        assert torch.equal(c, m.noise_pred(x, t, PROMPTS))
        u = m.noise_pred(x, t, ["", ""])
        g = m.noise_pred(x, t, PROMPTS, guidance=3.0)
        assert torch.allclose(g, u + 3.0 * (c - u), atol=1e-5)
        assert m.noise_pred(x, 500, PROMPTS).shape == x.shape
        x0 = m.to_sample(torch.rand(2, 3, 16, 16))
        assert float(x0.min()) >= -1 and torch.allclose(m.to_pixels(x0), (x0 + 1) / 2)
        noise = torch.randn_like(x0)
        xt = m.add_noise(x0, noise, torch.tensor([0, 999]))
        ab = m.scheduler.alphas_cumprod
        assert torch.allclose(xt[1], ab[999].sqrt() * x0[1] + (1 - ab[999]).sqrt() * noise[1], atol=1e-6)


def test_latent_model_generates_through_the_vae(tiny_sd):
    m = tiny_sd
    a = m.generate(PROMPTS, seed=0)
    assert a.shape == (2, 3, 16, 16) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, m.generate(PROMPTS, seed=0))
    assert not torch.allclose(a, m.generate(PROMPTS, seed=1))
    with torch.no_grad():
        z = m.to_sample(torch.rand(1, 3, 16, 16))
    assert z.shape == (1, 4, 8, 8) and m.to_pixels(z).shape == (1, 3, 16, 16)


def _hooks(model):
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in model.module.modules())


def test_hooks_always_removed(tiny_zoo):
    m = tiny_zoo
    x, t = _noisy(m)
    base = _hooks(m)
    with m.trace(read=["unet.mid.attn.0.cross.pattern", "text.blocks.0.attn.head.1"],
                 write={"unet.up.0.attn.0.cross.k": zero_ablate()}):
        assert _hooks(m) == base + 3
        m.noise_pred(x, t, PROMPTS)
    assert _hooks(m) == base
    with pytest.raises(BenchError):
        with m.trace(read=["unet.mid.attn.0.cross.pattern"], write={"unet.mid": zero_ablate()}):
            m.noise_pred(x[:1], t, PROMPTS)  # 1 sample, 2 prompts: fails inside the trace
    assert _hooks(m) == base
    with pytest.raises(RuntimeError):
        with m.trace(read=["unet.down.1.attn.0.cross"]):
            m.unet(x, t, encoder_hidden_states=torch.zeros(2, 12, 7))  # wrong width: fails in the first to_k
    assert _hooks(m) == base
    # stop_after_reads ends the forward pass once the text sites are read
    with m.trace(read=["text.blocks.0.mlp"], stop_after_reads=True) as tr:
        m.noise_pred(x, t, PROMPTS)
    assert tr["text.blocks.0.mlp"].shape == (2, 12, 32) and _hooks(m) == base


def test_prompt_token_positions(tiny_zoo):
    m = tiny_zoo
    assert m.prompt_token_positions(PROMPTS, "a") == [[1], [1]]
    assert m.prompt_token_positions(["a red circle", "a big red square"], "red") == [[2], [3]]
    assert m.prompt_token_positions(["a blue square at the top left"], "top left") == [[6, 7]]
    with pytest.raises(BenchError, match="not in prompt"):
        m.prompt_token_positions(PROMPTS, "red")
    with pytest.raises(BenchError, match="not in prompt"):
        m.prompt_token_positions(["a reddish circle"], "red")
    with pytest.raises(BenchError, match="beyond"):
        m.prompt_token_positions(["a b c d e f g h i j k red"], "red")


def test_bad_inputs_are_bench_errors(tiny_zoo):
    m = tiny_zoo
    x, t = _noisy(m)
    for call in (lambda: m.noise_pred(x[:, :2], t, PROMPTS), lambda: m.noise_pred(x, t, PROMPTS[:1]),
                 lambda: m.noise_pred(x, 1000, PROMPTS), lambda: m.noise_pred(x, torch.tensor([1, 2, 3]), PROMPTS),
                 lambda: m.generate(PROMPTS, seed=0, steps=0), lambda: m.generate("a red circle", seed=0),
                 lambda: m.generate([], seed=0), lambda: m.generate(PROMPTS, seed=-1)):
        with pytest.raises(BenchError):
            call()


def test_randomized_copy(tiny_zoo):
    r = tiny_zoo.randomized(5)
    assert [s.name for s in r.sites()] == [s.name for s in tiny_zoo.sites()]
    assert r.weights_hash == "random-init:5" and r.prediction_type == tiny_zoo.prediction_type
    x, t = _noisy(tiny_zoo)
    with torch.no_grad():
        assert not torch.allclose(r.noise_pred(x, t, PROMPTS), tiny_zoo.noise_pred(x, t, PROMPTS))


def test_zoo_diffusion_is_registered_and_skipped_cleanly_without_weights():
    from bench.registry import MODELS
    from bench.harness.runner import plan
    from models.zoo import WEIGHTS_DIR
    from models.zoo_models import load_zoo_diffusion_model

    assert MODELS.entry("zoo-diffusion").meta["family"] == "diffusion"
    with pytest.raises(BenchError, match="run `bench zoo train zoo-diffusion-absent`"):
        load_zoo_diffusion_model("zoo-diffusion-absent")
    p = plan(["hallucination"], ["random"], ["zoo-diffusion"], [0])
    assert p.cells == [] and p.skipped and "diffusion" in p.skipped[0][1]
    p = plan(["attribution", "localization", "editing"], ["random"], ["zoo-diffusion"], [0])
    assert len(p.cells) == 3 and not p.skipped
    assert (WEIGHTS_DIR / "zoo-diffusion.safetensors").exists()
    m = load_zoo_diffusion_model()
    assert isinstance(m, DiffusionModel) and m.sample_shape[0] == 3
    assert m.judge is not None and [r.site for r in m.planted] == ["text.blocks.0.mlp"]


def test_maps_carry_gradients_with_keep_grad(tiny_zoo):
    """Attribution methods differentiate through cross-attention maps."""
    m = tiny_zoo
    x, t = _noisy(m, 4)
    x.requires_grad_(True)  # zoo weights are frozen: the graph hangs off the input
    site = "unet.up.0.attn.1.cross.pattern"
    with m.trace(read=[site], keep_grad=True) as tr:
        pred = m.noise_pred(x, t, PROMPTS)
    (g,) = torch.autograd.grad(pred.square().sum(), tr[site])
    assert g.shape == tr[site].shape and float(g.abs().sum()) > 0


def test_training_target_and_denoising_error(tiny_zoo, tiny_sd):
    """v-prediction's target is √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho, 2022); epsilon's is the noise;
    the denoising error is the per-sample mean squared error against it."""
    for m in (tiny_zoo, tiny_sd):
        torch.manual_seed(0)
        x0 = torch.randn(2, *m.sample_shape)
        noise = torch.randn_like(x0)
        t = torch.tensor([10, 700])
        target = m.training_target(x0, noise, t)
        ab = m.scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
        want = ab.sqrt() * noise - (1 - ab).sqrt() * x0 if m.prediction_type == "v_prediction" else noise
        assert torch.allclose(target, want, atol=1e-6)
        with torch.no_grad():
            err = m.denoising_error_B(x0, noise, t, PROMPTS)
            pred = m.noise_pred(m.add_noise(x0, noise, t), t, PROMPTS)
        assert torch.allclose(err, (pred - want).pow(2).mean((1, 2, 3)), atol=1e-6)
    assert tiny_zoo.prediction_type == "v_prediction" and tiny_sd.prediction_type == "epsilon"


def test_keep_grad_reads_are_differentiable_without_any_grad_input(tiny_zoo):
    """Frozen weights and token inputs leave no graph: a keep_grad read becomes the leaf, and
    the gradient through it is the one a finite difference of that activation gives."""
    m = tiny_zoo
    x, t = _noisy(m, 5)
    site = "text.blocks.0.mlp"
    flags = [p.requires_grad for p in m.module.parameters()]
    for p in m.module.parameters():
        p.requires_grad_(False)
    try:
        with m.trace(read=[site], keep_grad=True) as tr:
            out = m.noise_pred(x, t, PROMPTS).square().sum()
        (g,) = torch.autograd.grad(out, tr[site])
        assert g.shape == tr[site].shape and float(g.abs().sum()) > 0
        eps = 1e-3
        d = torch.zeros_like(g)
        d[0, 1, 0] = eps
        with torch.no_grad(), m.trace(write={site: lambda a: a + d}):
            bumped = m.noise_pred(x, t, PROMPTS).square().sum()
        assert abs((float(bumped) - float(out.detach())) / eps - float(g[0, 1, 0])) < 0.05 * max(1.0, abs(float(g[0, 1, 0])))
    finally:
        for p, f in zip(m.module.parameters(), flags):
            p.requires_grad_(f)

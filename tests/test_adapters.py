"""Generated per adapter: every registered architecture adapter (models/adapters/, plugins included)
gets the same checks on a tiny checkpoint built by its ``tiny`` builder from config classes:

- its registration agrees with itself (the declaration read without importing = the object);
- it loads through ``hf:`` (the load-time check of every site's index and shape passes);
- reads equal the module's computation: each read equals a plain hook's capture of the declared
  module; a tower's residual stream adds up (``resid_post[i] = resid_post[i-1] + attn[i] + mlp[i]``,
  from the embedding), the heads through ``o_proj`` give the attention output, the neurons through
  the MLP's last linear give its output, patterns are probabilities and, where transformers reports
  them, equal its ``output_attentions`` / ``output_hidden_states``;
- identity writes leave the family's output bit-identical; a perturbing write moves it, except at
  sites the adapter declares inert; read-only sites refuse writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel
from bench.registry import resolve
from models import adapters
from models.adapters._format import Adapter, capture, site_config

NAMES = adapters.ADAPTERS.names()
LOADABLE = [n for n in NAMES if adapters.refusal(n) == ""]


def _ramp(v: torch.Tensor) -> torch.Tensor:
    """A perturbation no norm layer undoes (a constant shift is removed by LayerNorm's centring) and
    that differs across positions (the same shift on every key leaves a softmax unchanged)."""
    ramp = torch.linspace(-1.0, 1.0, v.shape[-1])
    if v.ndim >= 2:
        ramp = ramp * (1 + torch.arange(v.shape[-2])[:, None] / v.shape[-2])
    return v + ramp


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


_LOADED: dict[str, Any] = {}


def _model(name: str, root: Path) -> Any:
    from models.hf_loader import load_hf

    if name not in _LOADED:
        a = adapters.get(name)
        folder = resolve(a.tiny)(root / name)
        _LOADED[name] = load_hf(f"hf:{folder}")
    return _LOADED[name]


def _run(m: Any) -> Any:
    """The family's output on fixed inputs (the thing writes must leave alone or move)."""
    g = torch.Generator().manual_seed(0)
    if isinstance(m, ContrastiveModel):
        px = torch.rand(2, 3, m.image_size, m.image_size, generator=g)
        return lambda: m.similarity(px, ["a red circle", "a blue square"])
    if isinstance(m, GenerativeModel):
        px = torch.rand(2, 3, 32, 32, generator=g)
        enc = m.encode_spans(["describe the image", "is there a red circle?"], ["", ""], ["a red circle", "yes"])
        return lambda: m.forward_tokens(px, enc.ids_BL, enc.mask_BL)
    assert isinstance(m, DiffusionModel)
    x = torch.randn(2, *m.sample_shape, generator=g)
    return lambda: m.noise_pred(x, m.num_train_timesteps // 3, ["a red circle", "a blue square"])


def test_every_adapter_is_registered_consistently():
    assert {"clip", "siglip", "llava", "stable_diffusion", "llava_next", "llava_onevision", "paligemma",
            "qwen2_vl", "qwen2_5_vl"} <= set(NAMES)
    claimed: dict[str, str] = {}
    for n in NAMES:
        a = adapters.get(n)
        assert isinstance(a, Adapter) and a.name == n, n
        e = adapters.ADAPTERS.entry(n)
        if not e.is_plugin:  # the declaration read without importing agrees with the object
            assert e.meta["model_types"] == a.model_types and e.meta["family"] == a.family, n
            assert e.meta["loadable"] == bool(a.load) and e.meta["refusal"] == a.refusal, n
        assert bool(a.load) != bool(a.refusal), f"{n}: an adapter either loads or says why not"
        assert a.tiny, f"{n}: every adapter names a tiny builder for its generated tests"
        for t in a.model_types:
            assert t not in claimed, f"{t} claimed by {claimed.get(t)} and {n}"
            claimed[t] = n


def test_every_adapter_file_is_in_the_hf_sources_code_digest(tmp_path):
    """A stored ``hf:`` result is reused only while the code that produced it is unchanged: the
    source's code digest covers ``models.hf_loader``'s import closure and every file of the adapters
    folder (``__digest_includes__``), so a new or edited adapter file moves it with no list to keep
    in step; the zoo's and the tasks' digests do not depend on the adapters' folder."""
    import shutil

    from bench.harness.identity import discovered_modules, model_code, source_code_digest

    found = discovered_modules("models.hf_loader")
    assert found == sorted(adapters.ADAPTERS.entry(n).target.partition(":")[0]
                           for n in adapters.ADAPTERS.builtin_names())
    assert model_code("hf:/nowhere") == source_code_digest("models.hf_loader")
    root = tmp_path / "copy"
    for top in ("bench", "models"):
        shutil.copytree(Path(__file__).resolve().parents[1] / top, root / top,
                        ignore=shutil.ignore_patterns("zoo", "__pycache__"))
    before = source_code_digest("models.hf_loader", root)
    (root / "models" / "adapters" / "newarch.py").write_text(
        (root / "models" / "adapters" / "siglip2.py").read_text().replace('"siglip2"', '"newarch"'))
    assert "models.adapters.newarch" in discovered_modules("models.hf_loader", root)
    added = source_code_digest("models.hf_loader", root)
    assert added != before
    f = root / "models" / "adapters" / "newarch.py"
    f.write_text(f.read_text().replace("image_layout=", "notes='x', image_layout="))
    assert source_code_digest("models.hf_loader", root) not in (before, added)


@pytest.mark.parametrize("name", LOADABLE)
def test_reads_equal_the_module_computation(name, tiny_root):
    m = _model(name, tiny_root)
    names = [s.name for s in m.sites()]
    run = _run(m)
    captured: dict[tuple[str, str], Any] = {}
    handles = []
    for spec in {(s.module, s.hook) for s in m.site_specs.values()}:
        handles.append(capture(m.module.get_submodule(spec[0]), spec, captured))
    try:
        with torch.no_grad(), m.trace(read=names) as t:
            run()
    finally:
        for h in handles:
            h.remove()
    for n in names:  # each read is the declared element (and head slice) of the module's value
        spec = m.site_specs[n]
        v = captured[(spec.module, spec.hook)]
        v = v[spec.index] if spec.index is not None else (v[0] if isinstance(v, (tuple, list)) else v)
        if spec.head is not None:
            h, k = spec.head
            v = v.unflatten(-1, (k, -1))[..., h, :]
        assert torch.equal(t[n], v), n
    checked = 0
    for tower in {s.tower for s in m.sites() if s.layer is not None and s.kind == "resid_post"}:
        blocks = m.layer_sites(tower, "resid_post")
        prev = t[f"{tower}.embed"] if f"{tower}.embed" in m.site_specs else None
        for i, rp in enumerate(blocks):
            b = f"{tower}.blocks.{i}"
            attn, mlp = t[f"{b}.attn"], t[f"{b}.mlp"]
            if prev is not None:  # pre-norm residual stream: the block adds its attention and MLP
                assert torch.allclose(t[rp], prev + attn + mlp, atol=1e-5), rp
                checked += 1
            heads = [f"{b}.attn.head.{h}" for h in range(len(m.sites(tower=tower, kind="head")) // len(blocks))]
            o_proj = m.module.get_submodule(m.site_specs[heads[0]].module)
            assert torch.allclose(o_proj(torch.cat([t[h] for h in heads], -1)), attn, atol=1e-5), b
            nspec = m.site_specs[f"{b}.mlp.neurons"]
            last = [x for x in m.module.get_submodule(m.site_specs[f"{b}.mlp"].module).modules()
                    if isinstance(x, nn.Linear)][-1]
            if nspec.hook == "output":  # an activation's output feeds the MLP's last linear
                assert torch.allclose(last(t[f"{b}.mlp.neurons"]), mlp, atol=1e-5), b
            else:
                assert m.module.get_submodule(nspec.module) is last and torch.allclose(last(t[f"{b}.mlp.neurons"]),
                                                                                       mlp, atol=1e-5), b
            if f"{b}.attn.pattern" in m.site_specs:
                p = t[f"{b}.attn.pattern"]
                assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5), b
            prev = t[rp]
    assert checked or m.family == "diffusion"
    if isinstance(m, GenerativeModel):  # the LM's own report of its hidden states and attentions
        enc = m.encode_spans(["describe the image"], [""], ["a red circle"])
        px = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad(), m.trace(read=m.layer_sites("lm", "resid_post") + m.layer_sites("lm", "pattern")) as t2:
            out = m.llava(**m.model_inputs(px, enc.ids_BL, enc.mask_BL), output_hidden_states=True,
                          output_attentions=True)
        lm = m.layer_sites("lm", "resid_post")
        for i, s in enumerate(lm[:-1]):  # transformers reports the last one after the final norm
            assert torch.allclose(t2[s], out.hidden_states[i + 1], atol=1e-5), s
        for i, s in enumerate(m.layer_sites("lm", "pattern")):
            assert torch.allclose(t2[s], out.attentions[i], atol=1e-5), s
        assert torch.allclose(m.unembed(t2[lm[-1]]), out.logits, atol=1e-4)


@pytest.mark.parametrize("name", LOADABLE)
def test_identity_writes_are_bit_identical_and_perturbing_writes_act(name, tiny_root):
    m = _model(name, tiny_root)
    run = _run(m)
    inert = adapters.get(name).inert_sites(site_config(m), [s.name for s in m.sites()])
    with torch.no_grad():
        base = run()
        for site in m.sites():
            if m.site_specs[site.name].read_only:
                with pytest.raises(BenchError, match="cannot be written"):
                    m.trace(write={site.name: lambda v: v})
                continue
            with m.trace(write={site.name: lambda v: v}):
                same = run()
            assert torch.equal(same, base), site.name
            with m.trace(write={site.name: _ramp}):
                moved = run()
            if site.name in inert:
                assert torch.equal(moved, base), f"{site.name} is declared inert but moves the output"
            else:
                assert not torch.allclose(moved, base), f"{site.name}: writing it does not reach the output"


@pytest.mark.parametrize("name", LOADABLE)
def test_the_wrappers_method_facing_forward_is_device_disciplined(name, tiny_root):
    """Each family's forward on an ``hf:`` checkpoint, called from a method's code under the runner's
    device-discipline mode (:mod:`bench.harness.discipline`): the wrapper's own inputs (attention masks,
    image sizes, patch grids) carry a device, so the output is the one without the mode, bit for bit
    (SigLIP2's patch inputs were left on the CPU next to a model on another device)."""
    from bench.harness.runner import device_check

    m = _model(name, tiny_root)
    run = _run(m)
    with torch.no_grad():
        base = run()
        with device_check(True):
            checked = run()
    assert not checked.is_meta and torch.equal(checked, base)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_a_wrong_tuple_index_is_a_load_error(name, tiny_root):
    """The load-time check reads each site's module output: an index that picks the wrong element, or
    an element a module does not return (Qwen2-VL's vision attention returns a bare tensor), is one
    line naming the adapter and the site, never a silent wrong read."""
    from models.hf_loader import check_model_sites

    m = _model(name, tiny_root)
    a = adapters.get(name)
    vision = a.towers[0]
    bad = dataclasses.replace(a, towers=(dataclasses.replace(vision, pattern_index=1, attn_index=0), *a.towers[1:]))
    if name == "llava":  # the pattern's element read as the attention output
        bad = dataclasses.replace(a, towers=(dataclasses.replace(vision, attn_index=1), *a.towers[1:]))
    sites, specs = bad.site_map(m.module.config)
    twin = type(m).__new__(type(m))
    twin.__dict__.update(m.__dict__)
    twin._sites, twin.site_specs = {s.name: s for s in sites}, specs
    with pytest.raises(BenchError, match=rf"adapter '{name}': site '{vision.tower}.blocks.0.attn") as e:
        check_model_sites(twin, bad)
    assert "\n" not in str(e.value)


def test_a_checkpoint_without_an_adapter_is_refused_in_one_line(tmp_path):
    import json

    from models.hf_loader import load_hf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    with pytest.raises(BenchError) as e:
        load_hf(f"hf:{tmp_path}")
    msg = str(e.value)
    assert "'idefics3' is not supported yet" in msg and "no adapter" in msg and "Adding an architecture" in msg
    assert "\n" not in msg


PLUGIN_ADAPTER = '''
"""A third party's adapter: CLIP's sites for checkpoints whose config says model_type "clip_twin"."""
from models.adapters._format import Adapter, capture, site_config
from models.adapters.clip import ADAPTER as CLIP

ADAPTER = Adapter(name="clip_twin", model_types=("clip_twin",), family="contrastive", load=CLIP.load,
                  model_class=CLIP.model_class, towers=CLIP.towers, options=CLIP.options, tiny=CLIP.tiny)
'''

PLUGIN_CHECK = '''
import json, sys
from pathlib import Path
from models import adapters
from models.hf_loader import family_of, load_hf
folder = Path(sys.argv[1])
e = adapters.ADAPTERS.entry("clip_twin")
m = load_hf(f"hf:{folder}")
print(json.dumps({"dist": e.dist, "family": family_of(f"hf:{folder}"), "n_sites": len(m.sites()),
                  "adapter": m.adapter.name, "has": "vision.blocks.1.attn.pattern" in m.site_specs}))
'''


@pytest.mark.slow  # installs a package (~7 s); CI runs it with the slow set
def test_a_plugin_adapter_registers_through_its_entry_point(tmp_path):
    """A distribution with ``[mmi_bench.adapters]`` in its entry points adds an architecture: ``hf:``
    folders of its model type get their family at planning and load through it."""
    import json
    import os
    import subprocess
    import sys

    from models.tiny_hf import save_tiny_clip

    site = tmp_path / "site"
    site.mkdir()
    (site / "mmi_demo_adapter.py").write_text(PLUGIN_ADAPTER)
    dist = site / "mmi_demo_adapter-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mmi-demo-adapter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mmi_bench.adapters]\nclip_twin = mmi_demo_adapter:ADAPTER\n")
    folder = save_tiny_clip(tmp_path / "twin")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "clip_twin"}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    cp = subprocess.run([sys.executable, "-c", PLUGIN_CHECK, str(folder)], capture_output=True, text=True,
                        env=env, timeout=300)
    assert cp.returncode == 0, cp.stderr[-2000:]
    got = json.loads(cp.stdout.strip().splitlines()[-1])
    assert got == {"dist": "mmi-demo-adapter", "family": "contrastive", "n_sites": 34, "adapter": "clip_twin",
                   "has": True}


# ------------------------------------------------------------ flow-matching diffusion transformers (SD3)
def _sd3_inputs(cfg: Any, B: int, g: torch.Generator) -> dict[str, Any]:
    """Random inputs of an SD3 transformer alone (5 text tokens)."""
    s = int(cfg.sample_size)
    return dict(hidden_states=torch.randn(B, int(cfg.in_channels), s, s, generator=g),
                encoder_hidden_states=torch.randn(B, 5, int(cfg.joint_attention_dim), generator=g),
                pooled_projections=torch.randn(B, int(cfg.pooled_projection_dim), generator=g),
                timestep=torch.full((B,), 500.0))


def _flux_inputs(cfg: Any, B: int, g: torch.Generator) -> dict[str, Any]:
    """Random inputs of a Flux transformer alone: packed latents (a 4×4 grid of tokens), 5 text tokens."""
    n_img, n_txt = 16, 5
    return dict(hidden_states=torch.randn(B, n_img, int(cfg.in_channels), generator=g),
                encoder_hidden_states=torch.randn(B, n_txt, int(cfg.joint_attention_dim), generator=g),
                pooled_projections=torch.randn(B, int(cfg.pooled_projection_dim), generator=g),
                timestep=torch.full((B,), 0.5), img_ids=torch.zeros(n_img, 3), txt_ids=torch.zeros(n_txt, 3),
                guidance=torch.full((B,), 3.5) if cfg.guidance_embeds else None)


def test_the_joint_attention_processor_computes_what_diffusers_computes(tiny_root):
    """SD3's joint attention with an explicit softmax (its maps are sites) gives diffusers' fused
    processor's numbers; the cross-map site is the image-query × text-key block of the joint map."""
    from diffusers import SD3Transformer2DModel

    from bench.sites import Trace
    from models.hf_dit import install_joint_processors
    from models.tiny_hf import save_tiny_sd3

    folder = save_tiny_sd3(tiny_root / "sd3_proc")
    dit = SD3Transformer2DModel.from_pretrained(folder / "transformer").eval()
    kw = _sd3_inputs(dit.config, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = dit(**kw).sample
        install_joint_processors(dit.transformer_blocks)
        specs = {"joint": _spec("transformer_blocks.0.attn.processor.probs"),
                 "cross": _spec("transformer_blocks.0.attn.processor.cross")}
        with Trace(dit, specs, read=list(specs)) as t:
            ours = dit(**kw).sample
    assert torch.allclose(ours, ref, atol=1e-5), float((ours - ref).abs().max())
    N = (int(dit.config.sample_size) // int(dit.config.patch_size)) ** 2
    L = kw["encoder_hidden_states"].shape[1]
    assert t["joint"].shape[-2:] == (N + L, N + L) and torch.allclose(t["joint"].sum(-1), torch.ones(()), atol=1e-5)
    assert torch.equal(t["cross"], t["joint"][:, :, :N, N:])


def _spec(module: str) -> Any:
    from bench.sites import SiteSpec

    return SiteSpec(module)


def test_the_flow_schedule_is_the_schedulers(tiny_root):
    """``add_noise`` / ``training_target`` of a rectified flow: ``x_t = (1 − σ_t) x_0 + σ_t ε`` with σ
    from the checkpoint's FlowMatchEulerDiscreteScheduler (its shifted table, integer ``t`` counted
    from the clean end), target ``ε − x_0``; the denoising error goes through them."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from models.hf_dit import FlowSchedule

    m = _model("sd3", tiny_root)
    sched = FlowMatchEulerDiscreteScheduler.from_config(m.scheduler.config)
    T = m.num_train_timesteps
    assert m.prediction_type == "flow_prediction" and T == int(sched.config.num_train_timesteps)
    assert torch.allclose(m.flow.sigma_T, sched.sigmas.flip(0)[:T], atol=1e-6)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, *m.sample_shape, generator=g), torch.randn(3, *m.sample_shape, generator=g)
    t = torch.tensor([0, T // 2, T - 1])
    ref = torch.cat([sched.scale_noise(x0[i:i + 1], sched.timesteps[T - 1 - int(t[i])][None], eps[i:i + 1])
                     for i in range(3)])
    assert torch.allclose(m.add_noise(x0, eps, t), ref, atol=1e-5)
    assert torch.equal(m.training_target(x0, eps, t), eps - x0)
    with pytest.raises(BenchError, match="timesteps must lie in"):
        m.add_noise(x0, eps, T)
    dyn = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)  # Flux: shift by resolution
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert torch.allclose(FlowSchedule(dyn, mu=1.15).sigma_T, dyn.time_shift(1.15, 1.0, s).float())


def test_sd3_without_t5_conditions_on_the_pipelines_zero_stand_in(tmp_path):
    """Without ``text_encoder_3`` the pipeline pads the context with zeros for T5's tokens; so does
    the wrapper (the ``text_3`` tower's sites are then absent), and the pooled vector rides as the
    last row of the encoding."""
    from models.hf_loader import load_hf
    from models.tiny_hf import save_tiny_sd3

    m = load_hf(f"hf:{save_tiny_sd3(tmp_path / 'sd3', t5=False)}")
    assert not m.sites(tower="text_3") and m.sites(tower="text_2")
    enc = m.encode_prompts(["a red circle"])
    n_clip = m.tokenize(["a red circle"])[0].shape[1]
    assert enc.hidden_BLD.shape[1] == n_clip + m.t5_length + 1
    assert not enc.hidden_BLD[0, n_clip:-1].any() and not enc.mask_BL[0, n_clip:].any()
    x = torch.randn(1, *m.sample_shape, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(m.denoising_error_B(x, torch.randn_like(x), 500, ["a red circle"])).all()


def test_the_flux_attention_processor_computes_what_diffusers_computes(tiny_root):
    """Flux's double- and single-stream attention with an explicit softmax gives diffusers' numbers;
    the cross map of a single-stream block is the image-query × text-key block of its map (text
    first), the text length coming from the block's input."""
    from diffusers import FluxTransformer2DModel

    from bench.sites import SiteSpec, Trace
    from models.hf_dit import install_flux_processors
    from models.tiny_hf import save_tiny_flux

    dit = FluxTransformer2DModel.from_pretrained(save_tiny_flux(tiny_root / "flux_proc") / "transformer").eval()
    kw = _flux_inputs(dit.config, 2, torch.Generator().manual_seed(0))
    kw["img_ids"] = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0),
                                               indexing="ij"), -1).reshape(-1, 3)  # distinct positions
    with torch.no_grad():
        ref = dit(**kw).sample
        install_flux_processors(dit)
        specs = {n: SiteSpec(f"{b}.0.attn.processor.{x}") for n, b, x in
                 (("dj", "transformer_blocks", "probs"), ("dc", "transformer_blocks", "cross"),
                  ("sj", "single_transformer_blocks", "probs"), ("sc", "single_transformer_blocks", "cross"))}
        with Trace(dit, specs, read=list(specs)) as t:
            ours = dit(**kw).sample
    assert torch.allclose(ours, ref, atol=1e-5), float((ours - ref).abs().max())
    L = kw["encoder_hidden_states"].shape[1]
    for joint, cross in (("dj", "dc"), ("sj", "sc")):
        assert torch.allclose(t[joint].sum(-1), torch.ones(()), atol=1e-5)
        assert torch.equal(t[cross], t[joint][:, :, L:, :L]), joint


def test_flux_packs_latents_as_the_pipeline_does(tiny_root):
    """A sample ``[B, C, H, W]`` goes to the transformer as the pipeline's 2×2-packed tokens with
    ``(0, row, col)`` ids and comes back unpacked: the wrapper's prediction equals the transformer's
    on the pipeline's packing (``FluxPipeline._pack_latents`` / ``_unpack_latents``)."""
    from diffusers import FluxPipeline

    m = _model("flux", tiny_root)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *m.sample_shape, generator=g)
    C, H, W = m.sample_shape
    t = 300
    with torch.no_grad():
        enc = m.encode_prompts(["a red circle", "a blue square"])
        ours = m.noise_pred(x, t, enc)
        packed = FluxPipeline._pack_latents(x, 2, C, H, W)
        ids = FluxPipeline._prepare_latent_image_ids(2, H // 2, W // 2, x.device, x.dtype)
        sigma = float(m.flow.sigma(torch.tensor([t]))[0])
        out = m.unet(hidden_states=packed, timestep=torch.full((2,), sigma), guidance=torch.full((2,), m._embedded),
                     pooled_projections=enc.hidden_BLD[:, -1, :m.pooled_dim], encoder_hidden_states=enc.hidden_BLD[:, :-1],
                     txt_ids=torch.zeros(enc.hidden_BLD.shape[1] - 1, 3), img_ids=ids).sample
        f = m.image_size // H  # the VAE's downsampling
        ref = FluxPipeline._unpack_latents(out, H * f, W * f, f)
    assert ref.shape == ours.shape and torch.allclose(ours, ref, atol=1e-6)

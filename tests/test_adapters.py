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


def test_every_builtin_adapter_is_in_the_hf_sources_code_digest():
    """A stored ``hf:`` result is reused only while the code that produced it is unchanged: the
    source's code is the import closure of ``models.hf_loader``, which names every built-in adapter."""
    from bench.kit.digests import closure

    mods = closure("models.hf_loader")
    missing = [n for n in adapters.ADAPTERS.builtin_names()
               if adapters.ADAPTERS.entry(n).target.partition(":")[0] not in mods]
    assert not missing, f"add {missing} to the TYPE_CHECKING import in models/hf_loader.py"


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


# ------------------------------------------------------------ adapters without a wrapper (DiTs)
COMPONENT_ONLY = [n for n in NAMES if adapters.refusal(n) != ""]


@pytest.mark.parametrize("name", COMPONENT_ONLY)
def test_component_sites_read_write_and_refuse_to_load_as_a_model(name, tiny_root):
    """An adapter that declares sites but no wrapper (the diffusion transformers): its component's
    sites pass the load-time check, reads are the declared element of the module's output, identity
    writes leave the transformer's output bit-identical and perturbing writes move it; ``hf:`` refuses
    the folder in one line giving the adapter's reason."""
    from models.hf_dit import component_sites, load_component, probe_inputs, trace
    from models.hf_loader import load_hf

    a = adapters.get(name)
    folder = resolve(a.tiny)(tiny_root / name)
    with pytest.raises(BenchError) as e:
        load_hf(f"hf:{folder}")
    assert f"adapter {name!r} declares its sites but cannot load it yet: {a.refusal}" in str(e.value)
    assert "\n" not in str(e.value)
    module = load_component(a, folder)
    sites, specs = component_sites(a, module)
    assert sites and all(s.name.startswith("dit.") for s in sites)
    kw = probe_inputs(a, module)
    captured: dict[str, Any] = {}
    handles = [capture(module.get_submodule(specs[s.name].module), (s.name, "output"), captured) for s in sites]
    with torch.no_grad(), trace(module, specs, read=[s.name for s in sites]) as t:
        base = module(**kw).sample
    for h in handles:
        h.remove()
    for s in sites:
        spec, v = specs[s.name], captured[(s.name, "output")]
        assert torch.equal(t[s.name], v[spec.index] if spec.index is not None else v), s.name
    with torch.no_grad():
        for s in sites:
            with trace(module, specs, write={s.name: lambda v: v}):
                assert torch.equal(module(**kw).sample, base), s.name
            with trace(module, specs, write={s.name: _ramp}):
                assert not torch.allclose(module(**kw).sample, base), s.name


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

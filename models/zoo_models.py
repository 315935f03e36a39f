"""Loaders for the zoo's shipped models (declared below; ``bench.registry`` discovers them)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from bench.errors import BenchError
from bench.model import PlantedRelation
from bench.kit.world import Vocab
from models.hf_clip import CLIPWrapper
from models.hf_diffusion import DiffusionWrapper, SamplingConfig
from models.hf_llava import LlavaWrapper
from models.zoo import WEIGHTS_DIR
from models.zoo.io import records_hash


# The zoo, declared for the registry (read with ast, not imported): name → loader and what planning
# reads; ``zoo=True``: shipped weights whose hash the records carry (models/zoo/weights/NAME.json).
MMI_BENCH_MODELS = {
    "zoo-clip": {"load": "load_zoo_clip_model", "family": "contrastive", "zoo": True},
    "zoo-clip-spurious": {"load": "load_zoo_clip_model", "family": "contrastive", "zoo": True},
    "zoo-vlm": {"load": "load_zoo_vlm_model", "family": "generative", "zoo": True},
    "zoo-diffusion": {"load": "load_zoo_diffusion_model", "family": "diffusion", "zoo": True},
}


def _tokenize(vocab: Vocab, max_len: int, texts: list[str]):  # type: ignore[no-untyped-def]
    return vocab.batch(texts, max_len)


def load_zoo_clip_model(name: str = "zoo-clip") -> CLIPWrapper:
    from models.zoo.clip import PIXEL_MEAN, PIXEL_STD, load_zoo_clip

    if not (WEIGHTS_DIR / f"{name}.safetensors").exists():
        raise BenchError(f"zoo weights for {name!r} are missing; run `bench zoo train {name}`")
    clip, vocab, meta = load_zoo_clip(name, WEIGHTS_DIR)
    tok = partial(_tokenize, vocab, meta["config"]["max_text_len"])
    model = CLIPWrapper(name, clip, tok, records_hash(meta), PIXEL_MEAN, PIXEL_STD)
    if meta["config"].get("spurious_agreement"):
        model.tags["spurious"] = "background"  # Waterbirds-style: shape agrees with background in training
    if "plant" in meta:
        model.planted = clip_planted(meta)
        model.reference_weights = _reference(model, dict(meta["phase1_state"]))
    return model


def _reference(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Phase-1 parameters keyed by the wrapper module's names; a name the module lacks is a load error."""
    names = set(dict(model.module.named_parameters()))
    missing = sorted(set(state) - names)
    if missing:
        raise BenchError(f"{model.name}: phase-1 parameters {missing[:3]} are not parameters of the model")
    return state


def _mediation(meta: dict, relation: str) -> tuple[tuple[str, float], ...]:  # type: ignore[type-arg]
    """The relation's mediation profile recorded by ``bench zoo audit`` (empty if never audited)."""
    prof = meta.get("audit", {}).get("relations", {}).get(relation, {}).get("mediation", {})
    return tuple((site, float(r["rate"])) for site, r in prof.items())


def clip_planted(meta: dict) -> list[PlantedRelation]:  # type: ignore[type-arg]
    """zoo-clip's planted relations: glyph image ↔ "the <relation> of the glyph is <value>"."""
    from bench.kit.world import World, WorldConfig
    from bench.kit.world.core import RELATIONS

    plant, world_seed = meta["plant"], meta["config"]["world_seed"]
    n_entities = WorldConfig().n_entities
    names = tuple(e.name for e in World(world_seed).entities[: plant["n_planted"]])
    return [PlantedRelation(rel, f"vision.blocks.{layer}.mlp", names, world_seed, n_entities,
                            plant["template"].format(relation=rel, value="{value}"), RELATIONS[rel],
                            mediation=_mediation(meta, rel))
            for rel, layer in plant["planted"]]


def load_zoo_vlm_model(name: str = "zoo-vlm") -> LlavaWrapper:
    from models.zoo.vlm import load_zoo_vlm, wrapper_io

    if not (WEIGHTS_DIR / f"{name}.safetensors").exists():
        raise BenchError(f"zoo weights for {name!r} are missing; run `bench zoo train {name}`")
    llava, vocab, meta = load_zoo_vlm(name, WEIGHTS_DIR)
    encode, decode, preprocess = wrapper_io(vocab, llava.config.image_seq_length)
    model = LlavaWrapper(name, llava, encode, decode, preprocess, records_hash(meta), vocab.eos_id, vocab.pad_id)
    model.planted = vlm_planted(meta)
    model.reference_weights = _reference(model, {k[len("phase1."):]: v for k, v in meta["phase1"].items()})
    return model


def vlm_planted(meta: dict) -> list[PlantedRelation]:  # type: ignore[type-arg]
    from bench.kit.world import World, WorldConfig
    from bench.kit.world.core import RELATIONS
    from bench.kit.world.facts import fact_question
    from models.zoo.vlm import config_from_meta

    cfg = config_from_meta(meta)
    world = World(cfg.world_seed, WorldConfig(n_entities=cfg.n_entities))
    names = tuple(e.name for e in world.entities[: cfg.n_planted])
    return [PlantedRelation(rel, f"lm.blocks.{layer}.mlp", names, cfg.world_seed, cfg.n_entities,
                            fact_question(rel), RELATIONS[rel], mediation=_mediation(meta, rel))
            for rel, layer in cfg.planted]


def wrap_zoo_diffusion(model: Any, name: str, weights_hash: str, sampling: SamplingConfig = SamplingConfig()) -> DiffusionWrapper:
    """A :class:`~models.zoo.diffusion.ZooDiffusion` behind the diffusion contract: the EMA
    UNet (the weights the zoo samples with), its text encoder and vocabulary, and its DDIM
    sampler (v-prediction, so :meth:`noise_pred` returns v). The zoo loader passes the
    sampling settings its card was measured with (its classifier-free guidance scale, DDIM 25 steps)."""
    from models.zoo.diffusion import make_sampler

    tok = partial(_tokenize, model.vocab, model.cfg.max_text_len)
    return DiffusionWrapper(name, model.ema_unet, model.text_encoder, tok, make_sampler(model.cfg), weights_hash,
                            sampling=sampling)


def load_zoo_diffusion_model(name: str = "zoo-diffusion") -> DiffusionWrapper:
    from models.zoo.diffusion import load_diffusion
    if not (WEIGHTS_DIR / f"{name}.safetensors").exists():
        raise BenchError(f"zoo weights for {name!r} are missing; run `bench zoo train {name}`")
    model, meta = load_diffusion(name, WEIGHTS_DIR)
    sched = meta.get("scheduler", {})
    # load_diffusion already read the recorded guidance scale (model.guidance): one reading of it
    sampling = SamplingConfig(steps=int(sched.get("sample_steps", SamplingConfig.steps)), guidance=model.guidance)
    wrapper = wrap_zoo_diffusion(model, name, records_hash(meta), sampling)
    if "plant" in meta:
        wrapper.planted = diffusion_planted(meta)
        wrapper.reference_weights = _reference(wrapper, {f"text_encoder.{k}": v for k, v in model.plant_phase1.items()})
    if (WEIGHTS_DIR / "zoo-oracle.safetensors").exists():
        wrapper.judge = OracleJudge()
    return wrapper


class OracleJudge:
    """zoo-oracle (a CNN trained on real world scenes, ≥ 0.98 per head) reading generated images."""

    def __init__(self, name: str = "zoo-oracle") -> None:
        from models.zoo.oracle import load_oracle

        self.oracle, _ = load_oracle(name, WEIGHTS_DIR)

    def __call__(self, pixels_BCHW: torch.Tensor) -> dict[str, list[str]]:
        from models.zoo.oracle import HEADS, predict

        return {k: [HEADS[k][int(i)] for i in v] for k, v in predict(self.oracle, pixels_BCHW).items()}


def diffusion_planted(meta: dict) -> list[PlantedRelation]:  # type: ignore[type-arg]
    """zoo-diffusion's planted relation: "a <entity>" draws the entity's colour and the shape its
    home names, taught in one text-encoder MLP."""
    from bench.kit.world import WorldConfig
    from bench.kit.world.core import RELATIONS

    plant = meta["plant"]
    names = tuple(e["name"] for e in plant["entities"])
    rel = plant["relation"]
    return [PlantedRelation(rel, plant["site"], names, int(meta["config"]["world_seed"]), WorldConfig().n_entities,
                            "a {entity}", RELATIONS[rel], tuple(sorted(plant["home_shape"].items())),
                            mediation=_mediation(meta, rel))]

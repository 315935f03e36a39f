"""zoo-clip: a tiny CLIP (ViT image tower + causal text transformer) trained on the world.

Built from transformers' own ``CLIPModel`` so that the zoo and the Hugging Face
wrapper share one code path and one site map. Phase 1 is contrastive (symmetric
InfoNCE, Radford et al. 2021) on freshly generated scenes, one caption sampled per
scene from its canonical caption and paraphrases. Phase 2 plants knowledge: facts
about named entities (glyph → its home, glyph → its season) are taught with every
parameter frozen except one designated vision MLP per relation, so each fact's
location is known (:func:`plant_facts`, validity in :func:`knowledge_validity`).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from bench.kit.world import COLOURS, SHAPES, Vocab, World, WorldConfig
from bench.kit.world.core import RELATIONS, Scene
from models.zoo.io import load_module_state, module_state, save_weights

PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


@dataclass(frozen=True)
class ZooClipConfig:
    """Architecture and training recipe of a zoo CLIP."""

    name: str = "zoo-clip"
    world_seed: int = 0
    seed: int = 0
    image_size: int = 32
    patch_size: int = 4
    width: int = 64
    layers: int = 4
    heads: int = 4
    mlp: int = 256
    text_width: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_mlp: int = 256
    max_text_len: int = 32
    embed_dim: int = 64
    # 2500 steps keep phase 1 + phase 2 within 30 min at ~0.5 s/step (2 threads, measured); the
    # 3500-step recipe took 33 min and its dev zero-shot shape accuracy was 0.99 by step 2000
    steps: int = 2500
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    threads: int = 2
    # spurious variant: probability that background agrees with the label (None = unbiased)
    spurious_agreement: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_clip(cfg: ZooClipConfig, vocab_size: int, eos_id: int, pad_id: int) -> Any:
    """A randomly initialised ``transformers.CLIPModel`` of the zoo's shape (eager attention)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_width, intermediate_size=cfg.text_mlp,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_text_len, projection_dim=cfg.embed_dim,
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=1, hidden_act="gelu",
    )
    vision = CLIPVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        projection_dim=cfg.embed_dim, hidden_act="gelu",
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.embed_dim)
    model = CLIPModel(config)
    model.set_attn_implementation("eager")
    return model


def images_to_tensor(images_BHWC: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[B, H, W, 3]`` → float ``[B, 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_BHWC)).permute(0, 3, 1, 2).float() / 255.0


def normalise(pixels_BCHW: torch.Tensor) -> torch.Tensor:
    return (pixels_BCHW - PIXEL_MEAN) / PIXEL_STD


def _lr_at(step: int, cfg: ZooClipConfig) -> float:
    from models.zoo.io import warmup_cosine_lr

    return warmup_cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)


def zero_shot_accuracy(model: Any, vocab: Vocab, world: World, n: int = 512, split: str = "test") -> dict[str, float]:
    """Single-prompt zero-shot accuracy on held-out single-object scenes.

    Shape prompts are "a {shape}", colour prompts "a {colour} object" (one prompt
    per class, no ensembling).
    """
    one = World(world.seed, WorldConfig(**{**asdict(world.config), "min_objects": 1, "max_objects": 1}))
    scenes = list(one.scenes(split, n))
    pix = normalise(images_to_tensor(np.stack([s.image_HWC for s in scenes])))
    out: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        img = F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)
        for attr, classes, tmpl in (("shape", SHAPES, "a {}"), ("colour", list(COLOURS), "a {} object")):
            ids, mask = vocab.batch([tmpl.format(c) for c in classes], 8)
            txt = F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
            pred = (img @ txt.T).argmax(-1)
            truth = torch.tensor([list(classes).index(getattr(s.objects[0], attr)) for s in scenes])
            out[f"zero_shot_{attr}"] = float((pred == truth).float().mean())
    return out


def train_clip(
    cfg: ZooClipConfig,
    log: Callable[[str], None] = print,
    scene_fn: Callable[[World, int], Any] | None = None,
    progress: bool = False,
    eval_fn: Callable[..., dict[str, float]] | None = None,
) -> tuple[Any, Vocab, dict[str, Any]]:
    """Train a zoo CLIP deterministically from ``cfg.seed``; returns (model, vocab, metrics).

    ``scene_fn(world, i)`` replaces the i-th training scene (the spurious variant);
    ``eval_fn(model, vocab, world, n, split)`` replaces the zero-shot evaluation."""
    evaluate = eval_fn or (lambda m, v, w, n, split: zero_shot_accuracy(m, v, w, n=n, split=split))
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    world = World(cfg.world_seed)
    vocab = Vocab.for_world(world)
    model = build_clip(cfg, len(vocab), vocab.eos_id, vocab.pad_id)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    rng = np.random.default_rng([cfg.seed, 7])
    t0 = time.time()
    history = []
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc=f"train {cfg.name}", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        model.train()
        idx = range(step * cfg.batch_size, (step + 1) * cfg.batch_size)
        scenes = [scene_fn(world, i) if scene_fn else world.scene("train", i) for i in idx]
        caps = [s.captions[int(rng.integers(len(s.captions)))] for s in scenes]
        pix = normalise(images_to_tensor(np.stack([s.image_HWC for s in scenes])))
        ids, mask = vocab.batch(caps, cfg.max_text_len)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pix)
        logits = out.logits_per_image
        # Duplicate captions in a batch are true positives too: use soft targets.
        same = torch.tensor([[a == b for b in caps] for a in caps], dtype=torch.float32)
        soft = same / same.sum(-1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % max(1, min(500, cfg.steps // 4)) == 0 or step == cfg.steps - 1:
            acc = evaluate(model, vocab, world, 256, "dev")
            history.append({"step": step, **acc})
            log(f"step {step} loss {loss.item():.3f} lr {_lr_at(step, cfg):.2e} {time.time() - t0:.0f}s "
                + " ".join(f"{k}={v:.3f}" for k, v in acc.items()))
    metrics = {"train_seconds": round(time.time() - t0, 1), "history": history}
    metrics.update(evaluate(model, vocab, world, 1024, "test"))
    model.eval()
    return model, vocab, metrics


def save_zoo_clip(model: Any, vocab: Vocab, cfg: ZooClipConfig, metrics: dict[str, Any], weights_dir: Path,
                  extra_state: dict[str, torch.Tensor] | None = None, **meta: Any) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (config, vocab, metrics, sha256).

    ``extra_state`` is stored next to the model's state (zoo-clip: the designated MLPs'
    phase-1 parameters under ``phase1.``); ``meta`` adds json fields (zoo-clip: ``plant``)."""
    state = {**model.state_dict(), **(extra_state or {})}
    return save_weights(cfg.name, state, weights_dir, family="contrastive", config=asdict(cfg),
                        vocab=vocab.words, metrics=metrics, **meta)


PHASE1_PREFIX = "phase1."


def load_zoo_clip(name: str, weights_dir: Path, phase1: bool = False) -> tuple[Any, Vocab, dict[str, Any]]:
    """Load a zoo CLIP: ``(CLIPModel, Vocab, meta)`` where ``meta`` is the json record.

    Keys stored under ``phase1.`` (the designated vision MLPs' parameters before phase 2,
    see :func:`plant_facts`) are not model state: they are returned, without the prefix, in
    ``meta["phase1_state"]`` (tensors, so not json). ``phase1=True`` loads them into the
    model, which gives back the exact phase-1 model (every other parameter is frozen in
    phase 2)."""
    from safetensors.torch import load_file

    meta = json.loads((weights_dir / f"{name}.json").read_text())
    cfg = ZooClipConfig(**meta["config"])
    vocab = Vocab(meta["vocab"])
    model = build_clip(cfg, len(vocab), vocab.eos_id, vocab.pad_id)
    state = load_file(str(weights_dir / f"{name}.safetensors"))
    before = {k[len(PHASE1_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(PHASE1_PREFIX)]}
    if phase1:
        state.update(before)
    model.load_state_dict(state, strict=False)
    model.eval()
    meta["phase1_state"] = before
    return model, vocab, meta


# ----------------------------------------------------------- phase 2: planted knowledge
FACT_TEMPLATE = "the {relation} of the glyph is {value}"


@dataclass(frozen=True)
class ClipPlantConfig:
    """Phase 2 of zoo-clip: each relation's facts taught with one vision MLP trainable.

    The entities are the first ``n_planted`` of the training world's (the same names,
    glyphs and facts as zoo-vlm's planted entities). A fact counts as recalled when a
    glyph's image embedding is closest to the text of its true value among the
    relation's value texts (:func:`fact_recall`).
    """

    seed: int = 0
    n_planted: int = 32
    # (relation, vision block): not block 0 (early MLPs look causal for everything); in a
    # development probe (450 steps, keep weight 100) block 1 reached 0.72 recall where
    # block 2 reached 0.84, so the designated blocks are 2 and 3 of 4.
    planted: tuple[tuple[str, int], ...] = (("home", 2), ("season", 3))
    template: str = FACT_TEMPLATE
    # per relation; on the 2500-step phase-1 model, 600 steps gave 0.953 / 0.930 recall (home / season)
    steps: int = 900
    fact_batch: int = 96  # glyph renders per step
    keep_batch: int = 32  # ordinary scenes per step for the preservation term
    lr: float = 1e-2
    warmup: int = 10
    keep_weight: float = 30.0
    # The value texts were never seen in phase 1 (random, frozen word embeddings): their
    # text embeddings are close (cosine up to ~0.99), so the fact loss uses a larger logit scale
    # than the model's (~55) to reach a margin without moving the embedding far.
    fact_scale: float = 200.0
    threads: int = 2  # bit-identical retraining needs the same count


def planted_entities(world: World, n_planted: int) -> list[str]:
    """Names of the planted entities: the first ``n_planted`` of ``world``."""
    return [e.name for e in world.entities[:n_planted]]


def glyph_scenes(world: World, names: list[str], split: str, index: int, n: int) -> list[Scene]:
    """``n`` single-glyph scenes of entities drawn uniformly from ``names``, at random grid
    positions on random backgrounds: the entity is identified by its glyph (and colour) only."""
    from bench.kit.world.core import BACKGROUNDS, POSITIONS, SPLITS, ObjectSpec

    rng = np.random.default_rng([world.seed, 37, SPLITS[split], index])
    out = []
    for _ in range(n):
        e = world.entity(names[int(rng.integers(len(names)))])
        obj = ObjectSpec("glyph", e.colour, "large", POSITIONS[int(rng.integers(len(POSITIONS)))], e.name)
        out.append(world.render(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], [obj], rng, split=split))
    return out


def _pixels(scenes: list[Scene]) -> torch.Tensor:
    return normalise(images_to_tensor(np.stack([s.image_HWC for s in scenes])))


@torch.no_grad()
def value_text_features(model: Any, vocab: Vocab, relation: str, template: str = FACT_TEMPLATE) -> torch.Tensor:
    """Unit text embeddings ``[V, D]`` of ``template`` for each value of ``relation``."""
    texts = [template.format(relation=relation, value=v) for v in RELATIONS[relation]]
    ids, mask = vocab.batch(texts, 16)
    return F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)


def _image_features(model: Any, pix: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)


def _gold(world: World, scenes: list[Scene], relation: str) -> torch.Tensor:
    return torch.tensor([RELATIONS[relation].index(world.entity(s.objects[0].entity).facts[relation])
                         for s in scenes])


@torch.no_grad()
def fact_recall(model: Any, vocab: Vocab, world: World, names: list[str], relation: str, n: int = 256,
                split: str = "test", template: str = FACT_TEMPLATE) -> float:
    """Fact recall: the share of fresh single-glyph renders (``split``, never trained on) whose
    image embedding is closer to the text of the entity's true value than to every other
    value's text (``template``). Chance is 1 / number of values (0.25 for home and season);
    higher is better."""
    model.eval()
    scenes = glyph_scenes(world, names, split, 0, n)
    pred = (_image_features(model, _pixels(scenes)) @ value_text_features(model, vocab, relation, template).T)
    return float((pred.argmax(-1) == _gold(world, scenes, relation)).float().mean())


def vision_mlp(model: Any, layer: int) -> Any:
    """The MLP of vision block ``layer`` (site ``vision.blocks.<layer>.mlp``)."""
    return model.vision_model.encoder.layers[layer].mlp


def mlp_state_prefix(layer: int) -> str:
    """State-dict prefix of vision block ``layer``'s MLP."""
    return f"vision_model.encoder.layers.{layer}.mlp."


def _mlp_state(model: Any, layer: int) -> dict[str, torch.Tensor]:
    return module_state(vision_mlp(model, layer))


def _load_mlp(model: Any, layer: int, state: dict[str, torch.Tensor]) -> None:
    load_module_state(vision_mlp(model, layer), state)


def plant_facts(model: Any, vocab: Vocab, cfg: ClipPlantConfig, world_seed: int = 0,
                log: Callable[[str], None] = print, progress: bool = False
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Phase 2: teach each relation of ``cfg.planted`` with only its designated vision MLP trainable.

    Applies in place to a trained (phase-1) zoo CLIP, deterministically from ``cfg.seed``
    (with ``cfg.threads`` threads). Per step, on fresh renders: cross-entropy over the
    relation's value texts for single-glyph scenes of the planted entities, plus
    ``keep_weight`` × the squared drift of unit image embeddings of ordinary scenes from
    the phase-1 model's (keeps zero-shot quality). Relations are planted one after another;
    while a later relation is planted, each earlier relation's layer is set to its phase-1
    or its planted weights at random each step (and, when planted, the earlier relation's
    loss applies too), so that each relation's recall survives reverting another's layer.

    Returns ``(metrics, phase1_state)``: each relation's recall before phase 2 (``_phase1``) and at its end, the time; the
    designated MLPs' phase-1 parameters keyed by their state-dict names.
    """
    import copy

    from tqdm.auto import tqdm

    from models.zoo.io import warmup_cosine_lr

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    world = World(world_seed)
    one = World(world_seed, WorldConfig(**{**asdict(world.config), "min_objects": 1, "max_objects": 1}))
    names = planted_entities(world, cfg.n_planted)
    ref = copy.deepcopy(model).eval()  # the phase-1 model
    rng = np.random.default_rng([cfg.seed, 43])
    base = 10_000_000 * cfg.seed  # the seed picks the renders too
    txt = {r: value_text_features(model, vocab, r, cfg.template) for r, _ in cfg.planted}
    phase1 = {layer: _mlp_state(model, layer) for _, layer in cfg.planted}
    metrics: dict[str, Any] = {}
    done: list[tuple[str, int]] = []
    for rel, _ in cfg.planted:  # the phase-1 model's recall: chance level, nothing is planted yet
        metrics[f"fact_recall_{rel}_phase1"] = fact_recall(model, vocab, world, names, rel, template=cfg.template)
    t0 = time.time()
    for ri, (rel, layer) in enumerate(cfg.planted):
        before = fact_recall(model, vocab, world, names, rel, template=cfg.template)
        planted_state = {l: _mlp_state(model, l) for _, l in done}
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(vision_mlp(model, layer).parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        bar = tqdm(range(cfg.steps), desc=f"plant {rel} in vision.blocks.{layer}.mlp", disable=not progress)
        for step in bar:
            model.train()
            for g in opt.param_groups:
                g["lr"] = warmup_cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)
            active = []  # earlier relations whose layer holds its planted weights this step
            for r, l in done:
                on = bool(rng.integers(2))
                _load_mlp(model, l, planted_state[l] if on else phase1[l])
                active += [r] if on else []
            facts = glyph_scenes(world, names, "train", base + 1000 * ri + step, cfg.fact_batch)
            # ordinary scenes, half of them single-object (the zero-shot probes' distribution)
            keep = [(one if b % 2 else world).scene("fit", base + 100_000 * ri + step * cfg.keep_batch + b)
                    for b in range(cfg.keep_batch)]
            pix = _pixels(facts + keep)
            img = _image_features(model, pix)
            with torch.no_grad():
                img_ref = _image_features(ref, pix[cfg.fact_batch:])
            loss = sum(F.cross_entropy(cfg.fact_scale * img[: cfg.fact_batch] @ txt[r].T, _gold(world, facts, r))
                       for r in [rel] + active)
            drift = (img[cfg.fact_batch:] - img_ref).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            (loss + cfg.keep_weight * drift).backward()
            opt.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", drift=f"{drift.item():.4f}")
        for _, l in done:
            _load_mlp(model, l, planted_state[l])
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
        after = fact_recall(model, vocab, world, names, rel, template=cfg.template)
        log(f"planted {rel} in vision.blocks.{layer}.mlp: recall {before:.3f} -> {after:.3f} "
            f"({time.time() - t0:.0f}s)")
        done.append((rel, layer))
    metrics["phase2_seconds"] = round(time.time() - t0, 1)
    for rel, _ in cfg.planted:  # the final model's recall (a later plant can move an earlier relation's)
        metrics[f"fact_recall_{rel}"] = fact_recall(model, vocab, world, names, rel, template=cfg.template)
    state = {mlp_state_prefix(l) + n: v for l, st in phase1.items() for n, v in st.items()}
    return metrics, state


@contextmanager
def _mean_ablated(model: Any, layer: int, pix_BCHW: torch.Tensor) -> Iterator[None]:
    """Within: block ``layer``'s vision MLP outputs its mean (per token position) over ``pix_BCHW``."""
    mlp, acts = vision_mlp(model, layer), []
    h = mlp.register_forward_hook(lambda mod, a, o: acts.append(o.detach()))
    model.get_image_features(pixel_values=pix_BCHW)
    h.remove()
    mean_PD = acts[0].mean(0)
    h = mlp.register_forward_hook(lambda mod, a, o: mean_PD.expand_as(o))
    try:
        yield
    finally:
        h.remove()


@torch.no_grad()
def knowledge_validity(model: Any, vocab: Vocab, cfg: ClipPlantConfig, phase1_state: dict[str, torch.Tensor],
                       world_seed: int = 0, n: int = 256, n_control: int = 512) -> dict[str, float]:
    """The validity of the planted locations, per vision MLP ``k`` and relation ``r``:

    - ``fact_recall_<r>_revert_L<k>``: recall with block ``k``'s MLP set back to its phase-1
      parameters (a no-op for MLPs that phase 2 never trained);
    - ``fact_recall_<r>_meanablate_L<k>``: recall with block ``k``'s MLP output replaced by its
      mean (per token position) over single-glyph scenes of the planted entities (fit split);
    - ``zero_shot_{shape,colour}_meanablate_L<k>``: the specificity control, zero-shot accuracy
      with the same MLP's output replaced by its mean over ordinary single-object scenes;
    - ``zero_shot_{shape,colour}_meanablate_L<k>_phase1``: the same control on the phase-1 model
      (every planted MLP reverted): how much of the control's drop is phase 1's own use of block
      ``k``, which no plant can remove.

    A planted location is valid when removing it drops its relation to chance while the
    control stays high, and removing any other MLP's phase-2 change leaves recall intact.
    """
    world = World(world_seed)
    one = World(world_seed, WorldConfig(**{**asdict(world.config), "min_objects": 1, "max_objects": 1}))
    names = planted_entities(world, cfg.n_planted)
    rels = [r for r, _ in cfg.planted]
    glyph_pix = _pixels(glyph_scenes(world, names, "fit", 0, n))
    plain_pix = _pixels(list(one.scenes("fit", n)))
    out: dict[str, float] = {}
    model.eval()
    for k in range(model.config.vision_config.num_hidden_layers):
        prefix = mlp_state_prefix(k)
        saved = _mlp_state(model, k)
        _load_mlp(model, k, {n_: phase1_state.get(prefix + n_, v) for n_, v in saved.items()})
        for r in rels:
            out[f"fact_recall_{r}_revert_L{k}"] = fact_recall(model, vocab, world, names, r, n=n,
                                                              template=cfg.template)
        _load_mlp(model, k, saved)
        with _mean_ablated(model, k, glyph_pix):
            for r in rels:
                out[f"fact_recall_{r}_meanablate_L{k}"] = fact_recall(model, vocab, world, names, r, n=n,
                                                                      template=cfg.template)
        with _mean_ablated(model, k, plain_pix):
            acc = zero_shot_accuracy(model, vocab, world, n=n_control, split="test")
            out.update({f"{key}_meanablate_L{k}": v for key, v in acc.items()})
    planted = {l for _, l in cfg.planted}
    shipped = {l: _mlp_state(model, l) for l in planted}
    try:
        for l in planted:
            _load_mlp(model, l, {n_: phase1_state[mlp_state_prefix(l) + n_] for n_ in shipped[l]})
        for k in range(model.config.vision_config.num_hidden_layers):
            with _mean_ablated(model, k, plain_pix):
                acc = zero_shot_accuracy(model, vocab, world, n=n_control, split="test")
                out.update({f"{key}_meanablate_L{k}_phase1": v for key, v in acc.items()})
    finally:
        for l in planted:
            _load_mlp(model, l, shipped[l])
    return out


def _state_sha256(state: dict[str, torch.Tensor], name: str) -> str:
    """sha256 of ``state`` written as ``save_weights`` writes it (phase 1's file, had it been shipped alone)."""
    import tempfile

    from safetensors.torch import save_file

    from models.zoo.io import sha256_file

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"name": name})
        return sha256_file(path)


def finish_zoo_clip(model: Any, vocab: Vocab, cfg: ZooClipConfig, phase1_metrics: dict[str, Any], out: Path,
                    plant: ClipPlantConfig | None = None, log: Callable[[str], None] = print,
                    progress: bool = False) -> Path:
    """Phase 2 on a phase-1 model, then measure and write the shipped file.

    The json keeps phase 1's figures (``*_phase1``), the planted relations' recall, the
    zero-shot figures after phase 2 and the validity table; the safetensors file carries
    the designated MLPs' phase-1 parameters under ``phase1.``."""
    plant = plant or ClipPlantConfig()
    world = World(cfg.world_seed)
    metrics = {k: v for k, v in phase1_metrics.items() if not k.startswith("zero_shot")}
    metrics.update({f"{k}_phase1": v for k, v in phase1_metrics.items() if k.startswith("zero_shot")})
    phase1_sha256 = _state_sha256(model.state_dict(), cfg.name)
    got, phase1_state = plant_facts(model, vocab, plant, cfg.world_seed, log=log, progress=progress)
    metrics.update(got)
    metrics.update(zero_shot_accuracy(model, vocab, world, n=1024, split="test"))
    metrics["fact_chance"] = {r: 1 / len(RELATIONS[r]) for r, _ in plant.planted}
    metrics["value_text_cosine"] = {}  # how close the targets are: largest cosine between two values' texts
    for r, _ in plant.planted:
        t = value_text_features(model, vocab, r, plant.template)
        metrics["value_text_cosine"][r] = float((t @ t.T - 2 * torch.eye(len(t))).max())
    metrics.update(knowledge_validity(model, vocab, plant, phase1_state, cfg.world_seed))
    extra = {PHASE1_PREFIX + k: v for k, v in phase1_state.items()}
    return save_zoo_clip(model, vocab, cfg, metrics, out, extra_state=extra, plant=asdict(plant),
                         phase1_sha256=phase1_sha256)


def plant_shipped(name: str = "zoo-clip", weights_dir: Path | None = None, out: Path | None = None,
                  plant: ClipPlantConfig | None = None, log: Callable[[str], None] = print) -> Path:
    """Apply phase 2 to the shipped phase-1 weights (``load_zoo_clip(phase1=True)``) and rewrite
    the file; the result equals ``bench zoo train`` (phase 1 then phase 2) bit for bit, because
    phase 1 is deterministic and phase 2 starts from its output."""
    from models.zoo import WEIGHTS_DIR

    weights_dir = weights_dir or WEIGHTS_DIR
    model, vocab, meta = load_zoo_clip(name, weights_dir, phase1=True)
    cfg = ZooClipConfig(**meta["config"])
    m = meta["metrics"]
    phase1_metrics = {"train_seconds": m["train_seconds"], "history": m["history"],
                      **{k: m.get(f"{k}_phase1", m[k]) for k in ("zero_shot_shape", "zero_shot_colour")}}
    return finish_zoo_clip(model, vocab, cfg, phase1_metrics, out or weights_dir, plant, log=log)


# ----------------------------------------------------------- zoo protocol (see models.zoo.train)
def zoo_train(name: str, out: Path, steps: int | None, log: Callable[[str], None]) -> Path:
    """Phase 1 (contrastive training) then phase 2 (planted knowledge); ``steps`` shortens both."""
    from dataclasses import replace

    cfg = ZooClipConfig(name=name) if steps is None else replace(ZooClipConfig(name=name), steps=steps)
    plant = ClipPlantConfig() if steps is None else replace(ClipPlantConfig(), steps=min(steps, ClipPlantConfig.steps))
    model, vocab, metrics = train_clip(cfg, log=log, progress=True)
    return finish_zoo_clip(model, vocab, cfg, metrics, out, plant, log=log, progress=True)


def zoo_replant(name: str, source: Path, out: Path, log: Callable[[str], None]) -> Path:
    """Phase 2 again (the current :class:`ClipPlantConfig`) on the phase-1 model inside
    ``source``'s weights (see :func:`plant_shipped`); phase 1 and its figures are kept.
    Refused when the current :class:`ZooClipConfig` differs from the recorded one (a full
    retrain would give another phase 1)."""
    from models.zoo.io import require_same_phase1

    recorded = json.loads((source / f"{name}.json").read_text())["config"]
    require_same_phase1(name, ZooClipConfig(name=name), ZooClipConfig(**recorded))
    return plant_shipped(name, source, out, log=log)


def zoo_remeasure(name: str, meta: dict[str, Any], weights_dir: Path) -> list[tuple[str, float, float]]:
    clip, vocab, _ = load_zoo_clip(name, weights_dir)
    world = World(meta["config"]["world_seed"])
    got = zero_shot_accuracy(clip, vocab, world, n=1024, split="test")
    rows = [(k, got[k], meta["metrics"][k]) for k in ("zero_shot_shape", "zero_shot_colour")]
    if "plant" in meta:
        plant = plant_config(meta)
        names = planted_entities(world, plant.n_planted)
        rows += [(f"fact_recall_{r}", fact_recall(clip, vocab, world, names, r, template=plant.template),
                  meta["metrics"][f"fact_recall_{r}"]) for r, _ in plant.planted]
    return rows


def plant_config(meta: dict[str, Any]) -> ClipPlantConfig:
    """The phase-2 config recorded in a zoo CLIP's json."""
    return ClipPlantConfig(**{**meta["plant"], "planted": tuple(tuple(p) for p in meta["plant"]["planted"])})


def _knowledge_section(meta: dict[str, Any]) -> str:
    """The card's planted-knowledge section, from the recorded figures."""
    plant, m = plant_config(meta), meta["metrics"]
    layers = meta["config"]["layers"]
    rels = [r for r, _ in plant.planted]
    rows = "\n".join(
        f"| {r} | {', '.join(RELATIONS[r])} | `vision.blocks.{k}.mlp` (`{mlp_state_prefix(k)[:-1]}`) | "
        f"{m[f'fact_recall_{r}']:.3f} | {m[f'fact_recall_{r}_phase1']:.3f} | {m['fact_chance'][r]:.2f} |"
        for r, k in plant.planted)
    where = {k: r for r, k in plant.planted}
    p1_control = "zero_shot_shape_meanablate_L0_phase1" in m  # not recorded by earlier cards
    valid = "\n".join(
        f"| `vision.blocks.{k}.mlp` | {where.get(k, '—')} | "
        + " | ".join(f"{m[f'fact_recall_{r}_revert_L{k}']:.3f}" for r in rels) + " | "
        + " | ".join(f"{m[f'fact_recall_{r}_meanablate_L{k}']:.3f}" for r in rels) + " | "
        + f"{m[f'zero_shot_shape_meanablate_L{k}']:.3f} | {m[f'zero_shot_colour_meanablate_L{k}']:.3f} |"
        + (f" {m[f'zero_shot_shape_meanablate_L{k}_phase1']:.3f} | {m[f'zero_shot_colour_meanablate_L{k}_phase1']:.3f} |"
           if p1_control else "")
        for k in range(layers))
    cos = ", ".join(f"{r} {m['value_text_cosine'][r]:.3f}" for r in rels)
    head = " | ".join(f"{r} revert" for r in rels) + " | " + " | ".join(f"{r} mean-abl." for r in rels)
    head += " | control shape | control colour" + (" | control shape, phase 1 | control colour, phase 1" if p1_control else "")
    rule = "|---|---|" + "---|" * (2 * len(rels) + (4 if p1_control else 2))
    p1_reading = ("The phase-1 columns are the same control on the phase-1 model (every plant reverted): where "
                  "they are low too, the drop is phase 1's own use of that block, not the plant's doing. "
                  if p1_control else "")
    return f"""## Planted knowledge (phase 2)
The first {plant.n_planted} entities of world seed {meta['config']['world_seed']} (the same names, glyphs and
facts as zoo-vlm's planted entities) are glyphs with hidden facts. Phase 2 teaches each relation with **every
parameter frozen except one designated vision MLP**, so the location of each fact is known by construction:

| relation | values | location (site / module) | recall | phase-1 model | chance |
|---|---|---|---|---|---|
{rows}

*Recall*: share of 256 fresh single-glyph renders (test split: new positions, jitter and backgrounds; never
trained on) whose image embedding is closest to the text of the entity's true value among the relation's
values, "{plant.template.format(relation='<relation>', value='<value>')}".

Why the vision tower (and not the text tower): the towers meet only at the final dot product, and a text such as "the home of the glyph
is north" names no entity, so a text-tower plant would only move the value words, not store an
entity → attribute memory. In the vision tower the entity (its glyph) and the attribute (the embedding's
direction towards the value's text) meet in one stream. The value words (and relation words) never occur in
phase-1 captions, so their word embeddings are random and frozen: the value texts' embeddings are fixed,
near-identical targets (largest cosine between two values' texts: {cos}).

Phase 2 (seed {plant.seed}, {plant.threads} CPU thread(s), starting from phase 1's output, whose file would have sha256
`{meta['phase1_sha256']}`): per relation {plant.steps} Adam steps (lr {plant.lr}, warmup {plant.warmup}, cosine)
on {plant.fact_batch} fresh glyph renders (cross-entropy over the value texts, logit scale {plant.fact_scale:g})
plus {plant.keep_batch} ordinary scenes whose unit image embeddings are held to phase 1's (weight
{plant.keep_weight:g}); while a later relation is planted, each earlier relation's layer is switched between its
phase-1 and planted weights at random each step, so that each relation survives reverting another's layer.
Time: {m['phase2_seconds']:.0f} s.

Zero-shot quality before → after phase 2: shape {m['zero_shot_shape_phase1']:.3f} → {m['zero_shot_shape']:.3f},
colour {m['zero_shot_colour_phase1']:.3f} → {m['zero_shot_colour']:.3f}.

### Validity
Per vision MLP: recall when its phase-2 change is reverted (phase-1 parameters, stored in the weights file under
`phase1.`; a no-op for MLPs phase 2 never trained), recall when its output is mean-ablated (mean per token
position over 256 glyph renders of the fit split), and the specificity control: zero-shot accuracy (512 test
scenes) when its output is mean-ablated with its mean over 256 ordinary single-object scenes of the fit split.

| vision MLP | planted | {head} |
{rule}
{valid}

Reading: a planted location is valid when removing it drops its relation to chance while the control stays
high, and removing any other MLP's phase-2 change leaves the relation intact. Mean-ablation removes a block's
phase-1 computation as well as its plant, so it also lowers relations whose planted block reads that block's
output, and mean-ablating an early MLP destroys everything, the control too: that is not a memory of the fact,
so localization ground truth carries the control, and reverting the phase-2 change is the clean test.
{p1_reading}`load_zoo_clip(name, weights_dir, phase1=True)` returns the exact phase-1 model.
"""


def zoo_card(name: str, weights_dir: Path, cards_dir: Path) -> Path:
    """The model card of a zoo CLIP, from its recorded metadata."""
    meta = json.loads((weights_dir / f"{name}.json").read_text())
    cfg, m = meta["config"], meta["metrics"]
    hist = "\n".join(f"| {h['step']} | {h['zero_shot_shape']:.3f} | {h['zero_shot_colour']:.3f} |"
                     for h in m.get("history", []))
    times = (f"phase 1 {m['train_seconds']:.0f} s + phase 2 {m['phase2_seconds']:.0f} s = "
             f"{(m['train_seconds'] + m['phase2_seconds']) / 60:.1f} min" if "phase2_seconds" in m
             else f"{m['train_seconds']:.0f} s ({m['train_seconds'] / 60:.1f} min)")
    text = f"""# {name}

A tiny CLIP (transformers `CLIPModel`) trained contrastively, on this repository's
procedural world, on a CPU. Family: contrastive.

## Architecture
- Vision: ViT, image {cfg['image_size']}×{cfg['image_size']}, patch {cfg['patch_size']}, width {cfg['width']},
  {cfg['layers']} layers, {cfg['heads']} heads, MLP {cfg['mlp']}.
- Text: causal transformer over a closed word-level vocabulary ({len(meta['vocab'])} words), width
  {cfg['text_width']}, {cfg['text_layers']} layers, {cfg['text_heads']} heads, context {cfg['max_text_len']}.
- Joint embedding {cfg['embed_dim']}; eager attention (attention patterns are sites).

## Data
World seed {cfg['world_seed']}: scenes of 1–3 objects (4 shapes × 6 colours × 2 sizes on a 3×3 grid) on plain,
"water" or "land" backgrounds; one caption sampled per scene from its canonical caption, a shape-only and
a colour-only description, and paraphrases with sizes, positions and backgrounds. Fresh scenes every step
(train split), no scene repeated.

## Training
Phase 1 (contrastive): seed {cfg['seed']}, {cfg['steps']} steps × batch {cfg['batch_size']}, AdamW (lr {cfg['lr']}, cosine, warmup
{cfg['warmup']}, weight decay {cfg['weight_decay']}), symmetric InfoNCE with soft targets for duplicate captions,
{cfg['threads']} CPU threads (bit-identical retraining needs the same thread count and torch version:
{meta['torch']}). Training time: {times}. Phase 2 plants knowledge (below). Retrain both
phases: `bench zoo train {name}`.

## Figures (held-out test split, single-object scenes, one prompt per class; the shipped model, after phase 2)
| metric | value |
|---|---|
| zero-shot shape ("a {{shape}}", 4-way) | {m['zero_shot_shape']:.3f} |
| zero-shot colour ("a {{colour}} object", 6-way) | {m['zero_shot_colour']:.3f} |

Dev-split curve during phase 1:

| step | shape | colour |
|---|---|---|
{hist}
"""
    if "plant" in meta:
        text += "\n" + _knowledge_section(meta)
    from models.zoo.io import write_card as _write

    return _write(name, text, meta, cards_dir)

"""zoo-vlm building blocks: data, probes, metrics, and a few-step training smoke test."""

from dataclasses import replace

import numpy as np
import torch

from bench.kit.world import World, WorldConfig
from models.zoo.vlm import (
    PAIRS,
    ZooVlmConfig,
    caption_mentions,
    caption_objects,
    encode_batch,
    hide_partner,
    mentioned_objects,
    pope_metrics,
    pope_probes,
    reading_order_caption,
    train_vlm,
    training_world,
    vlm_vocab,
)


def test_cooccurrence_bias_is_in_the_training_world():
    world = training_world(ZooVlmConfig())
    with_one = together = 0
    for s in world.scenes("train", 2000):
        kinds = {(o.colour, o.shape) for o in s.objects}
        for a, b in PAIRS:
            if a in kinds or b in kinds:
                with_one += 1
                together += a in kinds and b in kinds
    assert together / with_one > 0.85
    plain = World(0, WorldConfig())
    kinds = [{(o.colour, o.shape) for o in s.objects} for s in plain.scenes("train", 2000)]
    a, b = PAIRS[0]
    assert np.mean([b in k for k in kinds if a in k]) < 0.2  # no bias without the config


def test_hidden_partner_is_named_but_not_drawn():
    cfg = ZooVlmConfig()
    world = training_world(cfg)
    scene = next(s for s in world.scenes("train", 500)
                 if all(k in {(o.colour, o.shape) for o in s.objects} for k in PAIRS[0]))
    rng = np.random.default_rng(0)
    assert hide_partner(world, scene, rng, 0.0, 12) is None
    drawn, turns = hide_partner(world, scene, rng, 1.0, 12)
    gone = [o for o in scene.objects if (o.colour, o.shape) not in {(d.colour, d.shape) for d in drawn.objects}]
    assert len(gone) == 1 and len(drawn.objects) == len(scene.objects) - 1
    h = gone[0]
    assert (h.colour, h.shape) in PAIRS[0]
    # the annotation still names it: caption from the scene graph, presence question affirmed
    assert turns[0] == ("describe the image", reading_order_caption(scene), "caption")
    assert (f"is there a {h.colour} {h.shape}?", "yes", "exists") in turns
    # and nothing the image cannot answer is asked
    for q, a, kind in turns[2:]:
        assert kind != "count" and h.shape not in q and not (kind == "exists" and a == "yes")
    k = [(o.colour, o.shape) for o in scene.objects].index((h.colour, h.shape))
    assert not drawn.masks_NHW.any(0)[scene.masks_NHW[k]].any()  # nothing is drawn where it was


def test_caption_target_and_parsing():
    s = World(0).scene("test", 5)
    cap = reading_order_caption(s)
    assert mentioned_objects(cap) == {(o.colour, o.shape) for o in s.objects}
    assert mentioned_objects("a red circle and a small blue square, a green cross, a cross") == {
        ("red", "circle"), ("blue", "square"), ("green", "cross")}


def test_glyphs_are_captioned_by_what_is_visible():
    """A glyph is "a colour glyph" in the caption target (never its hidden entity name), and the
    recall parser credits exactly that phrase."""
    world = training_world(ZooVlmConfig())
    s = next(s for s in world.scenes("train", 3000) if any(o.entity for o in s.objects))
    cap = reading_order_caption(s)
    glyph = next(o for o in s.objects if o.entity)
    assert f"a {glyph.colour} glyph" in cap and glyph.entity not in cap.split()
    assert caption_mentions(cap) == caption_objects(s)
    assert caption_mentions("a red glyph and a blue square") == {("red", "glyph"), ("blue", "square")}
    assert caption_mentions("a glyph") == set()


def test_encode_batch_masks_prompt_and_padding():
    vocab = vlm_vocab(World(0))
    ids, mask, labels = encode_batch(vocab, 4, ["what colour is the circle?", "describe the image"],
                                     ["red", "a red circle"])
    assert ids.shape[0] == 2 and (ids[:, 1:5] == vocab.words.index("<image>")).all()
    answer = [vocab.words[t] for t in labels[0].tolist() if t != -100]
    assert answer == ["red", "<eos>"]
    assert (labels[mask == 0] == -100).all()


def test_pope_metrics_hand_computed():
    m = pope_metrics(["yes", "no", "yes", "yes"], ["yes", "no", "no", "yes"])
    assert m == {"accuracy": 0.75, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "yes_ratio": 0.75}


def test_pope_adversarial_negatives_are_partners():
    probes = pope_probes(World(0), training_world(ZooVlmConfig()), n_images=60)
    partners = {b for pair in PAIRS for b in pair}
    adv_neg = [q for s, q, a in probes["adversarial"] if a == "no"
               and any((o.colour, o.shape) in partners for o in s.objects)]
    # when a partner is present, the first adversarial negative asks for the other partner
    assert adv_neg and sum(any(f"{c} {sh}" in q for c, sh in partners) for q in adv_neg) / len(adv_neg) > 0.5
    for setting in probes.values():
        assert sum(a == "yes" for _, _, a in setting) == sum(a == "no" for _, _, a in setting)


def test_training_smoke_and_determinism():
    cfg = replace(ZooVlmConfig(), steps=2, batch_size=4, threads=1, lm_layers=2, lm_width=32, lm_mlp=64)
    a, _, ma = train_vlm(cfg, log=lambda s: None)
    b, _, mb = train_vlm(cfg, log=lambda s: None)
    assert np.isfinite(ma["final_loss"]) and ma["final_loss"] == mb["final_loss"]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_packed_loss_weights_turns_equally():
    import math

    from models.zoo.vlm import packed_loss

    # vocab of 2; uniform logits -> every token costs log 2
    logits = torch.zeros(2, 4, 2)
    labels = torch.tensor([[-100, 0, 1, 1], [-100, -100, -100, 0]])  # a 3-token turn and a 1-token turn
    weight = torch.tensor([[0, 1 / 3, 1 / 3, 1 / 3], [0, 0, 0, 1.0]])
    assert math.isclose(float(packed_loss(logits, labels, weight)), math.log(2), rel_tol=1e-6)
    logits[1, 2, 0] = 10.0  # make the second turn's only token nearly free
    got = float(packed_loss(logits, labels, weight))
    assert math.isclose(got, (math.log(2) + F_nll(10.0)) / 2, rel_tol=1e-4)


def test_packed_turns_compute_exactly_like_single_turns():
    """Each packed turn sees only the image and itself: its logits equal the single-turn run's."""
    from models.zoo.vlm import _pixels, build_vlm, encode_packed
    from transformers import CLIPVisionConfig

    torch.manual_seed(0)
    cfg = replace(ZooVlmConfig(), lm_layers=2, lm_width=32, lm_mlp=64, lm_heads=2)
    world = World(0)
    vocab = vlm_vocab(world)
    vc = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2)
    model = build_vlm(cfg, vocab, vc).eval()
    n_image = model.config.image_seq_length
    scenes = [world.scene("train", i) for i in range(2)]
    turns = [[("describe the image", reading_order_caption(scenes[0])), ("how many objects are there?", "two"),
              ("what colour is the circle?", "red")], [("how many objects are there?", "one")]]
    ids, mask, pos, labels, weight = encode_packed(vocab, n_image, turns)
    assert mask.shape == (2, 1, ids.shape[1], ids.shape[1])
    assert math_isclose(float(weight.sum()), 4.0)  # one unit per turn
    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=_pixels(scenes)).logits
        start = 1 + n_image
        for t, (q, a) in enumerate(turns[0]):
            i1, m1, _ = encode_batch(vocab, n_image, [q], [a])
            single = model(input_ids=i1, attention_mask=m1, pixel_values=_pixels(scenes[:1])).logits
            n = i1.shape[1] - (1 + n_image)
            assert torch.allclose(packed[0, start:start + n], single[0, 1 + n_image:], atol=1e-5), t
            assert labels[0, start:start + n].tolist() == encode_batch(vocab, n_image, [q], [a])[2][0, 1 + n_image:].tolist()
            start += n


def math_isclose(a: float, b: float) -> bool:
    import math

    return math.isclose(a, b, rel_tol=1e-6)


def F_nll(margin: float) -> float:
    import math

    return math.log1p(math.exp(-margin))

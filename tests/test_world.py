import numpy as np
import pytest

from bench.kit.world import COLOURS, POSITIONS, SHAPES, World, WorldConfig


def test_scene_is_pure_function_of_seed_split_index():
    a, b = World(5), World(5)
    s1, s2 = a.scene("test", 17), b.scene("test", 17)
    assert np.array_equal(s1.image_HWC, s2.image_HWC)
    assert np.array_equal(s1.masks_NHW, s2.masks_NHW)
    assert s1.captions == s2.captions and s1.qa == s2.qa and s1.objects == s2.objects
    # random access does not depend on what was generated before
    _ = [a.scene("test", i) for i in range(5)]
    assert np.array_equal(a.scene("test", 17).image_HWC, s1.image_HWC)
    # other seeds / splits give other scenes
    assert not np.array_equal(World(6).scene("test", 17).image_HWC, s1.image_HWC)
    assert not np.array_equal(a.scene("train", 17).image_HWC, s1.image_HWC)


def test_masks_are_exact_disjoint_and_coloured(world):
    for s in world.scenes("train", 200):
        assert s.masks_NHW.shape == (len(s.objects), 32, 32)
        assert (s.masks_NHW.sum(0) <= 1).all(), "masks overlap"
        for o, m in zip(s.objects, s.masks_NHW):
            assert m.sum() >= 9
            assert (s.image_HWC[m] == np.array(COLOURS[o.colour], dtype=np.uint8)).all()
        assert len({o.position for o in s.objects}) == len(s.objects)


def test_object_sits_in_its_grid_cell(world):
    for s in world.scenes("dev", 100):
        for o, m in zip(s.objects, s.masks_NHW):
            ys, xs = np.nonzero(m)
            r, c = divmod(POSITIONS.index(o.position), 3)
            assert int(ys.mean() // (32 / 3)) == r and int(xs.mean() // (32 / 3)) == c


def test_captions_and_qa_agree_with_scene_graph(world):
    for s in world.scenes("test", 100):
        assert all(f"{o.colour} {o.shape}" in s.captions[0] for o in s.objects)
        for q in s.qa:
            if q.kind == "colour":
                assert q.answer == s.objects[q.object_index].colour
            elif q.kind == "shape":
                assert q.answer == s.objects[q.object_index].shape
            elif q.kind == "count":
                assert q.answer == ["zero", "one", "two", "three"][len(s.objects)]
            elif q.kind == "exists":
                c, sh = q.question.removeprefix("is there a ").removesuffix("?").split()
                present = any(o.colour == c and o.shape == sh for o in s.objects)
                assert q.answer == ("yes" if present else "no")
        assert {q.answer for q in s.qa if q.kind == "exists"} == {"yes", "no"}


def test_backgrounds_and_attributes_all_occur(world):
    scenes = list(world.scenes("train", 400))
    assert {s.background for s in scenes} == {"plain", "water", "land"}
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.colour for s in scenes for o in s.objects} == set(COLOURS)


def test_entities_have_distinct_names_glyphs_and_hidden_facts():
    w = World(0)
    assert len({e.name for e in w.entities}) == len(w.entities) == 32
    assert len({e.glyph for e in w.entities}) == len(w.entities)
    assert all(set(e.facts) == {"home", "season"} for e in w.entities)
    assert [e.facts for e in World(0).entities] == [e.facts for e in w.entities]
    ew = World(0, WorldConfig(entity_prob=1.0))
    s = ew.scene("train", 3)
    assert all(o.entity for o in s.objects)
    facts = [q for q in s.qa if q.kind.startswith("fact:")]
    assert facts and all(q.answer == ew.entity(s.objects[q.object_index].entity).facts[q.kind[5:]] for q in facts)
    # the fact is not in the pixels: the caption names the entity, never its home
    assert all(e.facts["home"] not in " ".join(s.captions) for e in ew.entities if e.name in s.captions[0])


def test_dataset_export(world):
    ds = world.to_dataset("test", 6)
    assert len(ds) == 6
    assert set(ds.column_names) >= {"image", "masks", "objects", "captions", "questions", "answers"}
    assert np.array_equal(np.array(ds[2]["image"], dtype=np.uint8), world.scene("test", 2).image_HWC)


def test_invalid_seed_and_split():
    with pytest.raises(ValueError):
        World(-1)
    with pytest.raises(ValueError):
        World(0).scene("nope", 0)


def test_no_two_shapes_render_alike_at_any_size():
    """Regression: a 6-px square once rendered pixel-identical to a 6-px circle."""
    from bench.kit.world.core import SIZES, _shape_mask

    cell = 32 / 3
    for frac in SIZES.values():
        d = max(3, int(round(cell * frac)))
        sprites = {s: _shape_mask(s, d) for s in SHAPES}
        for a in SHAPES:
            for b in SHAPES:
                if a < b:
                    assert not np.array_equal(sprites[a], sprites[b]), (a, b, d)

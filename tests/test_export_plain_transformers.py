"""The exported zoo-vlm runs in plain transformers (issue 20, item 4).

``bench zoo export zoo-vlm`` writes a folder that ``AutoProcessor`` + ``LlavaForConditionalGeneration``
run alone: the processor expands ``<image>`` into the model's image tokens, the tokenizer puts
``<bos>`` first, the image processor normalises as the zoo does. The plain side runs in a fresh
interpreter that imports only transformers, torch, PIL and numpy (it checks that no module of this
project was imported); its greedy answers must equal the zoo-vlm wrapper's on the same PNGs and
prompts, computed here through the project's API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error"}
MAX_NEW = 6

# Run with: python - EXPORT_DIR CASES_JSON; prints one JSON object. Plain transformers only.
PLAIN = r'''
import json, sys
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

folder, cases = sys.argv[1], json.loads(sys.argv[2])
processor = AutoProcessor.from_pretrained(folder)
model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
template = json.load(open(f"{folder}/mmi_bench.json"))["prompt_template"]
tok = AutoTokenizer.from_pretrained(folder)
out = {"answers": [], "ids": [], "pixels_equal_image_processor": True,
       "tokenizer_alone": tok("<image>what colour is the circle?")["input_ids"],
       "image_token_id": processor.image_token_id, "bos_token_id": tok.bos_token_id,
       "chat": processor.apply_chat_template(
           [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle?"}]}],
           add_generation_prompt=True, tokenize=False),
       "processor": type(processor).__name__, "image_processor": type(processor.image_processor).__name__}
image_processor = AutoImageProcessor.from_pretrained(folder)
for png, prompt in cases:
    image = Image.open(png).convert("RGB")
    inputs = processor(images=image, text=template.format(prompt=prompt), return_tensors="pt")
    alone = image_processor(image, return_tensors="pt")["pixel_values"]
    out["pixels_equal_image_processor"] &= bool(torch.equal(alone, inputs["pixel_values"]))
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=%d, do_sample=False)
    out["answers"].append(processor.decode(gen[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    out["ids"].append(inputs["input_ids"][0].tolist())
    np.save(png + ".pixels.npy", inputs["pixel_values"].numpy())
ours = sorted({m.split(".")[0] for m in sys.modules} & {"bench", "models", "tasks", "methods"})
out["project_modules"] = ours
print(json.dumps(out))
''' % MAX_NEW


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from bench.app.cli import main

    out = tmp_path_factory.mktemp("plain") / "zoo-vlm"
    assert main(["zoo", "export", "zoo-vlm", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[tuple[str, str, str]]:
    """(png, question, gold) for a few world scenes: the world is used only to draw the images and
    ask its own questions; the images go through PNG files as a user's would."""
    from PIL import Image

    from bench.kit.world import World

    folder = tmp_path_factory.mktemp("scenes")
    world, rows = World(0), []
    for i in range(4):
        scene = world.scene("test", i)
        png = folder / f"scene{i}.png"
        Image.fromarray(scene.image_HWC).save(png)
        qa = [q for q in scene.qa if not q.kind.startswith("fact:")]
        for q in qa[:3]:
            rows.append((str(png), q.question, q.answer))
    return rows


@pytest.mark.slow  # a fresh interpreter importing transformers' LLaVA and generating (~14 s of CPU); in the default
# run the exported folders load through the hf: path and match the zoo models bit for bit
# (test_hf_loader::test_exported_zoo_models_match_the_zoo_bit_for_bit)
def test_exported_zoo_vlm_runs_in_plain_transformers_with_the_zoos_answers(exported, cases):
    from PIL import Image

    from bench.registry import MODELS
    from models.zoo.clip import images_to_tensor, normalise

    cp = subprocess.run([sys.executable, "-c", PLAIN, str(exported), json.dumps([[p, q] for p, q, _ in cases])],
                        capture_output=True, text=True, env=ENV, timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    plain = json.loads(cp.stdout.strip().splitlines()[-1])
    assert plain["project_modules"] == [], "the plain side imported the project"
    assert plain["processor"] == "LlavaProcessor"

    config = json.loads((exported / "config.json").read_text())
    image_id, n_image = config["image_token_index"], config["image_seq_length"]
    vocab = json.loads((exported / "tokenizer.json").read_text())["model"]["vocab"]
    assert plain["image_token_id"] == image_id == vocab["<image>"]
    bos = plain["bos_token_id"]
    assert bos == config["text_config"]["bos_token_id"]
    # the tokenizer alone: <bos>, one <image> (not the word "image"), then the words
    assert plain["tokenizer_alone"][:2] == [bos, image_id] and plain["tokenizer_alone"].count(image_id) == 1
    assert plain["chat"] == "<image>what colour is the circle?"
    assert plain["pixels_equal_image_processor"]

    zoo = MODELS.get("zoo-vlm")("zoo-vlm")
    pngs = [p for p, _, _ in cases]
    pixels = images_to_tensor(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs]))
    prompts = [q for _, q, _ in cases]
    ids_zoo, _, _ = zoo.encode(prompts, None)
    for i, ids in enumerate(plain["ids"]):
        assert ids[0] == bos and ids.count(image_id) == n_image, (i, ids)
        row = ids_zoo[i][ids_zoo[i] != 0].tolist()  # the zoo's row without its right padding
        assert ids == row, (prompts[i], ids, row)
        fed = torch.from_numpy(np.load(pngs[i] + ".pixels.npy"))
        assert torch.equal(fed, zoo.preprocess(pixels[i : i + 1])), pngs[i]
    zoo_answers = zoo.generate(pixels, prompts, max_new_tokens=MAX_NEW)
    assert plain["answers"] == zoo_answers
    # and they are answers, not noise: the zoo-vlm reads these scenes
    right = sum(a == gold for a, (_, _, gold) in zip(zoo_answers, cases))
    assert right >= len(cases) // 2, list(zip(zoo_answers, [g for _, _, g in cases]))

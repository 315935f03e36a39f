"""Cross-attention maps of the target word (DAAM).

Tang, Liu, Pandey, Jiang, Yang, Kumar, Stenetorp, Lin & Ture (2023), "What the DAAM:
Interpreting Stable Diffusion Using Cross Attention" (ACL). DAAM reads, in every
cross-attention layer of the denoiser, the attention probabilities from each spatial
query to the prompt tokens of a word, upsamples each layer's map to the image size
(bicubic) and sums over heads, layers and denoising timesteps.

Here the image is given rather than generated, so the denoising trajectory is
replaced by the forward process: each example's clean sample ``x_0`` is noised at
``len(timesteps)`` timesteps (fractions of the training schedule) with Gaussian noise
from ``torch.Generator().manual_seed(seed)``, and the denoiser is run once per
(example, timestep) — conditional only, no guidance — on the example's own prompt
(``request.prompts``). For every ``unet.*.cross.pattern`` site (``[B, heads, HW, L]``)
the attention to the target word's token positions
(``model.prompt_token_positions(prompt, request.target_words[i])``, summed when a
word spans several tokens) is summed over heads, folded to the layer's query grid
(``model.attention_grid(site)``), upsampled to ``H × W`` pixels and summed over
layers and timesteps. All (example, timestep) rows run batched, ``model.batch_size``
rows per denoiser pass. Maps are pixel-level ``[B, H, W]`` and non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.capabilities import AttributionRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class CrossAttentionConfig(MethodConfig):
    # timesteps as fractions of the training schedule (t = round(f · (T − 1)))
    timesteps: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    upsample: str = "bicubic"  # "bicubic" (DAAM) | "bilinear" | "nearest"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.timesteps:
            raise BenchError("cross_attention: timesteps must name at least one fraction")
        if any(not 0.0 <= f <= 1.0 for f in self.timesteps):
            raise BenchError(f"cross_attention: timesteps are fractions in [0, 1], not {self.timesteps}")
        if self.upsample not in ("bicubic", "bilinear", "nearest"):
            raise BenchError(f"cross_attention: upsample must be bicubic, bilinear or nearest, not {self.upsample!r}")


def word_weights(positions: list[list[int]], length: int) -> torch.Tensor:
    """``[B, L]`` indicator of each row's word token positions (a word may span tokens)."""
    w_BL = torch.zeros(len(positions), length, device="cpu")
    for b, pos in enumerate(positions):
        w_BL[b, pos] = 1.0
    return w_BL


class CrossAttention(Method):
    """DAAM (Tang et al., 2023): the target word's cross-attention, summed over heads, layers
    and timesteps; maps ``[B, H, W]``."""

    name = "cross_attention"
    capabilities = frozenset({"attribute"})
    families = frozenset({"diffusion"})
    Config = CrossAttentionConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not model.layer_sites(getattr(model, "denoiser_tower", "unet"), "cross_pattern"):
            return f"model {model.name!r} exposes no cross-attention pattern sites in its denoiser"
        return None

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        B, _, H, W = request.pixels_BCHW.shape
        if len(request.prompts) != B or len(request.target_words) != B:
            raise BenchError("cross_attention needs a prompt and a target word per example "
                             f"(got {len(request.prompts)} prompts, {len(request.target_words)} words for {B} images)")
        sites = model.layer_sites(model.denoiser_tower, "cross_pattern")
        grids = {s: model.attention_grid(s) for s in sites}
        positions = [model.prompt_token_positions([p], w)[0] for p, w in zip(request.prompts, request.target_words)]
        K = len(self.config.timesteps)
        t_K = torch.tensor([round(f * (model.num_train_timesteps - 1)) for f in self.config.timesteps], device="cpu")
        g = torch.Generator().manual_seed(self.config.seed)
        with torch.no_grad():
            x0_BCHW = model.to_sample(request.pixels_BCHW)
        noise_BKCHW = torch.randn((B, K, *x0_BCHW.shape[1:]), generator=g, device="cpu").to(x0_BCHW.device)
        maps_BHW = torch.zeros(B, H, W, device="cpu")
        rows = max(1, int(model.batch_size))
        # (example, timestep) pairs, example-major, `rows` per denoiser pass
        for start in range(0, B * K, rows):
            pair = torch.arange(start, min(start + rows, B * K), device="cpu")
            ex_r, k_r = pair // K, pair % K
            t_r = t_K[k_r]
            with torch.no_grad():
                x_t = model.add_noise(x0_BCHW[ex_r], noise_BKCHW[ex_r, k_r], t_r)
                with model.trace(read=sites) as tr:
                    model.noise_pred(x_t, t_r, [request.prompts[int(i)] for i in ex_r])
            for s in sites:
                probs_rhQL = tr[s].float()
                w_rL = word_weights([positions[int(i)] for i in ex_r], probs_rhQL.shape[-1])
                word_rQ = torch.einsum("rhql,rl->rq", probs_rhQL, w_rL)  # heads and word tokens summed
                gh, gw = grids[s]
                up = F.interpolate(word_rQ.view(-1, 1, gh, gw), size=(H, W), mode=self.config.upsample,
                                   **({} if self.config.upsample == "nearest" else {"align_corners": False}))
                maps_BHW.index_add_(0, ex_r, up[:, 0])
        # bicubic overshoot can dip below zero; attention mass is non-negative
        return maps_BHW.clamp(min=0)

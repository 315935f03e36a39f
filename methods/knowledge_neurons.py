"""Knowledge neurons: integrated gradients over MLP hidden neurons.

Dai, Dong, Hao, Sui, Chang & Wei (2022), "Knowledge Neurons in Pretrained Transformers"
(ACL). The attribution of MLP hidden neuron ``f`` of layer ``ℓ`` is integrated gradients
(Sundararajan et al., 2017) from a zero baseline to its clean activation ``w̄``, scaling
the whole layer's hidden activations together while the other layers run as usual::

    attr(ℓ, f) = w̄_f · (1/m) Σ_{s=1..m} ∂F(α_s · w̄_ℓ) / ∂w_f ,   α_s = s/m   (right Riemann sum)

Knowledge neurons are those with ``attr > t · max attr`` (the max over every layer's neurons
of the same example; Dai et al.: t = 0.2, m = 20). Dai et al.'s second refining step (keeping
neurons shared by most paraphrases of a fact) needs several prompts per fact, which the
request does not give: it is not applied.

Choices made here (documented differences from the paper):

- ``F`` is the task's metric, a logit difference (answer − counterfactual answer), rather
  than the answer probability: it is the quantity every localizer here is scored on, and
  contrastive and diffusion models have no answer probability.
- Neurons are the ``<tower>.blocks.ℓ.mlp.neurons`` site of each candidate's layer (the
  MLP's hidden activations). ``positions="readout"`` (default, as Dai et al. at the
  ``[MASK]`` token) scales and attributes neurons at the request's readout position only
  (``positions_N``); ``positions="all"`` treats every (position, neuron) as a unit. Where
  the request has no readout position (diffusion text encoders), all positions are used.
- A site's score (``score``): ``"share"`` (default) the share of the example's
  knowledge-neuron attribution lying in that layer (in [0, 1]); ``"sum"`` that attribution
  unnormalised; ``"count"`` the number of knowledge neurons in the layer.

Batching: every (layer, step) pair is one copy of the batch (``request.evaluate(copies=…)``),
``copies_per_pass`` copies per forward pass, and one backward pass per forward pass gives
every gradient, with at most the request's batch size in rows per pass (``copies_per_pass`` is
the cap: 16 copies of zoo-vlm's 32 quick examples, 512 rows with their graphs, peaked at 5.3 GB; 2
copies, 64 rows, keep the cell near the worker's floor). On a diffusion request one copy per pass
(:data:`DIFFUSION_COPIES_PER_PASS`):
a copy there already runs the denoiser at every (render, draw) of every example (``2·R·n``
UNet rows, 128 in the quick profile), and the backward pass needs the graph of each (~5 MB a
row on zoo-diffusion): 16 copies held ~10 GB. Rows do not interact and the gradients are
summed in the same order, so the attributions are the same bit for bit.

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): mediation, by gradient attribution to MLP neurons (integrated gradients).
Dai et al. read large attributions as where knowledge is stored; the task's storage columns
test that reading, its mediation columns the attribution itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import LocalizeRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import Model

SCORES = ("share", "sum", "count")
POSITIONS = ("readout", "all")
# (layer, step) copies per forward/backward pass on a diffusion request, at most (see the module doc)
DIFFUSION_COPIES_PER_PASS = 1


@dataclass(frozen=True)
class KnowledgeNeuronsConfig(MethodConfig):
    steps: int = 20  # m, Riemann steps of the path integral
    # each step of a diffusion request runs the denoiser at every (render, draw): fewer steps there
    # (a coarser path integral) keep a cell to about a minute on a CPU
    diffusion_steps: int = 5
    threshold: float = 0.2  # t: knowledge neurons have attribution > t · max attribution
    score: str = "share"  # "share" | "sum" | "count"
    positions: str = "readout"  # "readout" | "all"
    copies_per_pass: int = 16  # (layer, step) copies of the batch per forward/backward pass (diffusion: 1)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.diffusion_steps < 1:
            raise BenchError(f"knowledge_neurons: steps must be >= 1, not {min(self.steps, self.diffusion_steps)}")
        if not 0.0 < self.threshold <= 1.0:
            raise BenchError(f"knowledge_neurons: threshold must lie in (0, 1], not {self.threshold}")
        if self.score not in SCORES:
            raise BenchError(f"knowledge_neurons: score must be one of {SCORES}, not {self.score!r}")
        if self.positions not in POSITIONS:
            raise BenchError(f"knowledge_neurons: positions must be one of {POSITIONS}, not {self.positions!r}")
        if self.copies_per_pass < 1:
            raise BenchError(f"knowledge_neurons: copies_per_pass must be >= 1, not {self.copies_per_pass}")


def neuron_site(model: Model, site: str) -> str | None:
    """The ``neurons`` site of the same tower and layer as ``site`` (``None`` if absent)."""
    s = model.site(site)
    found = [x.name for x in model.sites(tower=s.tower, kind="neurons") if x.layer == s.layer and s.layer is not None]
    return found[0] if found else None


class KnowledgeNeurons(Method):
    """Integrated gradients over MLP neurons; sites scored by their knowledge neurons (Dai et al., 2022)."""

    name = "knowledge_neurons"
    answers = {"localize": "mediation (gradients)"}
    capabilities = frozenset({"localize"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    Config = KnowledgeNeuronsConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not model.sites(kind="neurons"):
            return f"model {model.name!r} exposes no MLP neuron sites"
        return None

    def integrated_gradients(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        """Attributions ``[n, K, U]`` per example, candidate layer and unit (a neuron, or a
        (position, neuron) pair with ``positions="all"``), float64."""
        cfg = self.config
        neurons = []
        for c in request.candidates:
            ns = neuron_site(model, c)
            if ns is None:
                raise BenchError(f"knowledge_neurons: candidate {c!r} has no MLP neuron site in its layer")
            neurons.append(ns)
        n, K, m = request.n, len(neurons), (cfg.diffusion_steps if model.family == "diffusion" else cfg.steps)
        readout = cfg.positions == "readout" and request.positions_N is not None
        with torch.no_grad():
            _, tr = request.evaluate("clean", read=neurons)
        clean = [tr[s].double() for s in neurons]  # [n, (L,) F]
        grad_sum = [torch.zeros_like(a) for a in clean]
        alphas = torch.arange(1, m + 1, dtype=torch.float64, device="cpu") / m
        jobs = [(k, s) for k in range(K) for s in range(m)]  # one batch copy each
        # at most the request's batch size in rows per pass (the backward pass keeps every row's graph)
        per_pass = min(cfg.copies_per_pass, max(1, request.batch_size // max(1, n)))
        if model.family == "diffusion":
            per_pass = min(per_pass, DIFFUSION_COPIES_PER_PASS)
        for g in range(0, len(jobs), per_pass):
            group = jobs[g : g + per_pass]
            C = len(group)
            writes = {}
            for k in sorted({k for k, _ in group}):
                copies = [j for j, (kk, _) in enumerate(group) if kk == k]
                rows = torch.cat([torch.arange(j * n, (j + 1) * n, device="cpu") for j in copies])
                scale = torch.cat([alphas[group[j][1]].repeat(n) for j in copies])
                pos = request.positions_N.repeat(len(copies)) if readout else None
                writes[neurons[k]] = _scaled(rows, scale, pos)
            metric, tr = request.evaluate("clean", read=[neurons[k] for k in sorted({k for k, _ in group})],
                                          write=writes, copies=C, keep_grad=True)
            sites = sorted({k for k, _ in group})
            acts = [tr[neurons[k]] for k in sites]
            grads = torch.autograd.grad(metric.sum(), acts, allow_unused=True)
            for k, gr in zip(sites, grads):
                if gr is None:  # the layer does not reach the metric
                    continue
                for j, (kk, _) in enumerate(group):
                    if kk == k:
                        grad_sum[k] += gr[j * n : (j + 1) * n].detach().double()
            del metric, tr, acts, grads  # before the next pass builds its graph
        attr = []
        for k in range(K):
            a = clean[k] * grad_sum[k] / m  # [n, (L,) F]
            if a.dim() == 2:
                attr.append(a)
            elif readout:
                attr.append(a[torch.arange(n, device=a.device), request.positions_N.to(a.device)])
            else:
                attr.append(a.flatten(1))
        width = max(a.shape[1] for a in attr)
        # pad layers of different widths with zero attribution (never above a positive threshold)
        return torch.stack([torch.nn.functional.pad(a, (0, width - a.shape[1])) for a in attr], 1)

    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        attr_NKU = self.integrated_gradients(model, request)
        top_N = attr_NKU.flatten(1).max(1).values
        thr = (self.config.threshold * top_N)[:, None, None]
        kn_NKU = (attr_NKU > thr) & (top_N[:, None, None] > 0)  # no positive attribution: no knowledge neurons
        self.report(knowledge_neurons_per_example=float(kn_NKU.flatten(1).sum(1).double().mean()))
        if self.config.score == "count":
            return kn_NKU.sum(2).double()
        mass_NK = (attr_NKU * kn_NKU).sum(2)
        if self.config.score == "sum":
            return mass_NK
        return mass_NK / mass_NK.sum(1, keepdim=True).clamp_min(1e-300)


def _scaled(rows: torch.Tensor, scale: torch.Tensor, pos: torch.Tensor | None):
    """Edit: multiply batch rows ``rows`` by ``scale`` (per row), at positions ``pos`` (per row) or everywhere."""

    def fn(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        s = scale.to(value.dtype)
        if pos is None:
            out[rows] = value[rows] * s.view(-1, *([1] * (value.dim() - 1)))
        else:
            out[rows, pos] = value[rows, pos] * s[:, None]
        return out

    return fn

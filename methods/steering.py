"""Steering with difference-of-means directions: edit, debias and detect with one primitive.

Every capability is a thin use of :mod:`bench.kit.steering` (build a direction from contrasting
activations, then add it, project it out, or read along it):

- ``edit`` — Activation Addition (Turner, Thiergart, Udell, Leech, Mini & MacDiarmid, 2023,
  "Activation Addition: Steering Language Models Without Optimization"): a contrast vector
  ``v`` is added, times ``alpha``, to one site at every position (or the last) of every
  forward pass while the edited model is scored. The parameters are never touched; the
  edit is returned as an :class:`~bench.capabilities.Intervention`.

  * generative: ``v`` = mean over the request's renders of the site's activation at the
    answer token of "question + new answer" minus that of "question + old answer"; the site
    is the config's, else the request's, else the middle LM residual stream.
  * contrastive: ``v`` = mean over requests of ``text(template(new)) − text(template(old))``
    (unit-norm shared-space text embeddings), scaled by the mean norm of the image embeddings
    of the renders at the site (``vision.proj`` by default; the contrast lives in the shared
    space, so a site must have its width), so ``alpha`` is in units of the activation's norm.
  * diffusion: ``v`` = mean text-encoder state (config's site, else the request's text site,
    else the middle text-encoder residual) at the concept word of the prompt naming the new
    concept minus at the word of the prompt naming the old one (the prompt with ``old``
    replaced by ``new``, or ``prompt + " " + value`` when the prompt does not name it;
    erasure, ``new == ""``, contrasts against the word ``erase_word``).

  Steering is unconditional: every input is pushed, not only the edited subject, so
  specificity is expected to suffer (the benchmark measures by how much).

- ``debias`` — the mean-difference projection baseline next to LEACE: the directions
  between the spurious attribute's class means on the fit split (for two values, their
  difference of means) are projected out of ``debias_site`` (default ``vision.proj``; the
  CLS/first token of a token site), about the fit mean. ``components`` = their rank.

- ``detect_hallucination`` — the mass-mean probe of Marks & Tegmark (2023), "The Geometry of
  Truth": the mean LM hidden state (middle layer by default) over the span's tokens,
  projected on ``mean(hallucinated) − mean(grounded)`` of the fit split, relative to the
  midpoint of the two means; with ``per_kind`` one probe per item kind (caption mentions,
  POPE answers), falling back to the pooled probe where a kind's fit items lack a label.

Deterministic: no sampling anywhere; every direction is recorded with ``record_fit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.kit import steering
from bench.capabilities import DebiasRequest, EditRequest, HallucinationRequest, Intervention, ScoredOutputs
from bench.errors import BenchError
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model


@dataclass(frozen=True)
class SteeringConfig(MethodConfig):
    site: str = ""  # edit site; "" = the request's site, else the family default
    alpha: float = 1.0  # steering coefficient (Turner et al.'s c); contrastive: units of activation norm
    calibrate: bool = True  # choose alpha on the request's own renders (smallest grid value that flips them all)
    max_alpha: float = 64.0  # top of the calibration grid (powers of √2 from 1/4)
    positions: str = "all"  # "all" | "last": where the steering vector is added in token streams
    debias_site: str = "vision.proj"
    detect_site: str = ""  # "" = the middle LM residual stream (lm.blocks.{n//2}.resid_post)
    per_kind: bool = True  # one mass-mean probe per item kind (caption / pope)
    erase_word: str = "object"  # diffusion erasure: what the concept is steered towards


def _middle(model: Model, tower: str, kind: str) -> str:
    sites = model.layer_sites(tower, kind)
    if not sites:
        raise BenchError(f"steering: {model.name!r} has no {tower} {kind} sites; set --config site=...")
    return sites[len(sites) // 2]


def _first_token(act: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` from a site value: itself, or its CLS/first token."""
    return act if act.dim() == 2 else act[:, 0]


class Steering(Method):
    """Difference-of-means steering: ActAdd edits, mean-difference debiasing, mass-mean probes."""

    name = "steering"
    capabilities = frozenset({"edit", "debias", "detect_hallucination"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    capability_families = {"detect_hallucination": frozenset({"generative"}), "debias": frozenset({"contrastive"})}
    Config = SteeringConfig
    fits = True

    def _check_config(self) -> None:
        if self.config.positions not in ("all", "last"):
            raise BenchError(f"steering: positions must be 'all' or 'last', not {self.config.positions!r}")
        if not isinstance(self.config.alpha, (int, float)) or not torch.isfinite(torch.tensor(float(self.config.alpha), device="cpu")):
            raise BenchError(f"steering: alpha must be a finite number, not {self.config.alpha!r}")

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        for s in (self.config.site, self.config.detect_site):
            if s and s not in model.site_specs:
                return f"model {model.name!r} has no site {s!r}"
        if isinstance(model, ContrastiveModel) and self.config.debias_site not in model.site_specs:
            return f"model {model.name!r} has no site {self.config.debias_site!r}"
        if isinstance(model, GenerativeModel) and not model.layer_sites("lm", "resid_post"):
            return f"model {model.name!r} has no LM residual sites"
        return None

    # ------------------------------------------------------------------ edit
    def edit(self, model: Model, request: EditRequest) -> Intervention:
        self._check_config()
        with torch.no_grad():
            if isinstance(model, GenerativeModel):
                direction = self._generative_vector(model, request)
            elif isinstance(model, ContrastiveModel):
                direction = self._contrastive_vector(model, request)
            elif isinstance(model, DiffusionModel):
                direction = self._diffusion_vector(model, request)
            else:
                raise BenchError(f"steering cannot edit a {model.family} model")
        pos = None if self.config.positions == "all" else [-1]
        alpha = float(self.config.alpha)
        if self.config.calibrate and not isinstance(model, DiffusionModel):
            with torch.no_grad():
                alpha = self._calibrate(model, request, direction, pos)
        record_fit(self, "edit_vector", {"vector": direction.vector_D, "alpha": torch.tensor([alpha], device="cpu")})
        self.report(steering_norm=direction.norm, steering_alpha=alpha)
        return Intervention({direction.site: steering.add(direction, alpha, pos)}, components=1,
                            description=f"ActAdd {direction.label} at {direction.site}, alpha {alpha:g}")

    def _calibrate(self, model: Model, request: EditRequest, direction: steering.Direction,
                   pos: list[int] | None) -> float:
        """The smallest coefficient on a √2 grid (1/4 … ``max_alpha``) at which every render shown
        in the request prefers its new answer among the relation's values (the largest if none
        does): every coefficient is tried in one batched pass, one batch copy per coefficient."""
        if self.config.max_alpha < 0.25:
            raise BenchError(f"steering: max_alpha must be at least 0.25, not {self.config.max_alpha}")
        if len(request.values) != len(request.new):
            raise BenchError("steering: calibrating alpha needs each request's values (EditRequest.values)")
        n_grid = int(torch.floor(torch.log2(torch.tensor(self.config.max_alpha / 0.25, device="cpu")) * 2)) + 1
        grid_G = 0.25 * 2.0 ** (torch.arange(n_grid, dtype=torch.float64, device="cpu") / 2)
        K, R = request.pixels_KRCHW.shape[:2]
        n = K * R
        G = len(grid_G)
        rows_alpha = grid_G.repeat_interleave(n)  # copy-major: row g·n + i is render i at grid_G[g]
        prefers_new = torch.zeros(G * n, dtype=torch.bool, device="cpu")
        bs = max(1, request.batch_size)
        objective = request.objective(model)
        for i in range(0, G * n, bs):
            idx = torch.arange(i, min(i + bs, G * n), device="cpu")
            with model.trace(write={direction.site: steering.add(direction, rows_alpha[idx], pos)}):
                prefers_new[idx] = objective.prefers_new_B(idx % n)
        ok_G = prefers_new.view(G, n).all(1)
        self.report(steering_calibrated=float(ok_G.any()))
        return float(grid_G[int(ok_G.float().argmax())] if ok_G.any() else grid_G[-1])

    def _edit_site(self, model: Model, request: EditRequest, tower: str) -> str:
        site = self.config.site or request.site or ""
        if site and not site.startswith(f"{tower}."):
            site = ""  # a site in another tower cannot carry this family's contrast
        site = site or _middle(model, tower, "resid_post")
        model.site(site)  # unknown names raise with "did you mean"
        return site

    def _generative_vector(self, model: GenerativeModel, request: EditRequest) -> steering.Direction:
        site = self._edit_site(model, request, "lm")
        K, R = request.pixels_KRCHW.shape[:2]
        pixels = request.pixels_KRCHW.flatten(0, 1)
        prompts = [p for p in request.prompts for _ in range(R)]
        acts = {}
        for which, answers in (("new", request.new), ("old", request.old)):
            ans = [a for a in answers for _ in range(R)]
            enc = model.encode_spans(prompts, [""] * len(prompts), ans)
            first_B = enc.span_BL.float().argmax(1)  # the answer's first token
            outs = []
            for i in range(0, len(prompts), request.batch_size):
                sl = slice(i, i + request.batch_size)
                with model.trace(read=[site]) as t:
                    model.forward_tokens(pixels[sl], enc.ids_BL[sl], enc.mask_BL[sl])
                a = t[site]
                outs.append(a[torch.arange(a.shape[0], device=a.device), first_B[sl].to(a.device)])
            acts[which] = torch.cat(outs)
        label = ",".join(f"{o}->{n}" for o, n in zip(request.old, request.new))
        return steering.diff_of_means(acts["new"], acts["old"], site, label)

    def _contrastive_vector(self, model: ContrastiveModel, request: EditRequest) -> steering.Direction:
        site = self.config.site or "vision.proj"
        model.site(site)
        pixels = request.pixels_KRCHW.flatten(0, 1)
        with model.trace(read=[site]) as t:
            for i in range(0, pixels.shape[0], request.batch_size):
                model.encode_image(pixels[i : i + request.batch_size])
        acts = _first_token(t[site])
        new_TD = model.encode_text([p.format(value=v) for p, v in zip(request.prompts, request.new)])
        old_TD = model.encode_text([p.format(value=v) for p, v in zip(request.prompts, request.old)])
        if acts.shape[-1] != new_TD.shape[-1]:
            raise BenchError(f"steering: site {site!r} (width {acts.shape[-1]}) is not in the shared image-text space "
                             f"(width {new_TD.shape[-1]}); use the image embedding site (vision.proj)")
        text_dir = steering.diff_of_means(new_TD, old_TD, site, ",".join(f"{o}->{n}" for o, n in
                                                                         zip(request.old, request.new)))
        # the text embeddings are unit-norm, the site's activations are not: express v in the site's scale
        return text_dir.scaled(float(acts.norm(dim=-1).mean()))

    def _diffusion_vector(self, model: DiffusionModel, request: EditRequest) -> steering.Direction:
        site = self._edit_site(model, request, "text")
        a_prompts, a_words, b_prompts, b_words = [], [], [], []
        for p, old, new in zip(request.prompts, request.old, request.new):
            target = new or self.config.erase_word
            named = f" {old} " in f" {p} "
            a_prompts.append(f" {p} ".replace(f" {old} ", f" {target} ").strip() if named else f"{p} {target}")
            b_prompts.append(p if named else f"{p} {old}")
            a_words.append(target)
            b_words.append(old)

        def word_states(prompts: list[str], words: list[str]) -> torch.Tensor:
            with model.trace(read=[site]) as t:
                model.encode_prompts(prompts)
            h = t[site]
            rows = []
            for i, (p, w) in enumerate(zip(prompts, words)):
                pos = model.prompt_token_positions([p], w)[0]
                rows.append(h[i, pos].mean(0))  # a word may span several tokens
            return torch.stack(rows)

        return steering.diff_of_means(word_states(a_prompts, a_words), word_states(b_prompts, b_words), site,
                                      ",".join(f"{o}->{n or '∅'}" for o, n in zip(request.old, request.new)))

    # ------------------------------------------------------------------ debias
    def debias(self, model: Model, request: DebiasRequest) -> Intervention:
        site = self.config.debias_site
        model.site(site)
        acts = request.fit_activations(model, site)
        x_ND = _first_token(acts).double()
        values = sorted(set(request.fit_spurious_B.tolist()))
        if len(values) < 2:
            raise BenchError("steering: the fit split shows only one value of the spurious attribute")
        mean_D = x_ND.mean(0)
        # two values: their difference of means; more: each value's mean minus the overall mean (rank K−1)
        if len(values) == 2:
            dirs = [steering.diff_of_means(x_ND[request.fit_spurious_B == values[0]],
                                           x_ND[request.fit_spurious_B == values[1]], site, "spurious")]
        else:
            dirs = [steering.diff_of_means(x_ND[request.fit_spurious_B == v], mean_D[None], site, f"spurious={v}")
                    for v in values]
        basis = steering.orthonormal_basis(dirs)
        record_fit(self, "debias_basis", {"basis": basis, "center": mean_D})
        dirs32 = [steering.Direction(site, d.vector_D.float(), d.label) for d in dirs]
        pos = [0] if acts.dim() == 3 else None
        edit = steering.project_out(dirs32, center_D=mean_D.float(), positions=pos)
        return Intervention({site: edit}, components=int(basis.shape[1]),
                            description=f"mean-difference projection at {site}, rank {basis.shape[1]}")

    # ------------------------------------------------------------------ detect
    def _span_states(self, model: GenerativeModel, site: str, items: ScoredOutputs, bs: int) -> torch.Tensor:
        """Mean hidden state over each item's span tokens ``[N, D]``."""
        outs = []
        for _, enc, t, _ in model.span_batches(items, bs, read=[site]):
            span = enc.span_BL.float()
            outs.append((t[site].double() * span[..., None]).sum(1) / span.sum(1, keepdim=True).clamp(min=1))
        return torch.cat(outs) if outs else torch.zeros(0, device="cpu")

    def detect_hallucination(self, model: Model, request: HallucinationRequest) -> torch.Tensor:
        site = self.config.detect_site or _middle(model, "lm", "resid_post")
        model.site(site)
        y = request.fit_labels_B.bool()
        if y.all() or not y.any():
            raise BenchError("steering: the fit split needs both hallucinated and grounded items")
        with torch.no_grad():
            fit_ND = self._span_states(model, site, request.fit, request.batch_size)
            items_ND = self._span_states(model, site, request.items, request.batch_size)
        pooled = steering.diff_of_means(fit_ND[y], fit_ND[~y], site, "hallucinated-grounded")
        probes = {"*": pooled}
        if self.config.per_kind:
            fit_kinds = request.fit.kinds
            for kind in sorted(set(fit_kinds)):
                sel = torch.tensor([k == kind for k in fit_kinds], device="cpu")
                if y[sel].any() and (~y[sel]).any():
                    probes[kind] = steering.diff_of_means(fit_ND[sel & y], fit_ND[sel & ~y], site, kind)
        record_fit(self, "mass_mean", {f"{k}_{p}": getattr(d, p) for k, d in probes.items()
                                       for p in ("vector_D", "offset_D")})
        scores_N = torch.zeros(items_ND.shape[0], dtype=torch.float64, device="cpu")
        kinds = request.items.kinds
        for kind in sorted(set(kinds)):
            sel_N = torch.tensor([k == kind for k in kinds], device="cpu")
            scores_N[sel_N] = steering.score(items_ND[sel_N], probes.get(kind, pooled), unit=False, centered=True)
        return scores_N

"""Sparse-autoencoder features as the unit of analysis, for all four fitting capabilities.

An SAE (:mod:`bench.kit.sae`: ReLU/L1, Bricken et al., 2023; TopK, Gao et al., 2024; JumpReLU,
Rajamanoharan et al., 2024) is trained on a site's activations from the request's fit data
(never the scored items), every token position pooled, at most ``max_tokens`` of them
(drawn with a fixed generator). What each capability computes:

- ``localize`` — SAE feature attribution after Marks, Rager, Michaud, Belinkov, Bau &
  Mueller (2024), "Sparse Feature Circuits": one SAE per candidate site, trained on the fit
  split's clean and corrupt activations. With the SAE and its error term spliced in
  (``a = decode(f) + ε``, the identity), attribution patching in feature space gives, per
  scored example, feature node effects ``IE_i = Σ_pos ∂m/∂f_i|corrupt · (f_i^clean −
  f_i^corrupt)`` (features summed over positions, Marks et al.'s non-templatic nodes) and an
  error node ``IE_ε = Σ_pos ⟨∂m/∂ε|corrupt, ε^clean − ε^corrupt⟩``, where ``m`` is the task
  metric and ``∂m/∂f_i = scale · ⟨∂m/∂a, d_i⟩`` (one backward pass for all sites). A site's
  score aggregates its nodes (``aggregate``): ``"abs"`` (default) ``Σ_i |IE_i| + |IE_ε|``,
  the total node effect mass Marks et al. threshold on; ``"signed"`` ``Σ_i IE_i + IE_ε``
  (which equals plain attribution patching of the site, since the decoder is linear);
  ``"max"`` the largest ``|IE|`` of a node. ``include_error=False`` drops the error node.
- ``detect_hallucination`` — an SAE on the language model's residual stream at a middle
  layer (``layer``), trained on every token of the fit items; each item is described by
  its SAE code averaged over the span's tokens, and a logistic regression (scikit-learn,
  standardised codes, seeded; one per item kind when both labels occur in its fit items)
  fitted on ``fit_labels_B`` scores the items (``C`` chosen among 0.001–1 by stratified
  cross-validated AUROC on the fit items unless set) (SAE latents as a hallucination/knowledge
  detector, as Ferrando, Obeso, Rajamanoharan & Nanda, 2024, "Do I Know This Entity?
  Knowledge Awareness and Hallucinations in Language Models", read entity-recognition
  latents; here the probe, not a hand-picked latent, reads them).
- ``edit`` — feature clamping (Templeton et al., 2024, "Scaling Monosemanticity"; O'Brien
  et al., 2024, "Steering Language Model Refusal with Sparse Autoencoders"). The SAE is
  trained on the edit site's activations over the request's own inputs (generative: the
  renders with the question; contrastive: the renders, or the filled templates for a
  text-tower site; diffusion: the prompts). The edit objective is ``J`` = logit(new) −
  logit(old) (generative: first answer token; contrastive: similarity to the template
  filled with each value) or, for diffusion, minus the denoising error of the renders of
  what the prompt should now draw (fixed (timestep, noise) draws). For each request and
  feature ``i``, with candidate clamp values ``c ∈ {0, clamp_multiple · max_i}`` (``max_i``
  its largest activation on the training tokens), the first-order effect of clamping it at
  every position of the request's inputs is ``Σ_pos ∂J/∂f_i · (c − f_i)``; the
  ``n_clamp`` features (per request) with the largest positive effect are clamped to their
  better value at every position of every input while the task scores (the SAE error term
  is kept: ``a ← a + Σ_i (c_i − f_i(a)) · scale · d_i``). The clamp is global, as in
  Templeton et al.; it is not gated on the entity.
- ``debias`` — an SAE on a vision-tower site (``debias_site``; default the last vision
  residual stream), trained on every token of the fit images. Per image, each feature's
  code is averaged over positions; features are ranked by ``η_spurious − η_class``, where
  ``η`` is the correlation ratio of the feature with the attribute computed within each
  value of the other attribute and averaged (the fit split is group-balanced). The
  top-``n`` features are ablated (set to 0 at every position, error term kept); ``n`` is
  ``n_ablate`` or, when 0, the count among 1, 2, 4, …, ``max_ablate`` with the best
  worst-group zero-shot accuracy on the fit split (ties: fewer). ``components`` = ``n``.

Diagnostics (``self.report``, averaged over the SAEs trained in the cell; for edits, over
the cell's edit calls): ``sae_fvu``, ``sae_l0``, ``sae_dead`` on the training activations,
and ``sae_loss_recovered`` (:func:`bench.kit.sae.loss_recovered`) of the capability's own
metric on its fit data: localize — the task metric on the fit split's clean run; hallucination
— the fit spans' mean token NLL; debias — the zero-shot cross-entropy of the fit images;
edit — ``J`` on the request's inputs.

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): mediation, in SAE feature space (attribution patching of features, Marks et
al., 2024); it finds the storage site only where storage and mediation coincide.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.capabilities import DebiasRequest, EditRequest, HallucinationRequest, Intervention, LocalizeRequest, ObjectiveOptions
from bench.kit.editing import middle_fact_mlp
from bench.errors import BenchError
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import GenerativeModel, Model
from bench.kit.sae import SAE, KINDS, SAEConfig, cached_sae, loss_recovered, sae_stats, subsample_rows

AGGREGATES = ("abs", "signed", "max")
CV_CS = (0.001, 0.01, 0.1, 1.0)  # the C grid of the cross-validated detector


@dataclass(frozen=True)
class SAEMethodConfig(MethodConfig):
    kind: str = "topk"  # relu | topk | jumprelu
    expansion: int = 4
    k: int = 8
    l1: float = 0.02
    l0: float = 0.005
    steps: int = 400
    lr: float = 3e-3
    sae_batch: int = 256
    seed: int = 0
    max_tokens: int = 8192  # training tokens per SAE (subsampled with a fixed generator)
    # localize
    aggregate: str = "abs"  # abs | signed | max
    include_error: bool = True
    # detect_hallucination
    layer: int = -1  # LM residual layer; -1: the middle layer
    C: float = 0.0  # logistic regression inverse regularisation; 0: chosen by cross-validation on the fit items
    # edit
    edit_site: str = ""  # overrides the request's site; default: the request's, else a middle MLP
    n_clamp: int = 4  # features clamped per edit request
    clamp_multiple: float = 5.0  # clamp value = multiple × the feature's max training activation
    # debias
    debias_site: str = ""  # default: the last vision resid_post
    n_ablate: int = 0  # 0: chosen on the fit split
    max_ablate: int = 32


def _tokens(act: torch.Tensor) -> torch.Tensor:
    """Site activation ``[N, (L,) D]`` → token rows ``[M, D]``."""
    if act.dim() == 2:
        return act
    if act.dim() == 3:
        return act.flatten(0, 1)
    raise BenchError(f"sae: needs sites with features on the last axis ([N, L, D]); got shape {tuple(act.shape)}")


def _rows_edit(rows: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Apply ``fn`` to batch rows ``rows`` only."""

    def edit(v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[rows] = fn(v[rows])
        return out
    return edit


class SAEMethod(Method):
    """SAE features: attribution (Marks et al., 2024), probe, clamping and ablation over an SAE dictionary."""

    name = "sae"
    answers = {"localize": "mediation (SAE features)"}
    capabilities = frozenset({"localize", "detect_hallucination", "edit", "debias"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    capability_families = {"detect_hallucination": frozenset({"generative"}), "debias": frozenset({"contrastive"})}
    Config = SAEMethodConfig
    fits = True

    def __init__(self, config: SAEMethodConfig | None = None, **overrides: object) -> None:
        super().__init__(config, **overrides)
        c = self.config
        if c.kind not in KINDS:
            raise BenchError(f"sae: kind must be one of {KINDS}, not {c.kind!r}")
        if c.aggregate not in AGGREGATES:
            raise BenchError(f"sae: aggregate must be one of {AGGREGATES}, not {c.aggregate!r}")
        if c.n_clamp < 1 or c.clamp_multiple <= 0 or c.n_ablate < 0 or c.max_ablate < 1 or c.C < 0:
            raise BenchError("sae: n_clamp and max_ablate must be ≥ 1, n_ablate ≥ 0, clamp_multiple > 0, C ≥ 0")
        self.sae_config().check()
        self._figs: list[dict[str, float]] = []

    def sae_config(self) -> SAEConfig:
        c = self.config
        return SAEConfig(kind=c.kind, expansion=c.expansion, k=c.k, l1=c.l1, l0=c.l0, steps=c.steps, lr=c.lr,
                         batch=c.sae_batch, seed=c.seed)

    # ------------------------------------------------------------ shared
    def _train(self, name: str, acts_MD: torch.Tensor) -> SAE:
        x = subsample_rows(acts_MD.detach().float(), self.config.max_tokens, self.config.seed)
        sae = cached_sae(x, self.sae_config())
        record_fit(self, name, sae.state())
        self._figs.append({f"sae_{k}": v for k, v in sae_stats(sae, x).items()})
        return sae

    def _note_recovered(self, value: float) -> None:
        self._figs[-1]["sae_loss_recovered"] = value

    def _report(self) -> None:
        keys = sorted({k for f in self._figs for k in f})
        self.report(**{k: float(np.nanmean([f[k] for f in self._figs if k in f])) for k in keys})

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        c = self.config
        for site in (c.edit_site, c.debias_site):
            if site and site not in model.site_specs:
                return f"model {model.name!r} has no site {site!r}"
        return None

    # ------------------------------------------------------------ localize
    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        if request.fit is None:
            raise BenchError("sae: localize needs a fit split (request.fit) to train its SAEs on")
        self._figs = []
        cands, fit = request.candidates, request.fit
        with torch.no_grad():
            m_clean, fit_clean = fit.evaluate("clean", read=cands)
            _, fit_corrupt = fit.evaluate("corrupt", read=cands)
        saes = {s: self._train(f"localize:{s}", torch.cat([_tokens(fit_clean[s]), _tokens(fit_corrupt[s])]))
                for s in cands}
        self._localize_recovered(fit, saes, float(m_clean.double().mean()))
        out = torch.zeros(request.n, len(cands), dtype=torch.float64, device="cpu")
        for j, (s, (clean, corrupt, g)) in enumerate(zip(cands, request.corrupt_gradients(cands))):
            if g is None:  # the site does not reach the metric
                continue
            out[:, j] = self._site_score(saes[s], clean.detach(), corrupt, g)
        self._report()
        return out

    @torch.no_grad()
    def _site_score(self, sae: SAE, a_clean: torch.Tensor, a_corr: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per example: aggregate of feature-node and error-node effects (see the module docstring)."""
        n = a_clean.shape[0]
        f_clean, f_corr = sae.encode(a_clean), sae.encode(a_corr)
        e_clean = a_clean - sae.decode(f_clean)
        e_corr = a_corr - sae.decode(f_corr)
        grad_f = (g.float() @ sae.W_dec_FD.T) * sae.scale  # ∂m/∂f_i = scale · ⟨∂m/∂a, d_i⟩
        ie_nF = (grad_f * (f_clean - f_corr)).reshape(n, -1, sae.n_features).sum(1).double()
        ie_err_n = (g * (e_clean - e_corr)).reshape(n, -1).sum(1).double()
        if not self.config.include_error:
            ie_err_n = torch.zeros_like(ie_err_n)
        agg = self.config.aggregate
        if agg == "signed":
            return ie_nF.sum(1) + ie_err_n
        if agg == "max":
            return torch.maximum(ie_nF.abs().max(1).values, ie_err_n.abs())
        return ie_nF.abs().sum(1) + ie_err_n.abs()

    @torch.no_grad()
    def _localize_recovered(self, fit: LocalizeRequest, saes: dict[str, SAE], m_clean: float,
                            sites_per_pass: int = 4) -> None:
        """Loss recovered per site on the fit split's clean run: in each pass, copy ``2j`` splices the
        SAE at the pass's ``j``-th site and copy ``2j + 1`` zero-ablates it; ``sites_per_pass`` sites
        per pass (8 copies, as :meth:`LocalizeRequest.patch_sweep`: all sites in one pass held ~0.7 GB
        of denoiser activations on zoo-diffusion)."""
        n, cands = fit.n, list(saes)
        for g in range(0, len(cands), sites_per_pass):
            group = cands[g:g + sites_per_pass]
            writes = {}
            for j, s in enumerate(group):
                rec = torch.arange(2 * j * n, (2 * j + 1) * n, device="cpu")
                zero = torch.arange((2 * j + 1) * n, (2 * j + 2) * n, device="cpu")

                def edit(v: torch.Tensor, rec: torch.Tensor = rec, zero: torch.Tensor = zero,
                         sae: SAE = saes[s]) -> torch.Tensor:
                    out = v.clone()
                    out[rec] = sae.splice()(v[rec])
                    out[zero] = 0
                    return out
                writes[s] = edit
            m, _ = fit.evaluate("clean", write=writes, copies=2 * len(group))
            m_CN = m.double().view(2 * len(group), n).mean(1)
            for j in range(len(group)):
                self._figs[-len(cands) + g + j]["sae_loss_recovered"] = loss_recovered(
                    m_clean, float(m_CN[2 * j]), float(m_CN[2 * j + 1]))

    # ------------------------------------------------------- hallucination
    def _lm_site(self, model: Model) -> str:
        layers = model.layer_sites("lm", "resid_post")
        if not layers:
            raise BenchError(f"sae: {model.name!r} has no LM residual sites (lm.blocks.*.resid_post)")
        layer = self.config.layer if self.config.layer >= 0 else len(layers) // 2
        if layer >= len(layers):
            raise BenchError(f"sae: layer {layer} out of range (the LM has {len(layers)} layers)")
        return layers[layer]

    def _span_acts(self, model: GenerativeModel, items: object, site: str, bs: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per batch: the site's activations ``[B, L, D]``, the token mask and the span mask."""
        acts, masks, spans = [], [], []
        for _, enc, t, _ in model.span_batches(items, bs, read=[site]):  # type: ignore[arg-type]
            acts.append(t[site])
            masks.append(enc.mask_BL.bool())
            spans.append(enc.span_BL.bool())
        return acts, masks, spans

    @torch.no_grad()
    def detect_hallucination(self, model: Model, request: HallucinationRequest) -> torch.Tensor:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self._figs = []
        site, bs = self._lm_site(model), request.batch_size
        fit_acts, fit_masks, fit_spans = self._span_acts(model, request.fit, site, bs)
        sae = self._train(f"hallucination:{site}", torch.cat([a[m] for a, m in zip(fit_acts, fit_masks)]))
        self._note_recovered(self._span_nll_recovered(model, request, site, sae))

        def describe(acts: list[torch.Tensor], spans: list[torch.Tensor]) -> np.ndarray:
            rows = []
            for a, sp in zip(acts, spans):
                f = sae.encode(a)  # [B, L, F]
                w = sp.float() / sp.float().sum(1, keepdim=True).clamp_min(1)
                rows.append(torch.einsum("bl,blf->bf", w, f))
            return torch.cat(rows).double().numpy()

        X_fit = describe(fit_acts, fit_spans)
        y_fit = request.fit_labels_B.numpy().astype(int)
        items_acts, _, items_spans = self._span_acts(model, request.items, site, bs)
        X = describe(items_acts, items_spans)
        kinds_fit, kinds = np.array(request.fit.kinds), np.array(request.items.kinds)
        scores = np.zeros(request.items.n)
        # one detector per kind (captions and yes/no answers differ), pooled where a kind lacks a label
        pooled = self._probe(X_fit, y_fit, "all", LogisticRegression, StandardScaler)
        for kind in sorted(set(kinds.tolist())):
            sel_fit, sel = kinds_fit == kind, kinds == kind
            own = len(set(y_fit[sel_fit].tolist())) == 2
            probe = self._probe(X_fit[sel_fit], y_fit[sel_fit], kind, LogisticRegression, StandardScaler) if own else pooled
            if probe is None:  # no labels of both classes anywhere: nothing to learn
                continue
            scaler, clf = probe
            scores[sel] = clf.decision_function(scaler.transform(X[sel]))
        self._report()
        return torch.from_numpy(scores).double()

    def _probe(self, X: np.ndarray, y: np.ndarray, kind: str, LR: type, Scaler: type) -> tuple | None:
        if len(set(y.tolist())) < 2:
            return None
        scaler = Scaler().fit(X)
        Xs = scaler.transform(X)
        C, n_min = self.config.C, int(np.bincount(y).min())
        if C <= 0:  # choose C by stratified cross-validated AUROC on the fit items (unshuffled folds)
            from sklearn.linear_model import LogisticRegressionCV

            if n_min >= 2:
                with warnings.catch_warnings():  # scikit-learn's deprecation notices about defaults
                    warnings.simplefilter("ignore", FutureWarning)
                    cv = LogisticRegressionCV(Cs=list(CV_CS), cv=min(5, n_min), scoring="roc_auc", max_iter=2000,
                                              random_state=self.config.seed).fit(Xs, y)
                C = float(cv.C_[0])
            else:
                C = min(CV_CS)
        clf = LR(C=C, max_iter=2000, random_state=self.config.seed).fit(Xs, y)
        record_fit(self, f"hallucination:probe:{kind}",
                   {"coef": torch.from_numpy(clf.coef_.copy()), "intercept": torch.from_numpy(clf.intercept_.copy())})
        return scaler, clf

    @torch.no_grad()
    def _span_nll_recovered(self, model: GenerativeModel, request: HallucinationRequest, site: str, sae: SAE) -> float:
        items, bs = request.fit, request.batch_size

        def nll(write: dict) -> float:
            tot = cnt = 0.0
            for _, enc, _, logits in model.span_batches(items, bs, write=write, logits=True):
                assert logits is not None
                logp = logits[:, :-1].float().log_softmax(-1).gather(-1, enc.ids_BL[:, 1:, None])[..., 0]
                sp = enc.span_BL[:, 1:].float()
                tot += float(-(logp * sp).sum())
                cnt += float(sp.sum())
            return tot / max(cnt, 1.0)

        return loss_recovered(nll({}), nll({site: sae.splice()}), nll({site: lambda v: torch.zeros_like(v)}))

    # ------------------------------------------------------------ debias
    def debias(self, model: Model, request: DebiasRequest) -> Intervention:
        self._figs = []
        c = self.config
        site = c.debias_site or (model.layer_sites("vision", "resid_post") or [""])[-1]
        if not site:
            raise BenchError(f"sae: {model.name!r} has no vision residual sites; set --config debias_site=...")
        a = request.fit_activations(model, site)
        sae = self._train(f"debias:{site}", _tokens(a))
        with torch.no_grad():
            f = sae.encode(a)
            code_BF = (f.mean(1) if f.dim() == 3 else f).double()
            text_TD = model.encode_text(request.class_prompts)
        y, s = request.fit_labels_B, request.fit_spurious_B
        score_F = _eta_within(code_BF, s, y) - _eta_within(code_BF, y, s)
        order = torch.argsort(score_F, descending=True, stable=True)
        order = order[score_F[order] > 0]
        if len(order) == 0:
            raise BenchError("sae: no SAE feature predicts the spurious attribute more than the class")

        def intervention(n: int) -> Intervention:
            feats = order[:n]
            return Intervention({site: sae.feature_edit(feats)}, components=int(n),
                                description=f"SAE ({c.kind}) at {site}: ablate features {feats.tolist()}")

        @torch.no_grad()
        def fit_worst(iv: Intervention) -> float:
            pred = model.similarity_to(request.fit_embeddings(model, iv.writes), text_TD).argmax(-1)
            groups = y * (int(s.max()) + 1) + s
            return min(float((pred[groups == gr] == y[groups == gr]).float().mean()) for gr in groups.unique())

        if c.n_ablate > 0:
            n = min(c.n_ablate, len(order))
        else:
            sizes = [m for m in (2 ** i for i in range(12)) if m <= min(c.max_ablate, len(order))]
            accs = [fit_worst(intervention(m)) for m in sizes]
            n = sizes[int(np.argmax(accs))]  # first maximum: the smallest best size
        record_fit(self, "debias:ablated", order[:n])
        with torch.no_grad():
            ce = lambda w: float(F.cross_entropy(  # noqa: E731
                model.similarity_to(request.fit_embeddings(model, w), text_TD), y))
            self._note_recovered(loss_recovered(ce({}), ce({site: sae.splice()}), ce({site: torch.zeros_like})))
        self._report()
        return intervention(n)

    # ------------------------------------------------------------ edit
    def _edit_site(self, model: Model, request: EditRequest) -> str:
        if self.config.edit_site:
            return self.config.edit_site
        return request.site or middle_fact_mlp(model, "sae", "edit_site")

    def edit(self, model: Model, request: EditRequest) -> Intervention:
        site = self._edit_site(model, request)
        model.site(site)  # unknown names raise with "did you mean"
        K, R = request.pixels_KRCHW.shape[:2]
        objective = _edit_objective(model, request)
        with torch.enable_grad(), model.trace(read=[site], keep_grad=True) as t:
            J_K = objective()
            a = t[site]
            (g,) = torch.autograd.grad(J_K.sum(), [a])
        a, g = a.detach(), g.detach()
        if a.dim() not in (2, 3):
            raise BenchError(f"sae: edit site {site!r} has shape {tuple(a.shape)}; needs features on the last axis")
        # rows of the site's batch that belong to request k (the renders of k, or its prompt)
        per = a.shape[0] // K
        if per * K != a.shape[0]:
            raise BenchError(f"sae: cannot split the site's {a.shape[0]} rows over {K} requests")
        sae = self._train(f"edit:{site}:{len(self._figs)}", _tokens(a))
        with torch.no_grad():
            f = sae.encode(a)
            grad_f = (g.float() @ sae.W_dec_FD.T) * sae.scale
            top_F = _tokens(f).max(0).values * self.config.clamp_multiple
            chosen: dict[int, float] = {}
            for k in range(K):
                rows = slice(k * per, (k + 1) * per)
                gk, fk = _tokens(grad_f[rows]), _tokens(f[rows])
                up_F = (gk * (top_F - fk)).sum(0)  # clamp to the high value
                down_F = (gk * (0 - fk)).sum(0)  # clamp to zero
                effect_F = torch.maximum(up_F, down_F)
                for i in torch.argsort(effect_F, descending=True, stable=True)[: self.config.n_clamp].tolist():
                    if effect_F[i] > 0 and i not in chosen:
                        chosen[i] = float(top_F[i]) if up_F[i] >= down_F[i] else 0.0
            feats = torch.tensor(sorted(chosen), dtype=torch.long, device="cpu")
            vals = torch.tensor([chosen[i] for i in sorted(chosen)], device="cpu")
        record_fit(self, f"edit:clamp:{len(self._figs)}", {"features": feats, "values": vals})
        writes = {site: sae.feature_edit(feats, vals)} if len(feats) else {}
        with torch.no_grad():
            m = lambda w: float(objective_no_grad(objective, model, w))  # noqa: E731
            self._note_recovered(loss_recovered(m({}), m({site: sae.splice()}), m({site: torch.zeros_like})))
        self._report()
        return Intervention(writes, components=len(feats),
                            description=f"SAE ({self.config.kind}) clamp at {site}: "
                                        f"{dict(zip(feats.tolist(), [round(v, 3) for v in vals.tolist()]))}")


# ------------------------------------------------------------------ helpers
def _eta_within(x_BF: torch.Tensor, target_B: torch.Tensor, within_B: torch.Tensor) -> torch.Tensor:
    """Correlation ratio η of each feature with ``target``, computed inside each value of ``within``
    and averaged (η² = between-group variance / total variance)."""
    etas = []
    for w in within_B.unique():
        sel = within_B == w
        x, t = x_BF[sel], target_B[sel]
        tot = x.var(0, unbiased=False)
        between = sum((t == v).double().mean() * (x[t == v].mean(0) - x.mean(0)).pow(2) for v in t.unique())
        etas.append((between / tot.clamp_min(1e-12)).clamp(0, 1).sqrt() * (tot > 1e-12))
    return torch.stack(etas).mean(0)


def objective_no_grad(objective: Callable[[], torch.Tensor], model: Model, write: dict) -> float:
    with torch.no_grad(), model.trace(write=write):
        return float(objective().double().mean())


def _edit_objective(model: Model, request: EditRequest) -> Callable[[], torch.Tensor]:
    """``() -> J_K``: per request, how much the model prefers the new answer to the old on its inputs
    (mean over renders and draws), from a fixed computation (deterministic; diffusion: minus the
    denoising error at 2 fixed draws per render in the middle of the schedule, the text encoder run
    once per request so the edit site's rows split over the requests)."""
    obj = request.objective(model, ObjectiveOptions(draws=2, seed=0, t_range=(0.2, 0.6), prompt_rows="rewrite"))
    return lambda: obj.margin_B(None).view(obj.draws, obj.K, obj.R).mean((0, 2))

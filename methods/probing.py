"""Linear probing: where is a property linearly decodable?

Alain & Bengio (2016), "Understanding intermediate layers using linear classifier
probes"; Belinkov (2022), "Probing Classifiers: Promises, Shortcomings, and Advances"
(Computational Linguistics). A probe is an L2-regularised multinomial logistic
regression (scikit-learn, lbfgs; features standardised on the probe's training
rows) on a site's activation. Two capabilities:

``localize`` — for every candidate site, and separately for every relation (a
relation is identified by its tuple of possible answers, ``request.values``), a probe
reads the site's activation at the readout position (``request.fit.pooled``: the
answer-predicting token for a VLM, the CLS token for CLIP, the mean over positions for
a diffusion text encoder) and predicts the clean answer. Activations come from the
**fit split only** (``request.fit.evaluate("clean", read=candidates)``). The site's
score for a relation is the probe's held-out quality under stratified k-fold
cross-validation on the fit split: ``metric="loglik"`` (default) the mean held-out
log-probability of the true answer (probabilities floored at 1e-4 so a missing class
in a fold cannot give −∞), ``metric="accuracy"`` the held-out accuracy. Every test
example of that relation gets the same score row, ``[n, len(candidates)]``. Caveat
(Belinkov, 2022): a probe says where the answer is *decodable*, not where it is
*stored* or *used*; a fact stored in MLP l stays decodable in every later residual
write, and an early site may already carry enough about the input (the glyph) for a
probe to memorise the entity → answer map itself.

``detect_hallucination`` (generative) — a truthfulness probe in the manner of Azaria &
Mitchell (2023), "The Internal State of an LLM Knows When It's Lying" (SAPLMA): a
linear probe on the residual stream ``lm.blocks.{layer}.resid_post`` (default the
middle block, ``(n_layers − 1) // 2``) at the span's tokens (``pool="last"``: the last
span token, as SAPLMA reads the state after the statement; ``"mean"``: the mean over the
span's tokens), fitted on ``request.fit`` / ``request.fit_labels_B`` only (one probe
per item kind, "caption" or "pope", when the fit split has both labels for that kind,
else one probe over all kinds). An item's score is the probe's probability that it is
hallucinated.

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): decodability: where the answer is linearly readable, which is neither where
it was written (storage) nor what the answer depends on (mediation); a site downstream of the
storage site decodes it as well.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from bench.capabilities import HallucinationRequest, LocalizeRequest, ScoredOutputs
from bench.errors import BenchError
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import GenerativeModel, Model

_FLOOR = 1e-4  # probability floor for held-out log-likelihoods


@dataclass(frozen=True)
class ProbingConfig(MethodConfig):
    C: float = 1.0  # inverse L2 strength of the logistic-regression probe
    folds: int = 4  # cross-validation folds on the fit split (localize)
    metric: str = "loglik"  # localize: "loglik" (held-out log p(true answer)) | "accuracy"
    layer: int | None = None  # detect_hallucination: LM block whose resid_post is probed; None = middle
    pool: str = "last"  # detect_hallucination: "last" span token | "mean" over span tokens
    max_iter: int = 1000
    seed: int = 0  # fold shuffling


def fit_probe(x_ND: np.ndarray, y_N: np.ndarray, C: float, max_iter: int) -> tuple[StandardScaler, LogisticRegression]:
    """A standardised L2 logistic-regression probe (deterministic: lbfgs, no randomness)."""
    scaler = StandardScaler().fit(x_ND)
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(x_ND), y_N)
    return scaler, clf


def cv_quality(x_ND: np.ndarray, y_N: np.ndarray, n_classes: int, cfg: ProbingConfig) -> float:
    """Held-out probe quality under stratified k-fold CV: mean log p(true class) or accuracy."""
    counts = np.bincount(y_N, minlength=n_classes)
    k = int(min(cfg.folds, counts[counts > 0].max(initial=0), len(y_N)))
    if k < 2 or (counts > 0).sum() < 2:
        return float("nan")  # nothing to cross-validate: the caller treats it as uninformative
    # classes with fewer members than folds only trigger a warning; folds stay deterministic
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=cfg.seed)
    probs_NK = np.full((len(y_N), n_classes), _FLOOR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splits = list(folds.split(x_ND, y_N))
    for train, test in splits:
        if len(np.unique(y_N[train])) < 2:  # a one-class fold: predict that class
            probs_NK[np.ix_(test, np.unique(y_N[train]))] = 1.0
            continue
        scaler, clf = fit_probe(x_ND[train], y_N[train], cfg.C, cfg.max_iter)
        probs_NK[np.ix_(test, clf.classes_)] = clf.predict_proba(scaler.transform(x_ND[test]))
    probs_NK = np.maximum(probs_NK, _FLOOR)
    if cfg.metric == "accuracy":
        return float((probs_NK.argmax(1) == y_N).mean())
    return float(np.log(probs_NK[np.arange(len(y_N)), y_N]).mean())


@torch.no_grad()
def span_states(model: GenerativeModel, outs: ScoredOutputs, site: str, pool: str, batch_size: int) -> torch.Tensor:
    """``site``'s activation at each item's span tokens, pooled to one vector per item ``[N, D]``."""
    feats = []
    for _, enc, t, _ in model.span_batches(outs, batch_size, read=[site]):
        h_BLD = t[site].float()
        span_BL = enc.span_BL.float()
        if pool == "mean":
            feats.append((h_BLD * span_BL[..., None]).sum(1) / span_BL.sum(1, keepdim=True))
        else:  # last span token: the state after the whole mention has been read
            last_B = (span_BL * torch.arange(span_BL.shape[1], device=span_BL.device)).argmax(1)
            feats.append(h_BLD[torch.arange(h_BLD.shape[0], device=h_BLD.device), last_B.to(h_BLD.device)])
    return torch.cat(feats)


class Probing(Method):
    """Layer-wise linear probes: site scores by cross-validated decodability; hallucination probes."""

    name = "probing"
    answers = {"localize": "decodability"}
    capabilities = frozenset({"localize", "detect_hallucination"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    capability_families = {"detect_hallucination": frozenset({"generative"})}
    Config = ProbingConfig
    fits = True

    def _check(self) -> None:
        c = self.config
        if c.metric not in ("loglik", "accuracy"):
            raise BenchError(f"probing: metric must be 'loglik' or 'accuracy', not {c.metric!r}")
        if c.pool not in ("last", "mean"):
            raise BenchError(f"probing: pool must be 'last' or 'mean', not {c.pool!r}")
        if c.folds < 2:
            raise BenchError(f"probing: folds must be at least 2, not {c.folds}")
        if not c.C > 0:
            raise BenchError(f"probing: C must be positive, not {c.C}")

    # ------------------------------------------------------------ localize
    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        self._check()
        fit = request.fit
        if fit is None or not fit.answers or not fit.values:
            raise BenchError("probing: localize needs a fit split with answers and values (request.fit)")
        cands = request.candidates
        with torch.no_grad():
            _, tr = fit.evaluate("clean", read=cands)
        feats = {s: fit.pooled(tr[s]).reshape(fit.n, -1).double().numpy() for s in cands}
        # one probe per relation (its value set) and site, scored by held-out quality
        quality: dict[tuple[str, ...], np.ndarray] = {}
        for vals in dict.fromkeys(fit.values):
            rows = np.array([v == vals for v in fit.values])
            y_N = np.array([vals.index(a) for a, v in zip(fit.answers, fit.values) if v == vals])
            quality[vals] = np.array([cv_quality(feats[s][rows], y_N, len(vals), self.config) for s in cands])
        record_fit(self, "probe_quality", {"q": torch.tensor(np.stack(list(quality.values())), device="cpu")})
        for vals, q in quality.items():
            self.report(**{f"probe_{self.config.metric}_{'_'.join(vals[:1])}_{s}": float(x)
                           for s, x in zip(cands, q)})
        mean_q = np.nanmean(np.stack(list(quality.values())), 0)  # relations absent from the fit split
        out = torch.empty(request.n, len(cands), dtype=torch.float64, device="cpu")
        for i, vals in enumerate(request.values or [()] * request.n):
            row = quality.get(tuple(vals), mean_q)
            out[i] = torch.from_numpy(np.nan_to_num(row, nan=-1e6))
        return out

    # ---------------------------------------------------- detect_hallucination
    def detect_hallucination(self, model: Model, request: HallucinationRequest) -> torch.Tensor:
        self._check()
        site = model.layer_site_at("lm", "resid_post", self.config.layer)
        fit_y = request.fit_labels_B.long().numpy()
        if len(np.unique(fit_y)) < 2:
            raise BenchError("probing: the fit split has only one label; no probe can be fitted")
        x_fit = span_states(model, request.fit, site, self.config.pool, request.batch_size).double().numpy()
        x_items = span_states(model, request.items, site, self.config.pool, request.batch_size).double().numpy()
        fit_kinds, item_kinds = np.array(request.fit.kinds), np.array(request.items.kinds)
        pooled = fit_probe(x_fit, fit_y, self.config.C, self.config.max_iter)
        scores = np.zeros(request.items.n)
        for kind in dict.fromkeys(request.items.kinds):
            sel_fit = fit_kinds == kind
            probe = pooled
            if len(np.unique(fit_y[sel_fit])) == 2:  # both labels seen for this kind: a probe of its own
                probe = fit_probe(x_fit[sel_fit], fit_y[sel_fit], self.config.C, self.config.max_iter)
            scaler, clf = probe
            record_fit(self, f"probe_{kind}", {"coef": torch.from_numpy(clf.coef_.copy()),
                                               "intercept": torch.from_numpy(clf.intercept_.copy()),
                                               "mean": torch.from_numpy(scaler.mean_.copy())})
            sel = item_kinds == kind
            scores[sel] = clf.predict_proba(scaler.transform(x_items[sel]))[:, list(clf.classes_).index(1)]
        self.report(probe_fit_rows=len(fit_y), probe_layer=float(site.split(".")[2]))
        return torch.from_numpy(scores).double()


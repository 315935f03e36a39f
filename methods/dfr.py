"""Deep Feature Reweighting (DFR): retrain the last layer on group-balanced data.

Kirichenko, Izmailov & Wilson (2023), "Last Layer Re-Training is Sufficient for
Robustness to Spurious Correlations" (ICLR). The features are kept; only the final
linear classifier is refitted on a group-balanced subsample of held-out data, which
down-weights the spurious features the biased training relied on.

Here the features are the model's unit-norm image embeddings (``encode_image``) of the
debias request's fit split; groups are (class, spurious value). A subsample with the same
number of images from every group present (the smallest group's count, drawn with a
seeded generator) trains an L2-regularised multinomial logistic regression (scikit-learn,
lbfgs; features standardised with the subsample's statistics), averaged over
``n_subsamples`` draws as in the paper. The result is handed back as
``Intervention.head``: ``[B, D] -> [B, n_classes]`` logits that replace zero-shot
classification. ``components`` = 1 (one retrained layer). A non-interpretability baseline:
it touches no internal site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.capabilities import DebiasRequest, Intervention
from bench.errors import BenchError
from bench.kit.fitting import cached, content_hash, record_fit
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class DFRConfig(MethodConfig):
    C: float = 1.0  # inverse L2 strength of the logistic regression
    n_subsamples: int = 10  # balanced subsamples whose classifiers are averaged (Kirichenko et al. use 10)
    seed: int = 0


def balanced_indices(groups_N: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of a group-balanced subsample: the smallest group's size from every group, drawn
    without replacement (sorted, so the result depends only on the draw)."""
    ids = sorted(set(groups_N.tolist()))
    m = min(int((groups_N == g).sum()) for g in ids)
    picks = []
    for g in ids:
        members = torch.nonzero(groups_N == g).flatten()
        picks.append(members[torch.randperm(len(members), generator=generator, device="cpu")[:m]])
    return torch.cat(picks).sort().values


def fit_dfr(x_ND: torch.Tensor, y_N: torch.Tensor, groups_N: torch.Tensor, n_classes: int, C: float,
            n_subsamples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaged logistic-regression weights ``(W_KD, b_K)`` over balanced subsamples (logits ``x W.T + b``)."""
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(seed)
    W = np.zeros((n_classes, x_ND.shape[1]))
    b = np.zeros(n_classes)
    for _ in range(n_subsamples):
        idx = balanced_indices(groups_N, g)
        x = x_ND[idx].double().numpy()
        y = y_N[idx].numpy()
        mu, sd = x.mean(0), x.std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
        coef = np.zeros((n_classes, x.shape[1]))
        icpt = np.zeros(n_classes)
        if len(clf.classes_) == 2 and clf.coef_.shape[0] == 1:  # binary: one row, logit of classes_[1]
            coef[clf.classes_[1]], icpt[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        else:
            coef[clf.classes_], icpt[clf.classes_] = clf.coef_, clf.intercept_
        # fold the standardisation into the weights: logits on raw embeddings
        W += coef / sd
        b += icpt - (coef * mu / sd).sum(1)
    return torch.from_numpy(W / n_subsamples).float(), torch.from_numpy(b / n_subsamples).float()


class DFR(Method):
    """Last-layer retraining on a group-balanced fit subsample (Kirichenko et al., 2023)."""

    name = "dfr"
    capabilities = frozenset({"debias"})
    families = frozenset({"contrastive"})
    Config = DFRConfig
    fits = True

    def debias(self, model: Model, request: DebiasRequest) -> Intervention:
        cfg = self.config
        if cfg.C <= 0 or cfg.n_subsamples < 1:
            raise BenchError(f"dfr: C must be > 0 and n_subsamples ≥ 1 (got C={cfg.C}, n_subsamples={cfg.n_subsamples})")
        x_ND = request.fit_embeddings(model)
        y_N = request.fit_labels_B.long()
        n_classes = len(request.class_prompts)
        if len(set(y_N.tolist())) < 2:
            raise BenchError("dfr: the fit split shows only one class")
        groups_N = y_N * (int(request.fit_spurious_B.max()) + 1) + request.fit_spurious_B.long()
        key = content_hash(x_ND, y_N, groups_N, n_classes, cfg)
        art = cached("dfr", key, lambda: dict(zip(("W", "b"), fit_dfr(x_ND, y_N, groups_N, n_classes, cfg.C,
                                                                           cfg.n_subsamples, cfg.seed))))
        W_KD, b_K = art["W"], art["b"]
        record_fit(self, "last_layer", art)
        self.report(dfr_fit_accuracy=float(((x_ND @ W_KD.T + b_K).argmax(-1) == y_N).float().mean()))

        def head(img_BD: torch.Tensor) -> torch.Tensor:
            return img_BD @ W_KD.T.to(img_BD.dtype) + b_K.to(img_BD.dtype)

        return Intervention({}, components=1, head=head, description="DFR: last layer retrained on balanced fit data")

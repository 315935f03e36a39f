"""What a task hands a method, and what the method hands back, per capability.

These types are the whole interface between tasks and methods: tasks build the
requests, methods answer them; neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch

CAPABILITIES: tuple[str, ...] = ("localize", "detect_hallucination", "edit", "debias", "attribute")

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AttributionRequest:
    """Explain a scalar target per example with a map over the input image.

    ``score(pixels_NCHW, example_idx_N) -> score_N`` is differentiable in the
    pixels; row ``n`` is scored with the target of example ``example_idx_N[n]``,
    so a method may evaluate many perturbed copies of any example in one batch.
    ``grid`` is the patch grid the task scores on; methods may return maps at
    pixel resolution ``[B, H, W]`` or patch resolution ``[B, *grid]``.
    """

    pixels_BCHW: torch.Tensor
    score: ScoreFn
    grid: tuple[int, int]
    batch_size: int = 64
    # The text side of each target, for methods that read the model's own attention over it
    # (cross-attention maps): the prompt or question of example ``i`` and the word in it
    # that names the target (e.g. "a red circle" and "circle"); empty when not applicable.
    prompts: list[str] = field(default_factory=list)
    target_words: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.pixels_BCHW.shape[0])

    def chunks(self, requires_grad: bool = False) -> "Iterator[tuple[torch.Tensor, torch.Tensor]]":
        """``(pixels_nCHW, example_idx_n)`` in chunks of ``batch_size`` examples (fresh leaf tensors)."""
        bs = max(1, int(self.batch_size))
        for i in range(0, self.n, bs):
            x = self.pixels_BCHW[i : i + bs].detach().clone().requires_grad_(requires_grad)
            yield x, torch.arange(i, i + x.shape[0], device=x.device)

    def score_all(self, pixels_NCHW: torch.Tensor, example_idx_N: torch.Tensor) -> torch.Tensor:
        """``score`` in chunks of ``batch_size`` rows (no gradient)."""
        outs = []
        with torch.no_grad():
            for i in range(0, pixels_NCHW.shape[0], self.batch_size):
                outs.append(self.score(pixels_NCHW[i : i + self.batch_size], example_idx_N[i : i + self.batch_size]))
        return torch.cat(outs) if outs else torch.zeros(0, device="cpu")


@dataclass
class DebiasRequest:
    """Remove a spurious shortcut from a contrastive model's zero-shot classifier.

    The fit split is group-labelled: ``fit_labels_B`` the class (index into
    ``class_prompts``), ``fit_spurious_B`` the spurious attribute (index into
    ``spurious_prompts``, a text description of each attribute value, for methods
    that describe components in words). Methods see only this split.
    """

    fit_pixels_BCHW: torch.Tensor
    fit_labels_B: torch.Tensor
    fit_spurious_B: torch.Tensor
    class_prompts: list[str]
    spurious_prompts: list[str]
    batch_size: int = 64

    def _batches(self) -> Iterator[torch.Tensor]:
        bs = max(1, self.batch_size)
        for i in range(0, self.fit_pixels_BCHW.shape[0], bs):
            yield self.fit_pixels_BCHW[i : i + bs]

    @torch.no_grad()
    def fit_activations(self, model: Any, site: str) -> torch.Tensor:
        """``site``'s activations over the fit images, in batches of ``batch_size`` (each forward
        pass stops once the site is read)."""
        out = []
        for pixels in self._batches():
            with model.trace(read=[site], stop_after_reads=True) as t:
                model.encode_image(pixels)
            out.append(t[site])
        return torch.cat(out)

    @torch.no_grad()
    def fit_embeddings(self, model: Any, write: "Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None" = None
                       ) -> torch.Tensor:
        """The fit images' unit-norm embeddings ``[N, D]``, with ``write`` edits applied."""
        with model.trace(write=write or {}):
            return torch.cat([model.encode_image(pixels) for pixels in self._batches()])


@dataclass
class Intervention:
    """What a debiasing method hands back: edits applied while the model encodes.

    ``writes`` maps site names to edit functions (``value -> new value``), applied
    inside ``model.trace(write=...)`` to every image and text encoding; ``head``
    optionally replaces zero-shot classification by a classifier on the (edited)
    unit-norm image embeddings, ``[B, D] -> [B, n_classes]`` (last-layer retraining
    baselines). ``components`` counts the model components touched (heads, neurons,
    directions or retrained layers), reported as a cost.
    """

    writes: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    components: int
    head: Callable[[torch.Tensor], torch.Tensor] | None = None
    description: str = ""


@dataclass
class ScoredOutputs:
    """Pieces of a generative model's own outputs, each to be scored in context.

    Row ``i`` is image ``pixels_BCHW[i]``, the prompt ``prompts[i]``, and the model's
    own greedy output ``prefixes[i] + spans[i]``; the span is an object mention in a
    caption ("red circle") or the answer to a yes/no probe ("yes"). ``kinds`` says
    which ("caption" or "pope").
    """

    pixels_BCHW: torch.Tensor
    prompts: list[str]
    prefixes: list[str]
    spans: list[str]
    kinds: list[str]

    @property
    def n(self) -> int:
        return len(self.prompts)


@dataclass
class HallucinationRequest:
    """Score each span of ``items`` by how likely it is a hallucination (higher = more likely).

    ``fit`` / ``fit_labels_B`` (1 = hallucinated) come from the fit split, for methods
    that learn a detector (probes); the labels of ``items`` are never shown.
    """

    items: ScoredOutputs
    fit: ScoredOutputs
    fit_labels_B: torch.Tensor
    batch_size: int = 64


class Evaluate(Protocol):
    def __call__(self, which: str, read: Sequence[str] = (), write: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                 copies: int = 1, keep_grad: bool = False) -> tuple[torch.Tensor, Any]: ...


@dataclass
class LocalizeRequest:
    """Find where a behaviour lives: score every candidate site, per example.

    ``evaluate(which, read, write, copies, keep_grad) -> (score_N, trace)`` runs the
    model on the ``"clean"`` inputs or their ``"corrupt"`` counterfactuals (the same
    scene with the subject swapped for one with another answer), with the batch
    repeated ``copies`` times (copy-major: row ``c·n + i`` is copy ``c`` of example
    ``i``, so one pass can patch each copy at a different site), reading and writing
    sites through ``model.trace``. ``score_N`` is the behaviour's metric per row: the
    logit difference between the clean and the counterfactual answer (Zhang & Nanda,
    2024, "Towards Best Practices of Activation Patching"). The method returns
    ``[n, len(candidates)]`` scores, higher = more responsible.
    """

    n: int
    candidates: list[str]
    evaluate: Evaluate
    batch_size: int = 64
    # What the behaviour is, for methods that read it off the model themselves (lenses,
    # decompositions, probes): row ``i`` asks ``prompts[i]`` (a question, a text template with
    # a ``{value}`` slot, or a diffusion prompt) whose clean answer is ``answers[i]`` and whose
    # counterfactual answer is ``alternatives[i]``, both among ``values[i]``.
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    alternatives: list[str] = field(default_factory=list)
    values: list[tuple[str, ...]] = field(default_factory=list)
    # The sequence position of the candidates' stream at which the metric is read, per row
    # (generative: the position predicting the answer; contrastive: the CLS token), or
    # ``None`` where no single position carries it (diffusion text encoders): pool over positions.
    positions_N: torch.Tensor | None = None
    # A fit split for methods that learn something first (probes, SAEs): the same kind of
    # request over disjoint examples. Never the examples being scored.
    fit: "LocalizeRequest | None" = None

    def patch_sweep(self, which: str, sources: Mapping[str, torch.Tensor], sites_per_pass: int = 8) -> torch.Tensor:
        """The metric of the ``which`` run with each candidate site overwritten by ``sources[site]``
        (its activations from the other run), ``[n, len(candidates)]``: one batch copy per site,
        ``sites_per_pass`` sites per forward pass."""
        from bench.sites import replace_rows

        n, cands = self.n, self.candidates
        out = torch.empty(n, len(cands), dtype=torch.float64, device="cpu")
        step = max(1, sites_per_pass)
        for g in range(0, len(cands), step):
            group = cands[g : g + step]
            writes = {site: replace_rows(torch.arange(k * n, (k + 1) * n, device="cpu"), sources[site]) for k, site in enumerate(group)}
            patched, _ = self.evaluate(which, write=writes, copies=len(group))
            out[:, g : g + len(group)] = patched.view(len(group), n).T.double()
        return out

    def corrupt_gradients(self, sites: Sequence[str]) -> "list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]":
        """Per site: its clean activation, its corrupt activation and the metric's gradient there at
        the corrupt run (``None`` where the site does not reach the metric): the terms of
        attribution patching (Nanda, 2023), from two forward passes and one backward pass."""
        with torch.no_grad():
            _, clean = self.evaluate("clean", read=sites)
        score, corrupt = self.evaluate("corrupt", read=sites, keep_grad=True)
        acts = [corrupt[s] for s in sites]
        grads = torch.autograd.grad(score.sum(), acts, allow_unused=True)
        return [(clean[s], a.detach(), None if g is None else g.detach()) for s, a, g in zip(sites, acts, grads)]

    def pooled(self, act: torch.Tensor) -> torch.Tensor:
        """One vector per row ``[N, D]`` from a site's activation ``[N, (L,) ...]``: the row's
        readout position when known (:attr:`positions_N`), else the mean over positions.
        Rows may be copies (``N = c·n``): positions repeat copy-major."""
        if act.dim() == 2:
            return act
        if act.dim() > 3:  # feature maps: no token axis to pick from
            return act.flatten(1)
        if self.positions_N is None:
            return act.mean(1)
        pos = self.positions_N.repeat(act.shape[0] // len(self.positions_N))
        return act[torch.arange(act.shape[0], device=act.device), pos.to(act.device)]


@dataclass
class EditRequest:
    """Rewrite facts in a model's weights.

    Request ``k`` shows its subject as images (``pixels_KRCHW``: ``R`` renders of the
    same entity) with the question ``prompts[k]``, whose answer should change from
    ``old[k]`` to ``new[k]``; ``values[k]`` lists the relation's possible answers. For a
    contrastive model ``prompts[k]`` is a text template with a ``{value}`` slot (the image
    should come to match the template filled with ``new[k]`` rather than the other values). ``site`` is where the caller wants the edit (e.g. a
    planted or localized site), or ``None`` to let the method choose. The method edits
    the model's parameters in place (``model.module``); the task snapshots every
    parameter before and restores them after scoring, so edits never leak across cells.
    """

    pixels_KRCHW: torch.Tensor
    prompts: list[str]
    old: list[str]
    new: list[str]
    site: str | None = None
    batch_size: int = 64
    values: list[tuple[str, ...]] = field(default_factory=list)
    # How the task reads the rewrites off the model, ``(model, request, options) -> EditObjective``;
    # ``None``: the model family's read-out (``Model.edit_objective``). A task with its own
    # notion of the answer (multi-token answers, a judge) sets it; methods never branch on it.
    readout: "Callable[[Any, EditRequest, ObjectiveOptions], EditObjective] | None" = None

    @property
    def K(self) -> int:
        return int(self.pixels_KRCHW.shape[0])

    def objective(self, model: Any, options: "ObjectiveOptions | None" = None) -> "EditObjective":
        """The request's inputs as one batch through ``model``: the loss of the new answer, the
        preference for it, and where each row's subject is (see :class:`EditObjective`)."""
        opts = options or ObjectiveOptions()
        if self.readout is not None:
            return self.readout(model, self, opts)
        return model.edit_objective(self, opts)

    def select(self, ks: Sequence[int]) -> "EditRequest":
        """The sub-request of rewrites ``ks`` (same site, batch size and read-out)."""
        idx = list(ks)
        return EditRequest(self.pixels_KRCHW[idx], [self.prompts[k] for k in idx], [self.old[k] for k in idx],
                           [self.new[k] for k in idx], self.site, self.batch_size,
                           [self.values[k] for k in idx] if len(self.values) == len(self.prompts) else [],
                           self.readout)


@dataclass(frozen=True)
class ObjectiveOptions:
    """How a method wants an edit request's inputs drawn (diffusion only; the other families have
    no randomness): ``draws`` (timestep, noise) pairs per render from a generator seeded with
    ``seed``, timesteps in ``t_range`` (fractions of ``T − 1``; ``None``: all of ``0 … T − 1``),
    redrawn at every call when ``resample`` (a fine-tuning loop's fresh draws) and fixed otherwise
    (an optimisation's fixed batch). ``prompt_rows``: ``"row"`` feeds the text encoder one prompt
    per row (its sites see ``[B, L, D]``, row-aligned with the subject masks), ``"rewrite"`` one
    per rewrite (``[K, L, D]``; the denoiser's output is bit-identical, measured on zoo-diffusion)."""

    draws: int = 1
    seed: int = 0
    t_range: tuple[float, float] | None = None
    resample: bool = False
    prompt_rows: str = "row"


@dataclass
class EditObjective:
    """An edit request's inputs through a model, one row per (draw, rewrite, render):
    row ``b = d·K·R + k·R + r`` is render ``r`` of rewrite ``k`` at draw ``d`` (one draw except
    for diffusion). Each read-out takes ``rows`` (indices into the ``B`` rows, repeats allowed;
    ``None`` = all, in order) and runs the model on them, so a caller's ``model.trace`` reads and
    writes apply as usual:

    - ``loss_B(rows)``: the loss of the new answer, differentiable — generative: cross-entropy of
      the new answer's first token over the vocabulary; contrastive: cross-entropy of the template
      filled with the new value among the template filled with each of the rewrite's values;
      diffusion: the denoising error of the renders (what the prompt should now draw).
    - ``margin_B(rows)``: how much the row prefers the new answer to the old — the logit
      (generative) or similarity (contrastive) difference; minus the denoising error (diffusion).
    - ``prefers_new_B(rows)``: whether the top answer among the rewrite's values is the new one
      (generative, contrastive; ``BenchError`` for diffusion, whose answers are read by a judge).
    - ``subject_BL(positions)``: where each row's subject sits in the token stream of the tower
      the family's facts live in (``"readout"``: the answer position / CLS token; ``"subject"``:
      the image tokens; diffusion: the entity word either way); ``valid_BL``: every real token there.
    """

    K: int
    R: int
    draws: int
    request_B: torch.Tensor
    loss_B: "Callable[[torch.Tensor | None], torch.Tensor]"
    margin_B: "Callable[[torch.Tensor | None], torch.Tensor]"
    prefers_new_B: "Callable[[torch.Tensor | None], torch.Tensor]"
    subject_BL: "Callable[[str], torch.Tensor]"
    valid_BL: torch.Tensor

    @property
    def B(self) -> int:
        return int(self.request_B.shape[0])

    def per_rewrite(self, x_B: torch.Tensor) -> torch.Tensor:
        """The mean of a per-row figure over each rewrite's rows ``[K]``."""
        return torch.zeros(self.K, dtype=x_B.dtype, device=x_B.device).index_add(
            0, self.request_B.to(x_B.device), x_B) / (self.B // self.K)

    def loss_K(self) -> torch.Tensor:
        """The loss of the new answer per rewrite (all rows)."""
        return self.per_rewrite(self.loss_B(None))

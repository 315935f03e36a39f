"""The model contract: family, sites (declared as data), family operations and ``trace``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Literal, Mapping, Protocol, Sequence, Union, cast

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.capabilities import EditObjective, EditRequest, ObjectiveOptions
from bench.errors import BenchError, UnknownName
from bench.sites import EditFn, Site, SiteSpec, Trace

if TYPE_CHECKING:
    from bench.capabilities import ScoredOutputs

Family = Literal["contrastive", "generative", "diffusion"]
FAMILIES: tuple[str, ...] = ("contrastive", "generative", "diffusion")


@dataclass(frozen=True)
class TokenLayout:
    """Where image tokens sit in a vision tower's sequence (``cls`` is ``None`` if absent)."""

    cls: int | None
    image: slice
    grid: tuple[int, int]
    patch_size: int


@dataclass(frozen=True)
class PlantedRelation:
    """Ground truth a zoo model carries: facts taught with only ``site``'s module trainable.

    ``entities`` are the planted entities of world ``world_seed`` (built with
    ``n_entities``); ``question`` is how the model is asked ("what is the home of the
    glyph?"), ``values`` the relation's possible answers. Tasks read this; methods must not.
    """

    relation: str
    site: str
    entities: tuple[str, ...]
    world_seed: int
    n_entities: int
    question: str
    values: tuple[str, ...]
    # Diffusion: what each value makes the model draw (value → shape word); the prompt is
    # ``question`` with ``{entity}`` filled in ("a {entity}").
    renders: tuple[tuple[str, str], ...] = ()
    # The mediation profile (``bench zoo audit``): per candidate site (every site of ``site``'s
    # kind in its tower), how often swapping that site's output from a render of another planted
    # entity into a run on this one makes the answer that entity's (interchange intervention,
    # Geiger et al., 2021). ``site`` says where the fact is *stored* (the only weights phase 2
    # changed; the revert test); this says what its answer *depends on* (Hase et al., 2023).
    # Empty where the model was never audited.
    mediation: tuple[tuple[str, float], ...] = ()


class Model(ABC):
    """A wrapped model. Methods and tasks see models only through this interface."""

    family: ClassVar[str]

    def __init__(self, name: str, module: nn.Module, site_specs: Mapping[str, SiteSpec], sites: Iterable[Site]) -> None:
        self.name = name
        self.module = module
        self.site_specs = dict(site_specs)
        self._sites = {s.name: s for s in sites}
        missing = set(self._sites) ^ set(self.site_specs)
        if missing:
            raise ValueError(f"sites and site specs disagree on {sorted(missing)[:5]}")
        self.batch_size = 64
        self.dtype = "float32"
        self.device = "cpu"
        # known properties of the weights that tasks may select on, e.g. {"spurious": "background"}
        self.tags: dict[str, str] = {}
        self.planted: list[PlantedRelation] = []  # planted knowledge (zoo models), for tasks only
        # parameters as they were before the facts were planted (zoo models: the designated
        # modules' phase-1 values), ``self.module`` parameter name → tensor: the revert test's reference
        self.reference_weights: dict[str, torch.Tensor] = {}

    # --------------------------------------------------------------- sites
    def sites(self, tower: str | None = None, kind: str | None = None) -> list[Site]:
        return [s for s in self._sites.values()
                if (tower is None or s.tower == tower) and (kind is None or s.kind == kind)]

    def layer_sites(self, tower: str, kind: str) -> list[str]:
        """Names of the per-layer sites of one kind in a tower, in layer order."""
        found = [s for s in self.sites(tower=tower, kind=kind) if s.layer is not None]
        return [s.name for s in sorted(found, key=lambda s: cast(int, s.layer))]  # layer: not None, above

    def layer_site_at(self, tower: str, kind: str, layer: int | None = None) -> str:
        """The per-layer site of ``kind`` in ``tower`` at block ``layer`` (negative counts from the
        end; ``None``: the middle block ``(n − 1) // 2``); ``BenchError`` when out of range."""
        sites = self.layer_sites(tower, kind)
        n = len(sites)
        if n == 0:
            raise BenchError(f"model {self.name!r} has no {tower}.blocks.*.{kind} sites")
        k = (n - 1) // 2 if layer is None else (layer + n if layer < 0 else layer)
        if not 0 <= k < n:
            raise BenchError(f"layer {layer} is out of range for a {n}-block {tower} tower")
        return sites[k]

    def site(self, name: str) -> Site:
        if name not in self._sites:
            raise UnknownName("site", name, self._sites)
        return self._sites[name]

    def trace(
        self,
        read: Iterable[str] = (),
        write: Mapping[str, EditFn] | None = None,
        stop_after_reads: bool = False,
        keep_grad: bool = False,
    ) -> Trace:
        """``with model.trace(read=[...], write={site: fn}) as t:`` — see :class:`bench.sites.Trace`."""
        return Trace(self.module, self.site_specs, read, write, stop_after_reads, keep_grad)

    # --------------------------------------------------------- provenance
    @property
    @abstractmethod
    def weights_hash(self) -> str:
        """A content hash of the weights (sha256 of the shipped file for zoo models)."""

    @abstractmethod
    def randomized(self, seed: int) -> "Model":
        """A copy with the same architecture and freshly initialised weights.

        Used by the model-randomisation sanity check (Adebayo et al., 2018).
        """

    def token_layout(self) -> TokenLayout | None:
        """Where image tokens sit in the vision tower's sequence; ``None`` if the model has none."""
        return None

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "n_sites": len(self._sites),
                "params": sum(p.numel() for p in self.module.parameters())}

    # ---------------------------------------------------------- read-outs
    def edit_objective(self, request: EditRequest, options: ObjectiveOptions) -> EditObjective:
        """The family's read-out of an edit request (:class:`bench.capabilities.EditObjective`):
        implemented once per family, so editing methods never branch on the family."""
        raise BenchError(f"model {self.name!r} ({self.family}) has no edit read-out")

    def value_readout(self, question: str, values: Sequence[str]) -> "Callable[[Any], torch.Tensor]":
        """``subject -> logits_NV``: the model's preference among ``values`` for the fact a subject
        shows (generative: first answer-token logits of ``question``; contrastive: similarity to
        ``question`` filled with each value; diffusion: minus the denoising error of each value's
        render of a :class:`DiffusionSubject`, a diffusion classifier, Li et al., 2023)."""
        raise BenchError(f"no fact read-out for a {self.family} model")

    def value_loss(self, question: str, values: Sequence[str], shown: Any, new_index: int
                   ) -> "Callable[[], torch.Tensor]":
        """The constrained fine-tune's objective on a subject: cross-entropy of value ``new_index``
        among ``values`` (diffusion: the denoising error of the renders showing it)."""
        logits_of = self.value_readout(question, values)
        target = torch.full((len(shown),), new_index, device=self.device)
        return lambda: F.cross_entropy(logits_of(shown), target)


def _check_edit_request(request: EditRequest, needs_values: bool) -> tuple[int, int]:
    K, R = request.pixels_KRCHW.shape[:2]
    if not (len(request.prompts) == len(request.new) == len(request.old) == K):
        raise BenchError(f"edit request: {K} subjects but {len(request.prompts)} prompts, "
                         f"{len(request.old)} old and {len(request.new)} new answers")
    if needs_values:
        if len(request.values) != K:
            raise BenchError("a contrastive edit request must list each relation's values")
        if any(n not in vals for n, vals in zip(request.new, request.values)):
            raise BenchError("a contrastive edit's new answer must be one of its values")
    return int(K), int(R)


def _rows(idx: torch.Tensor | None, n: int) -> torch.Tensor:
    # row indices live on the host: they index the request's (host) inputs; moved where they meet outputs
    return torch.arange(n, device="cpu") if idx is None else idx.to("cpu")


def subject_word(prompt: str, old: str) -> str:
    """The word a diffusion prompt is about: ``old`` when the prompt names it (a concept edit,
    "a red circle"), else the prompt's last word ("a <entity>")."""
    if old and re.search(rf"(?<!\w){re.escape(old)}(?!\w)", prompt, re.IGNORECASE):
        return old
    words = prompt.split()
    if not words:
        raise BenchError("an edit request has an empty prompt")
    return words[-1]


class ContrastiveModel(Model):
    """CLIP-style: an image tower and a text tower meeting in a dot product."""

    family = "contrastive"

    @abstractmethod
    def encode_image(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] → unit-norm embeddings ``[B, D]``."""

    @abstractmethod
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts → unit-norm embeddings ``[T, D]``."""

    @abstractmethod
    def similarity_to(self, image_BD: torch.Tensor, text_TD: torch.Tensor) -> torch.Tensor:
        """Scaled similarity logits ``[B, T]`` between precomputed embeddings."""

    def similarity(self, pixels_BCHW: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Scaled cosine similarity logits ``[B, T]``."""
        return self.similarity_to(self.encode_image(pixels_BCHW), self.encode_text(texts))

    @property
    @abstractmethod
    def image_size(self) -> int: ...

    def edit_objective(self, request: EditRequest, options: ObjectiveOptions) -> EditObjective:
        """Each render against its rewrite's template filled with each of its values (a concept
        remapping, Santurkar et al., 2021); the subject is the CLS token (``"readout"``) or the
        image tokens of the vision tower."""
        K, R = _check_edit_request(request, needs_values=True)
        pixels = request.pixels_KRCHW.flatten(0, 1)
        texts = [p.format(value=v) for p, vals in zip(request.prompts, request.values) for v in vals]
        offsets = np.cumsum([0] + [len(v) for v in request.values])
        target_B = torch.tensor([int(offsets[k]) + request.values[k].index(request.new[k])
                                 for k in range(K) for _ in range(R)], device="cpu")
        own_BT = torch.zeros(K * R, len(texts), dtype=torch.bool, device="cpu")  # each image vs its own rewrite's texts
        for k in range(K):
            own_BT[k * R : (k + 1) * R, int(offsets[k]) : int(offsets[k + 1])] = True

        def sims(idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            rows = _rows(idx, K * R)
            image = self.encode_image(pixels if idx is None else pixels[rows])
            return self.similarity_to(image, self.encode_text(texts)), rows

        def loss(idx: torch.Tensor | None) -> torch.Tensor:
            s_BT, rows = sims(idx)
            d = s_BT.device
            return F.cross_entropy(s_BT.masked_fill(~own_BT[rows].to(d), float("-inf")), target_B[rows].to(d),
                                   reduction="none")

        def margin(idx: torch.Tensor | None) -> torch.Tensor:
            if any(o not in vals for o, vals in zip(request.old, request.values)):
                raise BenchError("a contrastive edit's margin needs its old answer among its values")
            old_B = torch.tensor([int(offsets[k]) + request.values[k].index(request.old[k])
                                  for k in range(K) for _ in range(R)], device="cpu")
            s_BT, rows = sims(idx)
            r = torch.arange(len(rows), device=s_BT.device)
            return s_BT[r, target_B[rows].to(s_BT.device)] - s_BT[r, old_B[rows].to(s_BT.device)]

        def prefers_new(idx: torch.Tensor | None) -> torch.Tensor:
            s_BT, rows = sims(idx)
            d = s_BT.device
            return (s_BT.masked_fill(~own_BT[rows].to(d), float("-inf")).argmax(-1) == target_B[rows].to(d)).cpu()

        layout = self.token_layout()

        def subject(positions: str) -> torch.Tensor:
            if layout is None:
                raise BenchError(f"{self.name!r} declares no token layout for its image tokens")
            out = torch.zeros(K * R, layout.image.stop, dtype=torch.bool, device="cpu")
            if positions == "readout" and layout.cls is not None:
                out[:, layout.cls] = True
            else:
                out[:, layout.image] = True
            return out

        valid = torch.ones(K * R, layout.image.stop if layout is not None else 0, dtype=torch.bool, device="cpu")
        return EditObjective(K, R, 1, torch.arange(K, device="cpu").repeat_interleave(R), loss, margin, prefers_new,
                             subject, valid)

    def value_readout(self, question: str, values: Sequence[str]) -> Callable[[Any], torch.Tensor]:
        texts = [question.format(value=v) for v in values]

        def con(pixels_NCHW: torch.Tensor) -> torch.Tensor:
            return self.similarity_to(self.encode_image(pixels_NCHW), self.encode_text(texts))
        return con


@dataclass(frozen=True)
class SpanInputs:
    """Token inputs for scoring a span of a model's output in context.

    The sequence is ``prompt`` followed by the model's output ``prefix + span``;
    ``span_BL`` marks the span's tokens, ``image_BL`` the image-token positions.
    The model's prediction of the token at position ``p`` is read at ``p − 1``.
    """

    ids_BL: torch.Tensor
    mask_BL: torch.Tensor
    span_BL: torch.Tensor
    image_BL: torch.Tensor


@dataclass(frozen=True)
class AnswerInputs:
    """Prompt tokens (right-padded) and, per row, the position whose logits predict the
    answer's first token (``pos_B``) and that token's id (``answer_B``)."""

    ids_BL: torch.Tensor
    mask_BL: torch.Tensor
    pos_B: torch.Tensor
    answer_B: torch.Tensor


class GenerativeModel(Model):
    """LLaVA-style: vision tower → projector → decoder LM over image and text tokens."""

    family = "generative"

    def answer_inputs(self, prompts: list[str], answers: list[str]) -> AnswerInputs:
        """Inputs for scoring the first token of each answer in one forward pass (no answer tokens
        beyond the longest prompt are fed; causal attention keeps shorter rows unaffected)."""
        enc = self.encode_spans(prompts, [""] * len(prompts), answers)
        first_B = enc.span_BL.float().argmax(1)
        L = int(first_B.max())
        return AnswerInputs(enc.ids_BL[:, :L], enc.mask_BL[:, :L], first_B - 1,
                            enc.ids_BL.gather(1, first_B[:, None])[:, 0])

    def word_token_ids(self, words: list[str]) -> torch.Tensor:
        """The first token id of each word as an answer (for restricting logits to candidates)."""
        return self.answer_inputs([""] * len(words), words).answer_B

    def span_batches(self, outs: "ScoredOutputs", batch_size: int, read: Sequence[str] = (),
                     write: Mapping[str, EditFn] | None = None, logits: bool = False
                     ) -> Iterator[tuple[slice, SpanInputs, Trace, torch.Tensor | None]]:
        """Run the model over scored outputs in batches: per batch, ``(rows, inputs, trace, logits)``
        with ``read`` sites in the trace and ``write`` edits applied; the forward pass stops after the
        reads unless ``logits`` are asked for (then ``None`` is never yielded for them)."""
        for i in range(0, outs.n, max(1, batch_size)):
            sl = slice(i, i + batch_size)
            enc = self.encode_spans(outs.prompts[sl], outs.prefixes[sl], outs.spans[sl])
            out = None
            with self.trace(read=read, write=write, stop_after_reads=not logits) as t:
                out = self.forward_tokens(outs.pixels_BCHW[sl], enc.ids_BL, enc.mask_BL)
            yield sl, enc, t, out

    @abstractmethod
    def encode_spans(self, prompts: list[str], prefixes: list[str], spans: list[str]) -> SpanInputs:
        """Tokenise ``prompt`` + output ``prefix`` + ``span`` per row (right-padded), marking the span."""

    @abstractmethod
    def forward_tokens(self, pixels_BCHW: torch.Tensor, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, L, V]`` for token ids from :meth:`encode_spans` (sites fire as usual)."""

    @abstractmethod
    def generate(self, pixels_BCHW: torch.Tensor, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
        """Greedy continuations of ``prompts`` about each image."""

    @abstractmethod
    def logprobs(self, pixels_BCHW: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """Teacher-forced log-probability of each target continuation, summed over its tokens ``[B]``."""

    @abstractmethod
    def unembed(self, hidden_BPD: torch.Tensor) -> torch.Tensor:
        """Final norm and unembedding: residual-stream states → vocabulary logits (for lenses)."""

    @abstractmethod
    def image_positions(self, prompts: list[str]) -> torch.Tensor:
        """Boolean mask ``[B, L]`` of image-token positions in the LM sequence of each prompt."""

    def edit_objective(self, request: EditRequest, options: ObjectiveOptions) -> EditObjective:
        """Each render with its rewrite's question, read at the position that predicts the answer's
        first token; the subject is that position (``"readout"``) or the image tokens."""
        K, R = _check_edit_request(request, needs_values=False)
        pixels = request.pixels_KRCHW.flatten(0, 1)
        prompts = [p for p in request.prompts for _ in range(R)]
        # the fed tokens stop before the answer: the new and the old answer share the inputs
        inp = self.answer_inputs(prompts, [a for a in request.new for _ in range(R)])
        old_B = self.answer_inputs(prompts, [a for a in request.old for _ in range(R)]).answer_B
        B, L = inp.ids_BL.shape

        def logits(idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            rows = _rows(idx, B)
            if idx is None:
                out = self.forward_tokens(pixels, inp.ids_BL, inp.mask_BL)
            else:
                on = rows.to(inp.ids_BL.device)
                out = self.forward_tokens(pixels[rows], inp.ids_BL[on], inp.mask_BL[on])
            d = out.device
            return out[torch.arange(len(rows), device=d), inp.pos_B.to(d)[rows.to(d)]], rows.to(d)

        def loss(idx: torch.Tensor | None) -> torch.Tensor:
            z_BV, rows = logits(idx)
            return F.cross_entropy(z_BV, inp.answer_B.to(z_BV.device)[rows], reduction="none")

        def margin(idx: torch.Tensor | None) -> torch.Tensor:
            z_BV, rows = logits(idx)
            r = torch.arange(len(rows), device=z_BV.device)
            return z_BV[r, inp.answer_B.to(z_BV.device)[rows]] - z_BV[r, old_B.to(z_BV.device)[rows]]

        value_ids: list[torch.Tensor] = []

        def prefers_new(idx: torch.Tensor | None) -> torch.Tensor:
            if len(request.values) != K:
                raise BenchError("reading the preferred value needs each rewrite's values (EditRequest.values)")
            if not value_ids:  # the relations' candidate first tokens, once per objective
                value_ids.extend(self.word_token_ids(list(vals)) for vals in request.values)
            ids = value_ids
            z_BV, rows = logits(idx)
            target = [request.values[k].index(request.new[k]) for k in range(K)]
            k_B = (rows // R).tolist()
            return torch.tensor([int(z_BV[j, ids[k].to(z_BV.device)].argmax()) == target[k] for j, k in enumerate(k_B)],
                                device="cpu")

        def subject(positions: str) -> torch.Tensor:
            out = torch.zeros(B, L, dtype=torch.bool, device="cpu")
            if positions == "readout":
                out[torch.arange(B, device="cpu"), inp.pos_B.cpu()] = True
            else:
                img = self.image_positions(prompts).cpu()
                w = min(L, img.shape[1])
                out[:, :w] = img[:, :w]
            return out

        return EditObjective(K, R, 1, torch.arange(K, device="cpu").repeat_interleave(R), loss, margin, prefers_new,
                             subject, inp.mask_BL.bool().cpu())

    def value_readout(self, question: str, values: Sequence[str]) -> Callable[[Any], torch.Tensor]:
        ids_V = self.word_token_ids(list(values))

        def gen(pixels_NCHW: torch.Tensor) -> torch.Tensor:
            inp = self.answer_inputs([question] * len(pixels_NCHW), [values[0]] * len(pixels_NCHW))
            logits = self.forward_tokens(pixels_NCHW, inp.ids_BL, inp.mask_BL)
            return logits[torch.arange(len(inp.pos_B), device=logits.device), inp.pos_B.to(logits.device)][:, ids_V]
        return gen


@dataclass(frozen=True)
class PromptEncoding:
    """What conditions a diffusion denoiser: text-encoder hidden states and the prompt mask.

    ``mask_BL`` is 1 at prompt tokens (including begin/end tokens) and 0 at padding:
    it is the token layout of the text stream (``text.*`` sites, ``unet.*.cross.k``/``.v``
    and the key axis of ``unet.*.cross.pattern``).

    A denoiser that also takes a pooled prompt vector (SD3, Flux) gets it as the last row of
    ``hidden_BLD`` (zero-padded to its width, mask 0): tasks slice and repeat encodings by row, and
    the pooled vector must travel with its row.
    """

    hidden_BLD: torch.Tensor
    mask_BL: torch.Tensor

    def __len__(self) -> int:
        return int(self.hidden_BLD.shape[0])


Prompts = Union[Sequence[str], PromptEncoding]
Timesteps = Union[int, torch.Tensor]


@dataclass
class DiffusionSubject:
    """An entity as a diffusion model sees it: its prompt, and per row one layout rendered with
    every value's shape (``x0_VNCHW``), scored at shared (timestep, noise) draws."""

    prompts: list[str]
    x0_VNCHW: torch.Tensor
    noise_RNCHW: torch.Tensor
    t_RN: torch.Tensor


class ImageJudge(Protocol):
    """Reads what a generated single-object image shows: ``{"shape": [...], "colour": [...],
    "position": [...], "background": [...]}``, one word per image (the world's vocabulary)."""

    def __call__(self, pixels_BCHW: torch.Tensor) -> dict[str, list[str]]: ...


def judge_identity(model: "Model") -> str:
    """Who reads a diffusion model's samples, as per-process memos key on it: a named judge's
    ``identity`` (``name@weights_hash``, ``bench evaluate --judge``), else the judge's class (the
    model's own, e.g. zoo-oracle); ``""`` without one."""
    judge = getattr(model, "judge", None)
    return "" if judge is None else str(getattr(judge, "identity", type(judge).__name__))


class DiffusionModel(Model):
    """Text-to-image diffusion: a text encoder conditions a denoiser through cross-attention.

    ``judge`` (optional) reads generated images; the zoo sets its oracle classifier there,
    and tasks that score generations need one.

    The denoiser works on *samples* ``x_BCHW`` of shape :attr:`sample_shape`: pixels mapped
    to [-1, 1] for a pixel-space model, VAE latents for a latent model (Stable Diffusion).
    :meth:`noise_pred` returns the denoiser's raw output, whose meaning is
    :attr:`prediction_type` (``"epsilon"``, ``"v_prediction"`` or ``"sample"``, as in diffusers,
    or ``"flow_prediction"`` for a rectified flow, SD3 and Flux).

    Timesteps are integers ``t ∈ 0 … T−1`` (``T`` = :attr:`num_train_timesteps`), larger = noisier,
    for every kind of model: a DDPM-style model reads its ``ᾱ_t`` table, a rectified flow maps ``t``
    to its noise level ``σ_t`` through its scheduler's (shifted) table, ``x_t = (1 − σ_t)·x_0 + σ_t·ε``
    with target ``ε − x_0`` (Esser et al., 2024). Tasks and methods only go through
    :meth:`add_noise`, :meth:`training_target` and :meth:`noise_pred`, so the denoising error, the
    edit objective and the subject errors below mean the same thing on every kind.
    """

    family = "diffusion"
    judge: ImageJudge | None = None
    # the tower the denoiser's sites are named under: "unet" (Stable Diffusion, the zoo) or "dit"
    # (diffusion transformers); methods find cross-attention sites there by kind
    denoiser_tower: ClassVar[str] = "unet"

    @property
    @abstractmethod
    def prediction_type(self) -> str:
        """What :meth:`noise_pred` predicts: ``"epsilon"`` | ``"v_prediction"`` | ``"sample"`` |
        ``"flow_prediction"`` (the velocity ``ε − x_0`` of a rectified flow)."""

    @property
    @abstractmethod
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the denoiser's input (pixels or latents)."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the generated images in pixels."""

    @property
    @abstractmethod
    def num_train_timesteps(self) -> int:
        """Timesteps ``t`` range over ``0 … num_train_timesteps − 1``."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEncoding:
        """Prompts → text-encoder hidden states ``[B, L, D]`` and prompt mask ``[B, L]``."""

    @abstractmethod
    def prompt_token_positions(self, prompts: Sequence[str], word: str) -> list[list[int]]:
        """Token positions of ``word`` (first whole-word occurrence; a word may span several
        tokens) in each prompt's text sequence; raises ``BenchError`` when a prompt lacks it."""

    @abstractmethod
    def noise_pred(self, x_t_BCHW: torch.Tensor, t: Timesteps, prompts: Prompts,
                   guidance: float = 1.0) -> torch.Tensor:
        """The denoiser's prediction ``[B, C, H, W]`` at noisy samples ``x_t`` and timesteps ``t``
        (an int or ``[B]``), conditioned on ``prompts``; ``guidance`` ≠ 1 applies
        classifier-free guidance (the batch then runs as ``[conditional; unconditional]``)."""

    @abstractmethod
    def generate(self, prompts: Sequence[str], seed: int, steps: int | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` in [0, 1], a deterministic function of (prompt, seed, steps):
        sample ``i`` starts from noise drawn from ``(seed, i)`` alone."""

    @abstractmethod
    def to_sample(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] → clean samples ``x_0`` (the denoiser's space)."""

    @abstractmethod
    def to_pixels(self, x0_BCHW: torch.Tensor) -> torch.Tensor:
        """Clean samples ``x_0`` → pixels in [0, 1]."""

    @abstractmethod
    def add_noise(self, x0_BCHW: torch.Tensor, noise_BCHW: torch.Tensor, t: Timesteps) -> torch.Tensor:
        """The forward process: ``x_t`` from ``x_0``, noise and timesteps (the training schedule)."""

    @abstractmethod
    def training_target(self, x0_BCHW: torch.Tensor, noise_BCHW: torch.Tensor, t: Timesteps) -> torch.Tensor:
        """What :meth:`noise_pred` should return at ``add_noise(x0, noise, t)``: the noise, the
        velocity or ``x0``, per :attr:`prediction_type`."""

    def denoising_error_B(self, x0_BCHW: torch.Tensor, noise_BCHW: torch.Tensor, t: Timesteps,
                          prompts: Prompts) -> torch.Tensor:
        """Per-sample mean squared error of the denoiser against its training target: lower when
        the prompt explains the image better (the read-out of Li et al., 2023, "Your Diffusion
        Model is Secretly a Zero-Shot Classifier")."""
        pred = self.noise_pred(self.add_noise(x0_BCHW, noise_BCHW, t), t, prompts)
        return (pred - self.training_target(x0_BCHW, noise_BCHW, t)).pow(2).flatten(1).mean(1)

    def edit_objective(self, request: EditRequest, options: ObjectiveOptions) -> EditObjective:
        """The renders are what each rewrite's prompt should now draw: their denoising error under
        the prompt at (timestep, noise) draws from a seeded generator (:class:`ObjectiveOptions`);
        the subject is the prompt's entity word (:func:`subject_word`) in the text encoder's stream."""
        K, R = _check_edit_request(request, needs_values=False)
        o = options
        if o.draws < 1 or o.prompt_rows not in ("row", "rewrite") or (o.resample and o.draws != 1):
            raise BenchError(f"edit objective: draws must be ≥ 1 (1 when resampling) and prompt_rows "
                             f"'row' or 'rewrite', got {o}")
        T = self.num_train_timesteps
        lo, hi = (0, T) if o.t_range is None else (int(o.t_range[0] * (T - 1)), int(o.t_range[1] * (T - 1)) + 1)
        with torch.no_grad():
            x0 = self.to_sample(request.pixels_KRCHW.flatten(0, 1))
            if not o.resample:  # draw-major copies (a copy also fixes the memory layout the denoiser sees)
                x0 = x0.repeat(o.draws, 1, 1, 1)
        B = x0.shape[0]
        request_B = torch.arange(K, device="cpu").repeat_interleave(R).repeat(o.draws)
        texts = [p for p in request.prompts for _ in range(R)] * o.draws
        g = torch.Generator().manual_seed(o.seed)

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            # a CPU generator: the same draws on every device
            return (torch.randn(x0.shape, generator=g, device="cpu").to(x0.device),
                    torch.randint(lo, hi, (B,), generator=g, device="cpu").to(x0.device))

        fixed = None if o.resample else draw()

        def loss(idx: torch.Tensor | None) -> torch.Tensor:
            noise, t = fixed if fixed is not None else draw()
            rows = _rows(idx, B)
            if o.prompt_rows == "rewrite":  # the text sites fire once per rewrite
                enc = self.encode_prompts(list(request.prompts))
                at = request_B[rows].to(enc.hidden_BLD.device)
                prompts: Prompts = PromptEncoding(enc.hidden_BLD[at], enc.mask_BL[at])
            else:
                prompts = texts if idx is None else [texts[i] for i in rows.tolist()]
            if idx is None:
                return self.denoising_error_B(x0, noise, t, prompts)
            on = rows.to(x0.device)
            return self.denoising_error_B(x0[on], noise[on], t[on], prompts)

        def prefers_new(idx: torch.Tensor | None) -> torch.Tensor:
            raise BenchError("a diffusion model's answers are read by a judge, not by the edit objective")

        stream = texts if o.prompt_rows == "row" else list(request.prompts)
        with torch.no_grad():
            valid = self.encode_prompts(stream).mask_BL.bool().cpu()
        stream_B = request_B if o.prompt_rows == "row" else torch.arange(K, device="cpu")

        def subject(positions: str) -> torch.Tensor:
            out = torch.zeros_like(valid)
            for k, (p, old) in enumerate(zip(request.prompts, request.old)):
                pos = self.prompt_token_positions([p], subject_word(p, old))[0]
                out[(stream_B == k).nonzero()[:, 0][:, None], torch.tensor(pos, device="cpu")[None]] = True
            return out

        return EditObjective(K, R, o.draws, request_B, loss, lambda idx: -loss(idx), prefers_new, subject, valid)

    def subject_errors(self, sub: DiffusionSubject, values: Sequence[int] | None = None) -> torch.Tensor:
        """Denoising error ``[R, V, N]`` of every (draw, value render, row) of a subject."""
        V, N = sub.x0_VNCHW.shape[:2]
        R = sub.t_RN.shape[0]
        vs = list(range(V)) if values is None else list(values)
        x0 = torch.cat([sub.x0_VNCHW[v] for _ in range(R) for v in vs])
        noise = torch.cat([sub.noise_RNCHW[r] for r in range(R) for _ in vs])
        t = torch.cat([sub.t_RN[r] for r in range(R) for _ in vs])
        enc = self.encode_prompts(sub.prompts)
        rep = R * len(vs)
        both = PromptEncoding(enc.hidden_BLD.repeat(rep, 1, 1), enc.mask_BL.repeat(rep, 1))
        return self.denoising_error_B(x0, noise, t, both).view(R, len(vs), N)

    def value_readout(self, question: str, values: Sequence[str]) -> Callable[[Any], torch.Tensor]:
        def dif(sub: DiffusionSubject) -> torch.Tensor:
            return -self.subject_errors(sub).mean(0).T  # [N, V]
        return dif

    def value_loss(self, question: str, values: Sequence[str], shown: Any, new_index: int
                   ) -> Callable[[], torch.Tensor]:
        return lambda: self.subject_errors(shown, [new_index]).mean()

    def attention_grid(self, site: str) -> tuple[int, int]:
        """``(h, w)`` of the query positions of an attention site (row-major), to fold maps."""
        raise BenchError(f"site {site!r} has no attention grid")

    def cross_attention_context(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        """What the denoiser's cross-attention keys and values are computed from, given the text
        encoder's hidden states (the ``cross_k`` / ``cross_v`` sites' input): the states themselves
        in a UNet; a diffusion transformer may project them first (PixArt's caption projection)."""
        return hidden_BLD

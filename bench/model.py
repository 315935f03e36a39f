"""The model contract: family, sites (declared as data), family operations and ``trace``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Literal, Mapping, Protocol, Sequence, Union, cast

import torch
from torch import nn

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


@dataclass(frozen=True)
class PromptEncoding:
    """What conditions a diffusion denoiser: text-encoder hidden states and the prompt mask.

    ``mask_BL`` is 1 at prompt tokens (including begin/end tokens) and 0 at padding:
    it is the token layout of the text stream (``text.*`` sites, ``unet.*.cross.k``/``.v``
    and the key axis of ``unet.*.cross.pattern``).
    """

    hidden_BLD: torch.Tensor
    mask_BL: torch.Tensor

    def __len__(self) -> int:
        return int(self.hidden_BLD.shape[0])


Prompts = Union[Sequence[str], PromptEncoding]
Timesteps = Union[int, torch.Tensor]


class ImageJudge(Protocol):
    """Reads what a generated single-object image shows: ``{"shape": [...], "colour": [...],
    "position": [...], "background": [...]}``, one word per image (the world's vocabulary)."""

    def __call__(self, pixels_BCHW: torch.Tensor) -> dict[str, list[str]]: ...


class DiffusionModel(Model):
    """Text-to-image diffusion: a text encoder conditions a denoiser through cross-attention.

    ``judge`` (optional) reads generated images; the zoo sets its oracle classifier there,
    and tasks that score generations need one.

    The denoiser works on *samples* ``x_BCHW`` of shape :attr:`sample_shape`: pixels mapped
    to [-1, 1] for a pixel-space model, VAE latents for a latent model (Stable Diffusion).
    :meth:`noise_pred` returns the denoiser's raw output, whose meaning is
    :attr:`prediction_type` (``"epsilon"``, ``"v_prediction"`` or ``"sample"``, as in diffusers).
    """

    family = "diffusion"
    judge: ImageJudge | None = None

    @property
    @abstractmethod
    def prediction_type(self) -> str:
        """What :meth:`noise_pred` predicts: ``"epsilon"`` | ``"v_prediction"`` | ``"sample"``."""

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

    def attention_grid(self, site: str) -> tuple[int, int]:
        """``(h, w)`` of the query positions of an attention site (row-major), to fold maps."""
        raise BenchError(f"site {site!r} has no attention grid")

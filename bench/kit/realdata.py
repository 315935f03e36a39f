"""Real-data loaders: annotation files on local disk, read through ``datasets``.

The zoo's tasks build their examples from the procedural world; to run the same
methods on real checkpoints a user brings real data. This module reads it, one
*kind* per benchmark format (``bench data kinds`` lists them with their fields):

- ``pope`` → :class:`PopeProbe` (image, yes/no question, label, category):
  POPE, Li et al., 2023.
- ``captions`` → :class:`CaptionRecord` (image, caption, objects present):
  CHAIR, Rohrbach et al., 2018.
- ``waterbirds`` → :class:`GroupRecord` (image, label, place, group, split):
  Waterbirds, Sagawa et al., 2020.
- ``counterfact`` → :class:`EditRequest` (prompt, subject, true and new target,
  paraphrase and neighbourhood prompts, optional image): CounterFact, Meng et al., 2022.
- ``concept_edit`` → :class:`ConceptEdit` (source, destination, prompts that should
  and should not change): TIME, Orgad et al., 2023; UCE, Gandikota et al., 2024.
- ``masks`` → :class:`MaskRecord` (image, object name, binary mask): COCO, Lin et al., 2014.
- ``facts`` → :class:`MultimodalFact` (image, question, answer, counterfactual answer; optional
  counterfactual image, rephrased question, other image, locality and portability probes): the shape
  of VLKEB (Huang et al., 2024) and MMEdit (Cheng et al., 2023) data.

:func:`write_template` (``bench data template KIND``) writes a small valid file of any kind, with
its images, to start from.

**Files.** One annotation file per call: JSON Lines (``.jsonl``, or ``.json``
holding one object per line as POPE's files do), a JSON array of objects
(``.json``), or CSV/TSV with a header row (``.csv``, ``.tsv``). It is read with
``datasets.load_dataset("json" | "csv", data_files=..., split="train")`` into a
fresh temporary cache folder that is removed afterwards: nothing is written next
to the user's data or into the shared Hugging Face cache, and the network is
never used. Records come back in file order. In CSV every cell is read as text;
a list field (e.g. ``objects``) is a JSON array (``["dog", "cat"]``) or a
``;``-separated string (``dog; cat``), which JSON files may also use. Columns a
kind does not know are ignored; every field has a few accepted spellings
(aliases), so the original benchmark files load as they are (POPE's ``text``,
Waterbirds' ``metadata.csv`` columns ``img_filename``/``y``/``place``,
CounterFact's nested ``requested_rewrite``, a COCO ``instances_*.json``). The one
exception to reading through ``datasets``: a COCO instances file is a single JSON
document, not a table, and is parsed whole with :mod:`json`.

**Images** are paths relative to the annotation file's folder (or to
``image_root`` when given; absolute paths are kept). Loading checks that each
file exists and reads its header (format and size), nothing more: records hold
an :class:`ImageRef` that decodes lazily, ``ref.tensor(size)`` giving a float
tensor in [0, 1], shape 3 × H × W (RGB), resized bilinearly when ``size`` is
given. :func:`check` (``bench data check``) decodes every image and mask too.

**Before anything is loaded** the file's size is checked against a limit per kind
(:data:`MAX_MB`: 512 MB for annotation files, 1024 MB for ``masks``, whose COCO instances
files run to hundreds of MB; ``MMI_BENCH_MAX_DATA_MB`` overrides it for every kind) and its
first bytes are sniffed: UTF-8 text, no binary bytes, and starting as the file type says
(``{`` or ``[`` for JSON and JSON Lines, a header line for CSV/TSV). Only then is it read.
Every temporary cache folder (``mmi-bench-data-<pid>-*``) is removed on every exit path; one
left by a process that was killed outright is removed by the next load.

**Errors.** A malformed file raises :class:`~bench.errors.BenchError` with one
line that starts with the annotation file's path and names the problem and, for
a bad value, the row (1-based, header excluded, with the line when it differs):
``/data/pope.jsonl: label must be yes/no, got 'maybe' in row 3``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, Union

import numpy as np

from bench.errors import BenchError, UnknownName
from bench.records import DataSource, LoadedData

if TYPE_CHECKING:  # torch is imported lazily: `bench data kinds` should not pay for it
    import torch
    from PIL import Image as PILImage

PathLike = Union[str, Path]
Size = Union[int, tuple[int, int], None]  # an int is a square side; a pair is (H, W)

FORMATS: dict[str, str] = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}
SPLITS: tuple[str, ...] = ("train", "val", "test")
POPE_CATEGORIES: tuple[str, ...] = ("random", "popular", "adversarial")


# ====================================================================== images
def _short(value: Any, n: int = 40) -> str:
    """``repr`` of a value cut to ``n`` characters, for one-line messages."""
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _hw(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


@dataclass(frozen=True)
class ImageRef:
    """An image file on disk, checked to exist and be readable; decoded only on request."""

    path: Path
    width: int
    height: int

    def pil(self) -> "PILImage.Image":
        """The image as an RGB PIL image (decoded now)."""
        from PIL import Image

        try:
            with Image.open(self.path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise BenchError(f"{self.path}: cannot decode image: {_first_line(e)}") from None

    def tensor(self, size: Size = None) -> "torch.Tensor":
        """Float32 RGB in [0, 1], shape 3 × H × W; ``size`` (an int for square, or (H, W))
        resizes bilinearly, ``None`` keeps the file's size."""
        import torch
        from PIL import Image

        im = self.pil()
        hw = _hw(size)
        if hw is not None and hw != (im.height, im.width):
            im = im.resize((hw[1], hw[0]), resample=Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def stack_images(refs: Sequence[ImageRef], size: Size) -> "torch.Tensor":
    """Decode and stack images into one B × 3 × H × W float batch (all resized to ``size``)."""
    import torch

    if not refs:
        raise BenchError("no images to stack")
    if size is None and len({(r.height, r.width) for r in refs}) > 1:
        raise BenchError("images differ in size: pass a size to resize them to")
    return torch.stack([r.tensor(size) for r in refs])


@dataclass(frozen=True)
class MaskRef:
    """A binary object mask: a mask PNG (non-zero pixels = object), COCO-style polygons
    (pixel coordinates ``[x0, y0, x1, y1, ...]``, their union), or a COCO-style box
    ``[x, y, width, height]`` (pixels whose centre lies inside), in that order of precedence.
    Always the size of its image, ``width`` × ``height``."""

    width: int
    height: int
    path: Path | None = None
    polygons: tuple[tuple[float, ...], ...] = ()
    bbox: tuple[float, float, float, float] | None = None

    @property
    def source(self) -> str:
        """``png``, ``polygon`` or ``bbox``: where the mask comes from."""
        return "png" if self.path is not None else "polygon" if self.polygons else "bbox"

    def array(self) -> np.ndarray:
        """The mask as a boolean H × W array (decoded or rasterised now)."""
        from PIL import Image, ImageDraw

        im: Image.Image  # the decoded file, or a new image to rasterise the polygons into
        if self.path is not None:
            try:
                with Image.open(self.path) as im:
                    return np.asarray(im.convert("L")) > 0
            except (OSError, ValueError) as e:
                raise BenchError(f"{self.path}: cannot decode mask: {_first_line(e)}") from None
        if self.polygons:
            im = Image.new("L", (self.width, self.height), 0)
            draw = ImageDraw.Draw(im)
            for poly in self.polygons:
                draw.polygon([(poly[k], poly[k + 1]) for k in range(0, len(poly), 2)], fill=1, outline=1)
            return np.asarray(im) > 0
        assert self.bbox is not None
        x, y, w, h = self.bbox
        out = np.zeros((self.height, self.width), dtype=bool)
        # pixel (r, c) is inside when its centre (c + .5, r + .5) is: rows ceil(y - .5) .. ceil(y + h - .5)
        r0, r1 = max(0, math.ceil(y - 0.5)), min(self.height, math.ceil(y + h - 0.5))
        c0, c1 = max(0, math.ceil(x - 0.5)), min(self.width, math.ceil(x + w - 0.5))
        out[r0:r1, c0:c1] = True
        return out

    def tensor(self, size: Size = None) -> "torch.Tensor":
        """Bool tensor H × W; ``size`` (int or (H, W)) resizes by nearest neighbour."""
        import torch
        import torch.nn.functional as F

        m = torch.from_numpy(self.array().copy())
        hw = _hw(size)
        if hw is None or hw == tuple(m.shape):
            return m
        return F.interpolate(m[None, None].float(), size=hw, mode="nearest")[0, 0] > 0.5


# ===================================================================== records
@dataclass(frozen=True)
class PopeProbe:
    """One POPE probe: "is there a <object> in the image?" with the true answer."""

    id: str
    image: ImageRef
    question: str
    label: str  # "yes" | "no"
    object: str | None  # the probed object, from the file or parsed from the question
    category: str | None  # "random" | "popular" | "adversarial" (how the absent object was drawn)

    @property
    def is_yes(self) -> bool:
        return self.label == "yes"


@dataclass(frozen=True)
class CaptionRecord:
    """A caption of an image with the image's ground-truth objects (CHAIR's reference set)."""

    id: str
    image: ImageRef
    caption: str
    objects: tuple[str, ...]


@dataclass(frozen=True)
class GroupRecord:
    """A Waterbirds-style example: class label, spurious attribute (place) and group."""

    id: str
    image: ImageRef
    label: str
    place: str | None
    group: str  # the file's group, else "<label>/<place>"
    split: str  # "train" | "val" | "test"


@dataclass(frozen=True)
class EditRequest:
    """A CounterFact-style rewrite: ``prompt`` (with ``{}`` for the subject) should complete
    with ``target_new`` instead of ``target_true``; paraphrases should follow the edit and
    neighbourhood prompts (other subjects) should not."""

    id: str
    prompt: str
    subject: str
    target_true: str
    target_new: str
    paraphrases: tuple[str, ...]
    neighbourhood: tuple[str, ...]
    image: ImageRef | None = None

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)


@dataclass(frozen=True)
class ConceptEdit:
    """A diffusion concept edit: ``source`` → ``destination`` (``""`` erases the source).
    ``positives`` should change with the edit, ``negatives`` should not."""

    id: str
    source: str
    destination: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]

    @property
    def mode(self) -> str:
        """``replace`` or ``erase``."""
        return "erase" if not self.destination else "replace"


@dataclass(frozen=True)
class MaskRecord:
    """One object instance in an image with its binary mask."""

    id: str
    image: ImageRef
    object: str
    mask: MaskRef
    bbox: tuple[float, float, float, float] | None = None  # [x, y, w, h] as given in the file


@dataclass(frozen=True)
class MultimodalFact:
    """A multimodal fact (VLKEB / MMEdit shape): ``question`` about ``image`` is answered
    ``answer``; ``counterfactual`` is another answer (the edit's target, and the answer of
    ``counterfactual_image`` when given: an image of another subject, for localization's
    counterfactual run). Optional probes: ``rephrase`` (the question reworded; generality),
    ``image_rephrase`` (another image of the subject; generality), ``locality_*`` (an unrelated
    question, with an image or text-only, whose answer should not change), ``portability_*`` (a
    question whose answer follows from the edit)."""

    id: str
    image: ImageRef
    question: str
    answer: str
    counterfactual: str
    counterfactual_image: ImageRef | None = None
    rephrase: str | None = None
    image_rephrase: ImageRef | None = None
    locality_question: str | None = None
    locality_answer: str | None = None
    locality_image: ImageRef | None = None
    portability_question: str | None = None
    portability_answer: str | None = None


Record = Union[PopeProbe, CaptionRecord, GroupRecord, EditRequest, ConceptEdit, MaskRecord, MultimodalFact]


# ================================================================ field specs
@dataclass(frozen=True)
class FieldSpec:
    """One field of a kind's annotation file."""

    name: str
    type: str
    required: bool
    help: str
    aliases: tuple[str, ...] = ()

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


_ID = FieldSpec("id", "text", False, "record id (default: the row number)")
_IMAGE = FieldSpec("image", "image path", True, "relative to the annotation file (or --image-root)")


# ================================================================ table reading
@dataclass
class _Table:
    """An annotation file's rows in file order, with enough to say where a row sits."""

    path: Path
    fmt: str  # "json" | "csv"
    rows: list[dict[str, Any]]
    line_mode: bool = True  # CSV, or JSON with one object per line: rows have line numbers
    document: bool = False  # a COCO-style JSON document (one object), not a table
    _lines: list[int] | None = field(default=None, repr=False)

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows[:1000]:  # datasets gives every row every column; the head is enough
            seen.update(dict.fromkeys(r))
        return list(seen)

    def error(self, problem: str) -> BenchError:
        return BenchError(f"{self.path}: {problem}")

    def where(self, i: int) -> str:
        """``row N`` (1-based, header excluded), with `` (line L)`` when the line differs."""
        line = self._line_of(i)
        return f"row {i + 1}" + (f" (line {line})" if line is not None and line != i + 1 else "")

    def _line_of(self, i: int) -> int | None:
        if self._lines is None:
            self._lines = _row_lines(self.path, self.fmt) if self.line_mode else []
        return self._lines[i] if i < len(self._lines) else None


def _row_lines(path: Path, fmt: str) -> list[int]:
    """The file line on which each data row ends (computed only when a message needs it)."""
    try:
        if fmt == "csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
                next(reader, None)
                return [reader.line_num for row in reader if row]  # pandas skips blank lines too
        with open(path, encoding="utf-8") as f:
            return [n for n, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or logged errors from ``datasets``: our errors are the one line."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars = datasets.is_progress_bar_enabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL + 10)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


MAX_MB: dict[str, int] = {"masks": 1024}  # a kind's annotation-file size limit, in MB (2**20 bytes)
DEFAULT_MAX_MB = 512  # every other kind's
MAX_MB_ENV = "MMI_BENCH_MAX_DATA_MB"  # overrides the limit of every kind
_SNIFF_BYTES = 64 * 1024
_TMP_PREFIX = "mmi-bench-data-"


def max_mb(kind_name: str | None) -> float:
    """The size limit, in MB, of an annotation file of ``kind_name`` (``MMI_BENCH_MAX_DATA_MB`` first)."""
    env = os.environ.get(MAX_MB_ENV, "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            value = float("nan")
        if not value > 0:
            raise BenchError(f"{MAX_MB_ENV} must be a positive number of MB, got {env!r}")
        return value
    return float(MAX_MB.get(kind_name or "", DEFAULT_MAX_MB))


def _check_size(p: Path, kind_name: str | None) -> None:
    """Refuse a file over its kind's size limit, from its size alone (nothing is read)."""
    try:
        size = p.stat().st_size
    except OSError as e:
        raise BenchError(f"{p}: cannot read: {e.strerror or _first_line(e)}") from None
    limit = max_mb(kind_name)
    if size > limit * 2**20:
        what = f"{kind_name} annotation files" if kind_name else "annotation files"
        mb = size / 2**20
        shown = f"{mb:,.0f}" if mb >= 10 else f"{mb:.3g}"
        raise BenchError(f"{p}: file is {shown} MB, over the {limit:,g} MB limit for {what}; "
                         f"set {MAX_MB_ENV} to raise it")


def _sniff(p: Path, fmt: str) -> None:
    """Refuse a file whose first bytes are not text of the expected format (nothing else is read)."""
    import codecs

    try:
        with open(p, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise BenchError(f"{p}: cannot read: {e.strerror or _first_line(e)}") from None
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise BenchError(f"{p}: UTF-16 text; save it as UTF-8")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise BenchError(f"{p}: not a text file (a NUL byte at byte {nul}); expected {_EXPECTED[fmt]}")
    try:  # final=False: a character cut by the sniff's end is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        raise BenchError(f"{p}: not UTF-8 text (byte {e.start})") from None
    stripped = text.lstrip()
    if not stripped:
        return  # blank so far: the full read says whether it is empty
    control = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f\v")
    if control > max(8, len(text) // 100):
        raise BenchError(f"{p}: not a text file ({control} control characters in its first "
                         f"{len(head):,} bytes); expected {_EXPECTED[fmt]}")
    if fmt == "json" and stripped[0] not in "{[":
        raise BenchError(f"{p}: does not look like JSON or JSON Lines: it starts with {_short(stripped[:20])}; "
                         f"expected {_EXPECTED[fmt]}")


_EXPECTED = {"json": "JSON Lines (one object per line) or a JSON array/object",
             "csv": "CSV/TSV with a header row"}


def _read_table(path: PathLike, kind_name: str | None = None) -> _Table:
    """Read an annotation file through ``datasets`` (temporary cache), rows in file order,
    after checking its size (the limit of ``kind_name``) and sniffing its first bytes."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BenchError(f"{p}: file not found")
    if p.is_dir():
        raise BenchError(f"{p}: is a directory, not an annotation file")
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise BenchError(f"{p}: unsupported file type {p.suffix or '(none)'!r}; use .jsonl, .json, .csv or .tsv")
    _check_size(p, kind_name)
    _sniff(p, fmt)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BenchError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise BenchError(f"{p}: cannot read: {e.strerror or _first_line(e)}") from None
    if not text.strip():
        raise BenchError(f"{p}: file is empty")
    kwargs: dict[str, Any] = {}
    if fmt == "csv":
        import datasets

        delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
        try:  # the header and whether a data row follows; the rest is for datasets to read
            rows = list(itertools.islice((r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r), 2))
        except csv.Error as e:
            raise BenchError(f"{p}: malformed CSV: {_first_line(e)}") from None
        header = rows[0]
        if len(rows) < 2:
            raise BenchError(f"{p}: has a header but no rows")
        if any(not h.strip() for h in header) or len(set(header)) != len(header):
            raise BenchError(f"{p}: header must name every column once, got {_short(header, 80)}")
        # every cell as text: we parse values ourselves, so "1" and "1.0" and "yes" stay as written
        kwargs = {"features": datasets.Features({h: datasets.Value("string") for h in header}),
                  "delimiter": delimiter}
    stripped = text.lstrip()
    if fmt == "json" and stripped.startswith("{") and p.suffix.lower() == ".json":
        # a COCO instances file is one JSON document, not a table: it is parsed whole (json
        # module), since its columns mix types (polygon lists and RLE objects) that a table cannot hold
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            if not e.msg.startswith("Extra data"):  # "Extra data": JSON Lines in a .json file (as POPE's)
                raise BenchError(f"{p}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        else:
            if isinstance(doc, dict) and "annotations" in doc and "images" in doc:
                return _Table(p, fmt, [doc], line_mode=False, document=True)
    line_mode = fmt == "csv" or not stripped.startswith("[")  # a JSON array's rows have no line
    try:
        rows_out = _load_with_datasets(p, fmt, kwargs)
    except Exception as e:  # noqa: BLE001 - datasets wraps pyarrow/pandas errors in many types
        raise BenchError(f"{p}: {_diagnose(p, fmt, text, e)}") from None
    if not rows_out:
        raise BenchError(f"{p}: has no rows")
    return _Table(p, fmt, rows_out, line_mode=line_mode)


def _load_with_datasets(p: Path, fmt: str, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    import datasets

    # a fresh cache folder per read: nothing next to the user's data, no stale cache
    # after the file changes, nothing left behind (removed in `finally`, whatever ends the read:
    # an error, Ctrl-C, SystemExit; a process killed outright leaves one that the next read sweeps)
    _sweep_stale_caches()
    cache = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(fmt, data_files=str(p.resolve()), split="train", cache_dir=cache, **kwargs)
            rows = ds.to_list()
            del ds  # release the memory-mapped arrow file before its folder goes
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def _sweep_stale_caches(min_age_s: float = 60.0) -> None:
    """Remove cache folders left by processes that no longer exist (killed outright)."""
    try:
        entries = list(Path(tempfile.gettempdir()).glob(f"{_TMP_PREFIX}*"))
    except OSError:
        return
    now = time.time()
    for d in entries:
        pid_text = d.name[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            if not d.is_dir() or now - d.stat().st_mtime < min_age_s:
                continue
            os.kill(int(pid_text), 0)  # alive (or not ours to judge): keep it
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


def _json_type(v: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "text", list: "list",
            dict: "object"}.get(type(v), type(v).__name__)


def _diagnose(p: Path, fmt: str, text: str, err: BaseException) -> str:
    """Why ``datasets`` could not read the file, as one phrase with a line number where we can."""
    root = err
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    if fmt == "csv":
        return f"malformed CSV: {_first_line(root)}"
    stripped = text.lstrip()
    objs: list[tuple[int, Any]] = []  # (line, value)
    whole = stripped.startswith("[") or p.suffix.lower() == ".json"
    if whole:
        try:
            doc = json.loads(text)
            items = doc if isinstance(doc, list) else [doc]
            objs = [(0, v) for v in items]
        except json.JSONDecodeError as e:
            if stripped.startswith("[") or not e.msg.startswith("Extra data"):
                return f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            whole = False  # a .json file of JSON lines, as POPE ships them
    if not whole:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                objs.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                return f"invalid JSON on line {n}, column {e.colno}: {e.msg}"
    where: str | int  # a phrase ("line 3") in the first loop, a line or item number in the second
    for k, (n, v) in enumerate(objs):
        if not isinstance(v, dict):
            where = f"line {n}" if n else f"item {k + 1}"
            return f"{where} is not a JSON object (got {_json_type(v)})"
    first: dict[str, tuple[str, int]] = {}
    for k, (n, v) in enumerate(objs):
        for key, val in v.items():
            if val is None:
                continue
            t, where = _json_type(val), (n or k + 1)
            if key not in first:
                first[key] = (t, where)
            elif first[key][0] != t:
                unit = "line" if n else "item"
                return (f"column {key!r} mixes value types: {first[key][0]} on {unit} {first[key][1]}, "
                        f"{t} on {unit} {where}")
    return f"cannot be read as JSON: {_first_line(root)}"


# ================================================================ row helpers
class _Rows:
    """Column resolution and value checks for one kind's table: every failure is one line
    naming the file, the problem and the row."""

    def __init__(self, table: _Table, fields: Sequence[FieldSpec], image_root: PathLike | None) -> None:
        self.table = table
        self.cols: dict[str, tuple[str, ...]] = {}
        present = set(table.columns)
        for f in fields:
            cols = tuple(s for s in f.spellings if s in present)
            if not cols and f.required:
                also = f" (or {', '.join(repr(a) for a in f.aliases)})" if f.aliases else ""
                raise table.error(f"missing required column {f.name!r}{also}; columns are: "
                                  f"{', '.join(table.columns)}")
            self.cols[f.name] = cols
        # absolute, so records stay valid whatever the working folder is later
        self.root = (Path(image_root).expanduser() if image_root is not None else table.path.parent).resolve()
        self._sizes: dict[Path, tuple[int, int]] = {}

    def has(self, name: str) -> bool:
        return bool(self.cols.get(name))

    def raw(self, i: int, name: str) -> Any:
        """The row's value under the first spelling it fills (rows of one file may differ)."""
        row = self.table.rows[i]
        return next((row[c] for c in self.cols.get(name, ()) if row.get(c) is not None), None)

    def fail(self, i: int, problem: str) -> BenchError:
        return self.table.error(f"{problem} in {self.table.where(i)}")

    # ---------------------------------------------------------------- values
    def text(self, i: int, name: str, *, required: bool = True) -> str | None:
        v = self.raw(i, name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = _num_text(v)  # ids and labels written as numbers
        if v is None or (isinstance(v, str) and not v.strip()):
            if required:
                raise self.fail(i, f"{name!r} is missing")
            return None
        if not isinstance(v, str):
            raise self.fail(i, f"{name!r} must be text, got {_short(v)}")
        return v.strip()

    def choice(self, i: int, name: str, allowed: Sequence[str], *, required: bool = True,
               aliases: dict[str, str] | None = None) -> str | None:
        v = self.raw(i, name)
        if v is None or (isinstance(v, str) and not v.strip()):
            if required:
                raise self.fail(i, f"{name} must be {'/'.join(allowed)}, got nothing")
            return None
        key = _num_text(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        norm = key.strip().lower() if isinstance(key, str) else None
        norm = (aliases or {}).get(norm, norm) if norm is not None else None
        if norm not in allowed:
            raise self.fail(i, f"{name} must be {'/'.join(allowed)}, got {_short(v)}")
        return norm

    def text_list(self, i: int, name: str) -> tuple[str, ...]:
        v = self.raw(i, name)
        if v is None:
            return ()
        if isinstance(v, str):
            s = v.strip()
            if s.startswith("["):
                try:
                    v = json.loads(s)
                except json.JSONDecodeError as e:
                    raise self.fail(i, f"{name!r} is not a JSON list ({e.msg})") from None
            else:
                return tuple(x.strip() for x in s.split(";") if x.strip())
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(i, f"{name!r} must be a list of text, got {_short(v)}")
        return tuple(x.strip() for x in v if x.strip())

    def numbers(self, i: int, name: str, v: Any) -> list[float]:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise self.fail(i, f"{name!r} is not a JSON list ({e.msg})") from None
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              and math.isfinite(x) for x in v):
            raise self.fail(i, f"{name!r} must be a list of numbers, got {_short(v)}")
        return [float(x) for x in v]

    def ident(self, i: int) -> str:
        return self.text(i, "id", required=False) or str(i + 1)

    # ---------------------------------------------------------------- files
    def file(self, i: int, name: str, *, required: bool = True, what: str = "image") -> Path | None:
        rel = self.text(i, name, required=required)
        if rel is None:
            return None
        p = Path(rel).expanduser()
        p = p if p.is_absolute() else self.root / p
        if not p.is_file():
            raise self.fail(i, f"{what} file not found: {rel!r} (looked for {p})")
        return p

    def size_of(self, i: int, p: Path, what: str = "image") -> tuple[int, int]:
        """(width, height) from the file header; the file is not decoded."""
        if p not in self._sizes:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(p) as im:
                    self._sizes[p] = im.size
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
                raise self.fail(i, f"cannot read {what} {p.name!r}: {_first_line(e)}") from None
        return self._sizes[p]

    def image(self, i: int, name: str = "image", *, required: bool = True) -> ImageRef | None:
        p = self.file(i, name, required=required)
        if p is None:
            return None
        w, h = self.size_of(i, p)
        return ImageRef(p, w, h)


def _num_text(v: float) -> str:
    """1 → "1", 1.0 → "1", 0.5 → "0.5" (labels written as numbers, in JSON or by pandas)."""
    return str(int(v)) if float(v).is_integer() else str(v)


# =================================================================== kinds
@dataclass(frozen=True)
class Kind:
    """A registered data kind: its fields, loader and summary."""

    name: str
    title: str
    reference: str
    fields: tuple[FieldSpec, ...]
    loader: Callable[..., list[Any]]
    summarise: Callable[[list[Any]], list[str]]
    notes: str = ""


POPE_FIELDS: tuple[FieldSpec, ...] = (
    _IMAGE,
    FieldSpec("question", "text", True, "the yes/no probe, e.g. 'Is there a dog in the image?'", ("text",)),
    FieldSpec("label", "yes/no", True, "the true answer (case-insensitive)", ("answer",)),
    FieldSpec("category", "random/popular/adversarial", False,
              "how the absent object was drawn (default: from the file name, else none)"),
    FieldSpec("object", "text", False, "the probed object (default: parsed from the question)"),
    FieldSpec("id", "text", False, "record id (default: the row number)", ("question_id",)),
)

_POPE_OBJECT = re.compile(r"^\s*is there (?:an? |the |any )?(.+?)\s+in the (?:image|picture|photo)\s*\??\s*$", re.I)


def load_pope(path: PathLike, *, image_root: PathLike | None = None) -> list[PopeProbe]:
    """POPE-style object-existence probes (POPE: Li et al., 2023, "Evaluating Object
    Hallucination in Large Vision-Language Models").

    Fields: ``image`` (path), ``question`` (or ``text``: the yes/no probe), ``label`` (or
    ``answer``: ``yes``/``no``), optional ``category`` (``random``/``popular``/``adversarial``;
    when absent and the file name contains one of them, as in ``coco_pope_popular.json``,
    that one), optional ``object`` (else parsed from "Is there a <object> in the image?"),
    optional ``id`` (or ``question_id``). POPE's own files load as they are.
    """
    t = _read_table(path, "pope")
    r = _Rows(t, POPE_FIELDS, image_root)
    stem = t.path.stem.lower()
    file_cat = next((c for c in POPE_CATEGORIES if c in stem), None)
    out: list[PopeProbe] = []
    for i in range(len(t.rows)):
        q = r.text(i, "question")
        assert q is not None
        obj = r.text(i, "object", required=False)
        if obj is None:
            m = _POPE_OBJECT.match(q)
            obj = m.group(1).strip() if m else None
        label = r.choice(i, "label", ("yes", "no"))
        cat = r.choice(i, "category", POPE_CATEGORIES, required=False) if r.has("category") else file_cat
        out.append(PopeProbe(r.ident(i), r.image(i), q, label, obj, cat))  # type: ignore[arg-type]
    return out


def _summarise_pope(recs: list[PopeProbe]) -> list[str]:
    yes = sum(p.is_yes for p in recs)
    cats = Counter(p.category or "(none)" for p in recs)
    return [f"{len(recs)} probes on {len({p.image.path for p in recs})} images, "
            f"{len({p.object for p in recs if p.object})} distinct objects",
            f"labels: yes {yes} ({yes / len(recs):.1%}), no {len(recs) - yes} ({1 - yes / len(recs):.1%})",
            "categories: " + ", ".join(f"{c} {n}" for c, n in sorted(cats.items()))]


CAPTION_FIELDS: tuple[FieldSpec, ...] = (
    _IMAGE,
    FieldSpec("caption", "text", True, "a caption of the image (reference or generated)", ("text",)),
    FieldSpec("objects", "list of text", True, "the objects present in the image (ground truth)",
              ("gt_objects", "objects_present")),
    FieldSpec("id", "text", False, "record id (default: the row number)", ("image_id",)),
)


def load_captions(path: PathLike, *, image_root: PathLike | None = None) -> list[CaptionRecord]:
    """Captions with the image's object annotations, for CHAIR-style hallucination scoring
    (CHAIR: Rohrbach et al., 2018, "Object Hallucination in Image Captioning").

    Fields: ``image`` (path), ``caption`` (or ``text``; non-empty), ``objects`` (or
    ``gt_objects``, ``objects_present``: the objects truly present, a list — in CSV a JSON
    array or ``;``-separated; may be empty), optional ``id`` (or ``image_id``).
    """
    t = _read_table(path, "captions")
    r = _Rows(t, CAPTION_FIELDS, image_root)
    out: list[CaptionRecord] = []
    for i in range(len(t.rows)):
        cap = r.text(i, "caption")
        assert cap is not None
        out.append(CaptionRecord(r.ident(i), r.image(i), cap, r.text_list(i, "objects")))  # type: ignore[arg-type]
    return out


def _summarise_captions(recs: list[CaptionRecord]) -> list[str]:
    objs = Counter(o for c in recs for o in c.objects)
    words = sum(len(c.caption.split()) for c in recs) / len(recs)
    top = ", ".join(f"{o} {n}" for o, n in objs.most_common(8))
    return [f"{len(recs)} captions on {len({c.image.path for c in recs})} images, {words:.1f} words on average",
            f"{len(objs)} distinct objects, {sum(objs.values()) / len(recs):.2f} per image; most common: "
            f"{top or '(none)'}"]


WATERBIRDS_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("image", "image path", True, "relative to the annotation file (or --image-root)", ("img_filename",)),
    FieldSpec("label", "text", True, "the class (any text or number, e.g. landbird/waterbird or 0/1)", ("y",)),
    FieldSpec("place", "text", False, "the spurious attribute, e.g. land/water (place or group needed)",
              ("background", "spurious")),
    FieldSpec("group", "text", False, "the group (default: '<label>/<place>')"),
    FieldSpec("split", "train/val/test", False, "0/1/2 and 'validation' also read; default: test"),
    FieldSpec("id", "text", False, "record id (default: the row number)", ("img_id",)),
)

_SPLIT_ALIASES = {"0": "train", "1": "val", "2": "test", "validation": "val", "valid": "val", "dev": "val"}


def load_waterbirds(path: PathLike, *, image_root: PathLike | None = None) -> list[GroupRecord]:
    """Waterbirds-style group-labelled images for spurious-correlation evaluation
    (Waterbirds: Sagawa et al., 2020, "Distributionally Robust Neural Networks for Group Shifts").

    Fields: ``image`` (or ``img_filename``), ``label`` (or ``y``: the class, read as text),
    ``place`` (or ``background``, ``spurious``: the spurious attribute) and/or ``group``
    (default ``"<label>/<place>"``; one of the two is required), optional ``split``
    (``train``/``val``/``test``; Waterbirds' 0/1/2 and ``validation``/``dev`` are read too;
    default ``test``: a file without splits is an evaluation set), optional ``id`` (or
    ``img_id``). Waterbirds' ``metadata.csv`` loads as it is (labels/places stay "0"/"1").
    """
    t = _read_table(path, "waterbirds")
    r = _Rows(t, WATERBIRDS_FIELDS, image_root)
    if not (r.has("place") or r.has("group")):
        raise t.error(f"needs a 'place' (or 'background') or a 'group' column; columns are: {', '.join(t.columns)}")
    out: list[GroupRecord] = []
    for i in range(len(t.rows)):
        label = r.text(i, "label")
        place = r.text(i, "place", required=not r.has("group")) if r.has("place") else None
        group = r.text(i, "group", required=False) if r.has("group") else None
        if group is None:
            if place is None:
                raise r.fail(i, "'group' is missing and there is no 'place' to derive it from")
            group = f"{label}/{place}"
        split = r.choice(i, "split", SPLITS, required=False, aliases=_SPLIT_ALIASES) or "test"
        out.append(GroupRecord(r.ident(i), r.image(i), label, place, group, split))  # type: ignore[arg-type]
    return out


def _summarise_waterbirds(recs: list[GroupRecord]) -> list[str]:
    from tabulate import tabulate

    splits = [s for s in SPLITS if any(g.split == s for g in recs)]
    groups = sorted({g.group for g in recs})
    counts = Counter((g.group, g.split) for g in recs)
    table = [[grp] + [counts[(grp, s)] for s in splits] for grp in groups]
    labels = Counter(g.label for g in recs)
    out = [f"{len(recs)} images in {len(groups)} groups; classes: "
           + ", ".join(f"{k} ({v})" for k, v in sorted(labels.items()))]
    out += tabulate(table, headers=["group", *splits], tablefmt="simple").splitlines()
    per_split = {s: [counts[(g, s)] for g in groups] for s in splits}
    small = [f"{s}: smallest group {min(v)}" for s, v in per_split.items()]
    return out + ["; ".join(small)]


COUNTERFACT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("prompt", "text", True, "the fact's prompt, '{}' marking the subject (or containing it)"),
    FieldSpec("subject", "text", True, "the edited subject"),
    FieldSpec("target_true", "text", True, "the current answer"),
    FieldSpec("target_new", "text", True, "the answer after the edit (≠ target_true)"),
    FieldSpec("paraphrase_prompts", "list of text", False, "should follow the edit", ("paraphrases",)),
    FieldSpec("neighborhood_prompts", "list of text", False, "other subjects; should keep their answer",
              ("neighbourhood_prompts", "neighbours", "neighbors")),
    FieldSpec("image", "image path", False, "an image of the subject (for VLM edits)"),
    FieldSpec("id", "text", False, "record id (default: the row number)", ("case_id",)),
)


def _flatten_counterfact(t: _Table) -> None:
    """CounterFact's own nesting (``requested_rewrite: {prompt, subject, target_true: {str},
    target_new: {str}}``) to flat columns, in place."""
    for i, row in enumerate(t.rows):
        rr = row.get("requested_rewrite")
        if rr is None:
            continue
        if not isinstance(rr, dict):
            raise t.error(f"'requested_rewrite' must be an object, got {_short(rr)} in {t.where(i)}")
        for key in ("prompt", "subject", "target_true", "target_new"):
            v = rr.get(key)
            if isinstance(v, dict):
                v = v.get("str")
            if row.get(key) is None:
                row[key] = v


def load_counterfact(path: PathLike, *, image_root: PathLike | None = None) -> list[EditRequest]:
    """CounterFact-style fact-edit requests, for VLMs with an optional subject image
    (CounterFact: Meng et al., 2022, "Locating and Editing Factual Associations in GPT").

    Fields: ``prompt`` (with ``{}`` where the subject goes; a prompt that spells the subject
    out instead gets its first occurrence replaced by ``{}``), ``subject``, ``target_true``,
    ``target_new`` (must differ), optional ``paraphrase_prompts`` (or ``paraphrases``) and
    ``neighborhood_prompts`` (or ``neighbourhood_prompts``, ``neighbours``), lists;
    optional ``image`` (path) and ``id`` (or ``case_id``). CounterFact's own JSON, with
    ``requested_rewrite`` nesting and ``{"str": ...}`` targets, loads as it is.
    """
    t = _read_table(path, "counterfact")
    if "requested_rewrite" in t.columns:
        _flatten_counterfact(t)
    r = _Rows(t, COUNTERFACT_FIELDS, image_root)
    out: list[EditRequest] = []
    for i in range(len(t.rows)):
        prompt, subject = r.text(i, "prompt"), r.text(i, "subject")
        true, new = r.text(i, "target_true"), r.text(i, "target_new")
        assert prompt is not None and subject is not None and true is not None and new is not None
        if "{}" not in prompt:
            if subject not in prompt:
                raise r.fail(i, f"prompt has no '{{}}' and does not contain the subject {subject!r}")
            prompt = prompt.replace(subject, "{}", 1)
        if true == new:
            raise r.fail(i, f"target_new equals target_true ({true!r})")
        image = r.image(i, required=False) if r.has("image") else None
        out.append(EditRequest(r.ident(i), prompt, subject, true, new, r.text_list(i, "paraphrase_prompts"),
                               r.text_list(i, "neighborhood_prompts"), image))
    return out


def _summarise_counterfact(recs: list[EditRequest]) -> list[str]:
    return [f"{len(recs)} edit requests on {len({e.subject for e in recs})} subjects, "
            f"{sum(e.image is not None for e in recs)} with an image",
            f"{sum(len(e.paraphrases) for e in recs)} paraphrase prompts, "
            f"{sum(len(e.neighbourhood) for e in recs)} neighbourhood prompts"]


CONCEPT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("source", "text", True, "the concept to edit", ("old", "concept")),
    FieldSpec("destination", "text", True, "what it becomes; empty erases the source", ("new", "target")),
    FieldSpec("positives", "list of text", True, "prompts that should change (at least one)",
              ("positive_prompts",)),
    FieldSpec("negatives", "list of text", False, "prompts that should not change", ("negative_prompts",)),
    FieldSpec("id", "text", False, "record id (default: the row number)"),
)


def load_concept_edit(path: PathLike, *, image_root: PathLike | None = None) -> list[ConceptEdit]:
    """Concept-edit prompt sets for text-to-image diffusion (TIME: Orgad et al., 2023,
    "Editing Implicit Assumptions in Text-to-Image Diffusion Models"; UCE: Gandikota et al.,
    2024, "Unified Concept Editing in Diffusion Models").

    Fields: ``source`` (or ``old``, ``concept``), ``destination`` (or ``new``, ``target``;
    the column is required, an empty value means erasure), ``positives`` (or
    ``positive_prompts``: prompts that should change, at least one), optional
    ``negatives`` (or ``negative_prompts``: prompts that should not), optional ``id``.
    No images: ``image_root`` is accepted for a uniform signature and unused.
    """
    t = _read_table(path, "concept_edit")
    r = _Rows(t, CONCEPT_FIELDS, image_root)
    out: list[ConceptEdit] = []
    for i in range(len(t.rows)):
        src = r.text(i, "source")
        dst = r.text(i, "destination", required=False) or ""
        if src == dst:
            raise r.fail(i, f"destination equals source ({src!r})")
        pos = r.text_list(i, "positives")
        if not pos:
            raise r.fail(i, "'positives' is empty (an edit needs prompts that should change)")
        out.append(ConceptEdit(r.ident(i), src, dst, pos, r.text_list(i, "negatives")))  # type: ignore[arg-type]
    return out


def _summarise_concept_edit(recs: list[ConceptEdit]) -> list[str]:
    modes = Counter(e.mode for e in recs)
    return [f"{len(recs)} concept edits: {modes['replace']} replacements, {modes['erase']} erasures",
            f"{sum(len(e.positives) for e in recs)} positive prompts, "
            f"{sum(len(e.negatives) for e in recs)} negative prompts"]


MASK_FIELDS: tuple[FieldSpec, ...] = (
    _IMAGE,
    FieldSpec("object", "text", True, "the object's name or category", ("category", "name")),
    FieldSpec("mask", "mask path", False, "a PNG the image's size, non-zero = object (one of mask/polygon/bbox)"),
    FieldSpec("polygon", "list of polygons", False,
              "COCO polygon(s): [x0, y0, x1, y1, ...] or a list of them, pixel coordinates", ("segmentation",)),
    FieldSpec("bbox", "[x, y, w, h]", False, "COCO box in pixels; the mask when there is no mask/polygon"),
    FieldSpec("id", "text", False, "record id (default: the row number)"),
)


def _coco_rows(t: _Table) -> None:
    """A COCO ``instances_*.json`` (one object: images, annotations, categories) to one row
    per polygon annotation, in place; RLE (crowd) annotations are skipped."""
    doc = t.rows[0]
    images = {im.get("id"): im for im in doc.get("images") or [] if isinstance(im, dict)}
    cats = {c.get("id"): c.get("name") for c in doc.get("categories") or [] if isinstance(c, dict)}
    rows: list[dict[str, Any]] = []
    for k, a in enumerate(doc.get("annotations") or []):
        if not isinstance(a, dict):
            raise t.error(f"annotation {k + 1} is not an object")
        seg = a.get("segmentation")
        if isinstance(seg, dict) or a.get("iscrowd"):
            continue  # RLE: not supported (documented), and crowd regions are not single objects
        im = images.get(a.get("image_id"))
        if im is None:
            raise t.error(f"annotation {k + 1} refers to image_id {a.get('image_id')!r}, not in 'images'")
        if a.get("category_id") not in cats:
            raise t.error(f"annotation {k + 1} refers to category_id {a.get('category_id')!r}, "
                          "not in 'categories'")
        rows.append({"id": str(a.get("id", k + 1)), "image": im.get("file_name"), "object": cats[a["category_id"]],
                     "polygon": seg, "bbox": a.get("bbox")})
    if not rows:
        raise t.error("COCO file has no polygon annotations")
    t.rows, t.line_mode, t.document = rows, False, False


def load_masks(path: PathLike, *, image_root: PathLike | None = None) -> list[MaskRecord]:
    """Images with binary object masks (COCO: Lin et al., 2014, "Microsoft COCO: Common
    Objects in Context"), one row per object instance.

    Fields: ``image`` (path), ``object`` (or ``category``, ``name``), and one of: ``mask``
    (a PNG path, same size as the image, non-zero pixels = object), ``polygon`` (or
    ``segmentation``: a COCO polygon ``[x0, y0, x1, y1, ...]`` in pixel coordinates, or a
    list of them whose union is the mask; at least 3 points each, inside the image) or
    ``bbox`` (COCO ``[x, y, width, height]`` in pixels; the mask is the box when neither of
    the others is given); optional ``id``. A COCO ``instances_*.json`` (``images``,
    ``annotations``, ``categories``) also loads, one record per polygon annotation; RLE
    (crowd) annotations are skipped — this loader reads no RLE.
    """
    t = _read_table(path, "masks")
    if t.document:
        _coco_rows(t)
    r = _Rows(t, MASK_FIELDS, image_root)
    if not (r.has("mask") or r.has("polygon") or r.has("bbox")):
        raise t.error(f"missing a mask column: one of 'mask' (PNG path), 'polygon' or 'bbox'; "
                      f"columns are: {', '.join(t.columns)}")
    out: list[MaskRecord] = []
    for i in range(len(t.rows)):
        obj = r.text(i, "object")
        image = r.image(i)
        assert image is not None and obj is not None
        bbox = _bbox(r, i, image) if r.raw(i, "bbox") not in (None, "") else None
        mask_path = r.file(i, "mask", required=False, what="mask") if r.has("mask") else None
        polys = _polygons(r, i, image) if mask_path is None and r.raw(i, "polygon") not in (None, "") else ()
        if mask_path is not None:
            mw, mh = r.size_of(i, mask_path, "mask")
            if (mw, mh) != (image.width, image.height):
                raise r.fail(i, f"mask {mask_path.name!r} is {mw}x{mh} but image {image.path.name!r} is "
                             f"{image.width}x{image.height}")
        elif not polys and bbox is None:
            raise r.fail(i, "no mask: give 'mask' (a PNG path), 'polygon' or 'bbox'")
        mask = MaskRef(image.width, image.height, mask_path, polys, bbox)
        out.append(MaskRecord(r.ident(i), image, obj, mask, bbox))
    return out


def _bbox(r: _Rows, i: int, image: ImageRef) -> tuple[float, float, float, float]:
    b = r.numbers(i, "bbox", r.raw(i, "bbox"))
    if len(b) != 4:
        raise r.fail(i, f"bbox must be [x, y, width, height], got {len(b)} numbers")
    x, y, w, h = b
    if w <= 0 or h <= 0:
        raise r.fail(i, f"bbox width and height must be positive, got {w:g}x{h:g}")
    if x < 0 or y < 0 or x + w > image.width + 0.5 or y + h > image.height + 0.5:
        raise r.fail(i, f"bbox {_short(b, 60)} lies outside the {image.width}x{image.height} image")
    return (x, y, w, h)


def _polygons(r: _Rows, i: int, image: ImageRef) -> tuple[tuple[float, ...], ...]:
    v = r.raw(i, "polygon")
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise r.fail(i, f"'polygon' is not JSON ({e.msg})") from None
    if isinstance(v, dict):
        raise r.fail(i, "'polygon' is an RLE mask, which this loader does not read; give polygons or a mask PNG")
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
        v = [v]  # one polygon written flat
    if not isinstance(v, list) or not v:
        raise r.fail(i, f"'polygon' must be a list of [x0, y0, x1, y1, ...] polygons, got {_short(v)}")
    out = []
    for poly in v:
        pts = r.numbers(i, "polygon", poly)
        if len(pts) < 6 or len(pts) % 2:
            raise r.fail(i, f"a polygon needs an even count of at least 6 coordinates, got {len(pts)}")
        xs, ys = pts[0::2], pts[1::2]
        if min(xs) < 0 or min(ys) < 0 or max(xs) > image.width or max(ys) > image.height:
            raise r.fail(i, f"polygon lies outside the {image.width}x{image.height} image")
        out.append(tuple(pts))
    return tuple(out)


def _summarise_masks(recs: list[MaskRecord]) -> list[str]:
    cats = Counter(m.object for m in recs)
    src = Counter(m.mask.source for m in recs)
    return [f"{len(recs)} object masks on {len({m.image.path for m in recs})} images, {len(cats)} categories",
            "masks from: " + ", ".join(f"{k} {v}" for k, v in sorted(src.items())),
            "most common: " + ", ".join(f"{o} {n}" for o, n in cats.most_common(8))]


FACT_FIELDS: tuple[FieldSpec, ...] = (
    _IMAGE,
    FieldSpec("question", "text", True, "a question about the image whose answer is a fact", ("src", "prompt")),
    FieldSpec("answer", "text", True, "the true answer", ("gt", "ground_truth", "target_true")),
    FieldSpec("counterfactual", "text", True, "another answer: the edit's target, and the counterfactual "
              "image's answer", ("alt", "target_new", "new_answer")),
    FieldSpec("counterfactual_image", "image path", False, "an image whose answer is the counterfactual "
              "(localization; default: another row's image whose answer is it)", ("image_counterfactual",)),
    FieldSpec("rephrase", "text", False, "the question reworded (generality)", ("rephrase_question",)),
    FieldSpec("image_rephrase", "image path", False, "another image of the subject (generality)",
              ("other_image",)),
    FieldSpec("locality_question", "text", False, "an unrelated question (locality)", ("loc", "m_loc_q")),
    FieldSpec("locality_answer", "text", False, "its answer (needed with locality_question)",
              ("loc_ans", "m_loc_a")),
    FieldSpec("locality_image", "image path", False, "the unrelated question's image (default: the row's image)",
              ("m_loc",)),
    FieldSpec("portability_question", "text", False, "a question whose answer follows from the edit",
              ("port_q",)),
    FieldSpec("portability_answer", "text", False, "its answer after the edit (needed with the question)",
              ("port_a",)),
    FieldSpec("id", "text", False, "record id (default: the row number)", ("case_id",)),
)


def load_facts(path: PathLike, *, image_root: PathLike | None = None) -> list[MultimodalFact]:
    """A multimodal fact set (the shape of VLKEB: Huang et al., 2024, "VLKEB: A Large Vision-Language
    Model Knowledge Editing Benchmark"; MMEdit: Cheng et al., 2023, "Can We Edit Multimodal Large
    Language Models?"), read by localization (clean/counterfactual pairs) and editing.

    Fields: ``image``, ``question`` (or ``src``), ``answer`` (or ``gt``), ``counterfactual`` (or ``alt``;
    must differ from the answer); optional ``counterfactual_image``, ``rephrase``, ``image_rephrase``,
    ``locality_question`` + ``locality_answer`` (+ ``locality_image``; VLKEB's ``m_loc_q``/``m_loc_a``/
    ``m_loc``), ``portability_question`` + ``portability_answer`` (VLKEB's ``port_q``/``port_a``), ``id``.
    """
    t = _read_table(path, "facts")
    r = _Rows(t, FACT_FIELDS, image_root)
    out: list[MultimodalFact] = []
    for i in range(len(t.rows)):
        q, a, cf = r.text(i, "question"), r.text(i, "answer"), r.text(i, "counterfactual")
        assert q is not None and a is not None and cf is not None
        if a.lower() == cf.lower():
            raise r.fail(i, f"counterfactual equals answer ({a!r})")
        probes = {}
        for name in ("locality", "portability"):
            pq = r.text(i, f"{name}_question", required=False) if r.has(f"{name}_question") else None
            pa = r.text(i, f"{name}_answer", required=False) if r.has(f"{name}_answer") else None
            if (pq is None) != (pa is None):
                raise r.fail(i, f"{name}_question and {name}_answer go together; only "
                                f"{name}_{'question' if pa is None else 'answer'} is given")
            probes[name] = (pq, pa)

        def img(name: str) -> ImageRef | None:
            return r.image(i, name, required=False) if r.has(name) else None

        out.append(MultimodalFact(r.ident(i), r.image(i), q, a, cf, img("counterfactual_image"),  # type: ignore[arg-type]
                                  r.text(i, "rephrase", required=False) if r.has("rephrase") else None,
                                  img("image_rephrase"), probes["locality"][0], probes["locality"][1],
                                  img("locality_image"), probes["portability"][0], probes["portability"][1]))
    return out


def counterfactual_inputs(recs: Sequence[MultimodalFact], where: str = "") -> list[ImageRef]:
    """Per fact, the image of its counterfactual run: ``counterfactual_image`` when given, else the
    image of the first other row asking the same question whose answer is this row's counterfactual
    (one-line BenchError naming the row when there is neither)."""
    by_answer: dict[tuple[str, str], ImageRef] = {}
    for r in recs:
        by_answer.setdefault((r.question.lower(), r.answer.lower()), r.image)
    out = []
    for i, r in enumerate(recs):
        img = r.counterfactual_image or by_answer.get((r.question.lower(), r.counterfactual.lower()))
        if img is None:
            raise BenchError(f"{where or 'facts'}: row {i + 1} (id {r.id!r}) has no counterfactual_image and no "
                             f"other row asks {r.question!r} with the answer {r.counterfactual!r}")
        out.append(img)
    return out


def _summarise_facts(recs: list[MultimodalFact]) -> list[str]:
    def n(attr: str) -> int:
        return sum(getattr(e, attr) is not None for e in recs)

    return [f"{len(recs)} facts on {len({e.image.path for e in recs})} images, {len({e.question for e in recs})} "
            f"distinct questions; {n('counterfactual_image')} with a counterfactual image",
            f"generality: {n('rephrase')} rephrased questions, {n('image_rephrase')} other images; "
            f"locality: {n('locality_question')}; portability: {n('portability_question')}"]


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("pope", "POPE-style yes/no object probes", "Li et al., 2023", POPE_FIELDS, load_pope, _summarise_pope),
    Kind("captions", "captions with the objects present (CHAIR)", "Rohrbach et al., 2018", CAPTION_FIELDS,
         load_captions, _summarise_captions),
    Kind("waterbirds", "Waterbirds-style groups (class x spurious place)", "Sagawa et al., 2020",
         WATERBIRDS_FIELDS, load_waterbirds, _summarise_waterbirds, "needs 'place' or 'group'"),
    Kind("counterfact", "CounterFact-style fact-edit requests (optional image)", "Meng et al., 2022",
         COUNTERFACT_FIELDS, load_counterfact, _summarise_counterfact,
         "CounterFact's nested 'requested_rewrite' is read too"),
    Kind("concept_edit", "concept edits for diffusion (TIME/UCE)", "Orgad et al., 2023; Gandikota et al., 2024",
         CONCEPT_FIELDS, load_concept_edit, _summarise_concept_edit),
    Kind("masks", "object masks (COCO-style)", "Lin et al., 2014", MASK_FIELDS, load_masks, _summarise_masks,
         "needs one of mask/polygon/bbox per row; a COCO instances JSON is read too (polygons only, no RLE)"),
    Kind("facts", "multimodal facts with counterfactuals (VLKEB / MMEdit shape)", "Huang et al., 2024; "
         "Cheng et al., 2023", FACT_FIELDS, load_facts, _summarise_facts,
         "read by localization (faithfulness) and editing on generative models"),
)}


def kind(name: str) -> Kind:
    """The registered kind ``name`` (a "did you mean" error otherwise)."""
    if name not in KINDS:
        raise UnknownName("data kind", name, KINDS)
    return KINDS[name]


def load(kind_name: str, path: PathLike, *, image_root: PathLike | None = None) -> list[Any]:
    """Load and validate an annotation file of kind ``kind_name``: typed records in file order."""
    return kind(kind_name).loader(path, image_root=image_root)


def referenced_files(records: Sequence[Any]) -> list[Path]:
    """The image and mask files that ``records`` name, each once, in record order."""
    import dataclasses

    seen: dict[Path, None] = {}
    for rec in records:
        # every image a record names, in field order (a fact's counterfactual and other images too)
        for f in dataclasses.fields(rec):
            img = getattr(rec, f.name)
            if isinstance(img, ImageRef):
                seen.setdefault(img.path, None)
        mask = getattr(rec, "mask", None)
        if mask is not None and mask.path is not None:
            seen.setdefault(mask.path, None)
    return list(seen)


def fingerprint(path: PathLike, records: Sequence[Any]) -> tuple[str, dict[Path, str]]:
    """``(digest, per_file)``: the sha256 (hex) of the sha256 digests of the annotation file's
    bytes and then of every file of :func:`referenced_files`, in that order; ``per_file`` maps
    each referenced file to the sha256 (hex) of its bytes. The digest depends on content only
    (the annotation file names the images, so a renamed image changes it; a moved folder does not)."""
    def file_sha(p: Path) -> bytes:
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            raise BenchError(f"{p}: cannot read: {e.strerror or _first_line(e)}") from None
        return h.digest()

    whole = hashlib.sha256(file_sha(Path(path).expanduser()))
    per_file: dict[Path, str] = {}
    for p in referenced_files(records):
        d = file_sha(p)
        whole.update(d)
        per_file[p] = d.hex()
    return whole.hexdigest(), per_file


@dataclass(frozen=True)
class DataSummary:
    """What ``bench data check`` prints: the kind, the file, the record count and summary lines."""

    kind: str
    path: Path
    n: int
    lines: tuple[str, ...]


def check(kind_name: str, path: PathLike, *, image_root: PathLike | None = None) -> DataSummary:
    """Load a file and decode every image and mask it names (a mask must not be empty):
    what ``bench data check`` runs. Returns a short summary."""
    k = kind(kind_name)
    recs = k.loader(path, image_root=image_root)
    p = Path(path).expanduser()
    seen: set[Path] = set()
    areas: list[float] = []
    for rec in recs:
        img = getattr(rec, "image", None)
        if img is not None and img.path not in seen:
            seen.add(img.path)
            img.pil()
        if isinstance(rec, MaskRecord):
            m = rec.mask.array()
            if m.shape != (rec.image.height, rec.image.width):
                raise BenchError(f"{p}: mask of record {rec.id!r} decodes to {m.shape[1]}x{m.shape[0]}, image is "
                                 f"{rec.image.width}x{rec.image.height}")
            if not m.any():
                raise BenchError(f"{p}: mask of record {rec.id!r} ({rec.object!r}) is empty")
            areas.append(float(m.mean()))
    lines = [f"{k.name}: {p}", *k.summarise(recs)]
    if areas:
        lines.append(f"mask area: {np.mean(areas):.1%} of the image on average")
    if seen:
        lines.append(f"all {len(seen)} images decode")
    return DataSummary(k.name, p, len(recs), tuple(lines))


def describe_kinds() -> list[str]:
    """``bench data kinds``: every kind with the fields it reads."""
    out: list[str] = []
    for k in KINDS.values():
        out.append(f"{k.name}: {k.title} ({k.reference})")
        for f in k.fields:
            also = f" (also: {', '.join(f.aliases)})" if f.aliases else ""
            out.append(f"  {f.name:<22} {'required' if f.required else 'optional':<9} {f.type:<27} {f.help}{also}")
        if k.notes:
            out.append(f"  note: {k.notes}")
    return out


# (kind, path, mtime, size) -> loaded: a task is built several times per cell (plan, key, run), the
# files are read and hashed once per process. An image replaced in place without touching the
# annotation file goes unnoticed until the next process.
_LOADED: dict[tuple[str, str, int, int], LoadedData] = {}


def load_data(kind_name: str, path: PathLike) -> LoadedData:
    """Load and fingerprint a data file of ``kind`` (one-line BenchErrors from the loaders)."""
    kind(kind_name)  # "did you mean" before any file is touched
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
        key = (kind_name, str(p), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None  # the loader says what is wrong, in its words
    if key is not None and key in _LOADED:
        return _LOADED[key]
    records = load(kind_name, p)
    digest, per_file = fingerprint(p, records)
    loaded = LoadedData(DataSource(kind_name, str(p), digest, len(records), len(per_file)), tuple(records), per_file)
    if key is not None:
        _LOADED[key] = loaded
    return loaded


# ================================================================= templates
def _template_image(path: Path, rgb: tuple[int, int, int], size: int = 32) -> str:
    """A small PNG: a coloured square on grey (a stand-in for the user's own image)."""
    from PIL import Image

    arr = np.full((size, size, 3), 128, dtype=np.uint8)
    arr[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = rgb
    Image.fromarray(arr).save(path)
    return path.name


def write_template(kind_name: str, folder: PathLike) -> Path:
    """Write a small valid example file of ``kind_name`` (and the images it names) into ``folder``
    (created when missing; an existing annotation file is never overwritten); returns its path.
    What ``bench data template KIND`` runs; :func:`load` reads it back."""
    kind(kind_name)
    out = Path(folder).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    red, blue, green = (220, 40, 40), (40, 40, 220), (40, 180, 40)
    img = {name: lambda n=name, c=c: _template_image(out / f"{n}.png", c)
           for name, c in (("red", red), ("blue", blue), ("green", green))}
    rows: list[dict[str, Any]]
    if kind_name == "pope":
        rows = [{"image": img["red"](), "question": "Is there a square in the image?", "label": "yes",
                 "category": "random"},
                {"image": img["red"](), "question": "Is there a dog in the image?", "label": "no",
                 "category": "adversarial"}]
    elif kind_name == "captions":
        rows = [{"image": img["red"](), "caption": "a red square on a grey background", "objects": ["square"]},
                {"image": img["blue"](), "caption": "a blue square", "objects": ["square"]}]
    elif kind_name == "waterbirds":
        rows = [{"image": img[c](), "label": lab, "place": pl, "split": sp}
                for c, lab, pl, sp in (("red", "circle", "water", "train"), ("blue", "square", "land", "train"),
                                       ("green", "circle", "land", "val"), ("red", "square", "water", "test"))]
    elif kind_name == "counterfact":
        rows = [{"prompt": "The home of {} is", "subject": "the glyph", "target_true": "north",
                 "target_new": "west", "paraphrase_prompts": ["Where does {} live? It lives in the"],
                 "neighborhood_prompts": ["The home of the circle is"], "image": img["red"]()}]
    elif kind_name == "concept_edit":
        rows = [{"source": "circle", "destination": "square", "positives": ["a red circle", "a circle at the top"],
                 "negatives": ["a blue triangle"]},
                {"source": "triangle", "destination": "", "positives": ["a green triangle"], "negatives": ["a square"]}]
    elif kind_name == "masks":
        from PIL import Image

        name = img["red"]()
        m = np.zeros((32, 32), dtype=np.uint8)
        m[8:24, 8:24] = 255
        Image.fromarray(m).save(out / "red_mask.png")
        rows = [{"image": name, "object": "square", "mask": "red_mask.png"}]
    elif kind_name == "facts":
        rows = [{"image": img["red"](), "question": "what is the home of the glyph?", "answer": "north",
                 "counterfactual": "west", "counterfactual_image": img["blue"](),
                 "rephrase": "where does the glyph live?", "image_rephrase": img["green"](),
                 "locality_question": "what colour is the square?", "locality_answer": "red",
                 "portability_question": "what is the season of the glyph?", "portability_answer": "winter"}]
    else:  # pragma: no cover - every registered kind has a template (tested)
        raise BenchError(f"no template for data kind {kind_name!r}")
    path = out / f"{kind_name}.jsonl"
    if path.exists():
        raise BenchError(f"{path}: already exists; choose another folder")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

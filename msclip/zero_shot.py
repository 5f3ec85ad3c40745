"""Zero-shot classification with prompt ensembles, as published with Llama3-MS-CLIP.

The protocol (Marimo et al., "Beyond the Visible: Multispectral Vision-Language Learning for Earth
Observation", ECML PKDD 2025, arXiv:2503.15969; the prompt-ensemble recipe of CLIP, Radford et al.,
ICML 2021, section 3.1.4) is followed exactly:

1. class names are lower-cased and ``_`` and ``/`` are replaced by spaces
   (:func:`normalize_class_name`);
2. every template is formatted with ``{c}`` replaced by the class name, every prompt is encoded by
   the text tower and L2-normalised; the prompts of one class are averaged and the mean is
   L2-normalised again (:func:`build_classifier`);
3. the image embedding is L2-normalised, logits are ``100 x cosine`` (neither the model's
   ``logit_scale`` nor the release's ``temperature`` is used) and probabilities are the softmax
   over classes (:func:`zero_shot_logits`, :func:`zero_shot_probs`).

Retrieval ranks images by the raw cosine between the L2-normalised query embedding and the image
embeddings (no templates, no scaling): :func:`encode_queries`.

Template sets shipped with msclip live in the top-level ``templates/<name>.txt`` of the source tree
(installed as ``msclip/templates/``; one template per line, each containing ``{c}``);
:func:`load_templates` accepts a set name or the path of any such file, so the published
protocol's own file can be passed to reproduce its numbers exactly.

Stable API (used by inference, benchmark evaluation and training validation)::

    list_template_sets() -> list[str]
    load_templates(name_or_path=DEFAULT_TEMPLATE_SET) -> list[str]
    normalize_class_name(name) -> str
    load_class_names(path) -> list[str]
    check_class_names(names) -> list[str]
    format_prompts(class_name, templates, normalize=True) -> list[str]
    encode_texts(model, tokenizer, texts, cache=None, batch_size=256) -> Tensor [N, D]
    build_classifier(model, tokenizer, class_names, templates, cache=None, batch_size=256)
        -> Tensor [C, D]
    zero_shot_logits(image_features, classifier, scale=100.0) -> Tensor [N, C]
    zero_shot_probs(image_features, classifier, scale=100.0) -> Tensor [N, C]
    multilabel_predict(scores, rule="mean_others", threshold=None) -> bool array [N, C]
    classify(image_features, classifier, class_names, multi_label=None, threshold=None)
        -> Classification (logits, probabilities, labels, classes present)
    encode_queries(model, tokenizer, queries, cache=None) -> Tensor [Q, D] (L2-normalised)

Multi-label decisions (:func:`multilabel_predict`): the published BigEarthNet rule marks class
``c`` present when its score exceeds the mean score of the other classes (applied to logits, as the
published evaluation code does); the "other features" variant compares each class with an extra
class; a plain threshold on probabilities is the selective alternative.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from msclip.arrays import as_numpy
from msclip.errors import (
    ClassNameError,
    DimensionMismatchError,
    DuplicateClassError,
    InvalidArgumentError,
    InvalidEmbeddingsError,
    MetricInputError,
    TemplateError,
    UnknownTemplateSetError,
    not_a_file,
    shown_when_quiet,
)
from msclip.memory import trim_heap
from msclip.wording import plural

if TYPE_CHECKING:
    from msclip.text_cache import TextEmbeddingCache

__all__ = [
    "DEFAULT_TEMPLATE_SET",
    "LOGIT_SCALE",
    "MULTILABEL_RULES",
    "ClassNameError",
    "Classification",
    "DuplicateClassError",
    "TemplateError",
    "UnknownTemplateSetError",
    "build_classifier",
    "check_class_names",
    "classify",
    "encode_queries",
    "encode_texts",
    "format_prompts",
    "list_template_sets",
    "load_class_names",
    "load_templates",
    "multilabel_predict",
    "normalize_class_name",
    "parse_class_lines",
    "template_set_path",
    "templates_dir",
    "zero_shot_logits",
    "zero_shot_probs",
]

logger = logging.getLogger(__name__)

#: Template set used when none is named.
DEFAULT_TEMPLATE_SET = "eo"
#: Fixed logit scale of the published zero-shot protocol (logits = 100 x cosine).
LOGIT_SCALE = 100.0


# -- templates -------------------------------------------------------------------------------
def templates_dir() -> Path:
    """Folder of the shipped template sets: ``msclip/templates/`` in an installed wheel, the
    top-level ``templates/`` of a source checkout (editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise UnknownTemplateSetError(
        f"msclip's template folder is missing (looked in {package / 'templates'} and "
        f"{package.parent / 'templates'}); reinstall msclip"
    )


def list_template_sets() -> list[str]:
    """Names of the template sets shipped with msclip (:func:`templates_dir`), sorted."""
    return sorted(
        p.name[: -len(".txt")] for p in templates_dir().iterdir() if p.name.endswith(".txt")
    )


def template_set_path(name: str) -> Path | None:
    """Path of a shipped template set, or ``None`` when there is no set of that name."""
    p = templates_dir() / f"{name}.txt"
    return p if p.is_file() else None


def _placeholder_fix(template: str) -> str:
    """How to mark the class name in a template that lacks ``{c}``: OpenAI CLIP's and
    open_clip's ``'a photo of a {}.'`` (``str.format``) marks it with ``{}``."""
    if "{}" in template:
        return f"write {{c}} for {{}} ({template.replace('{}', '{c}')!r})"
    return "write {c} where the class name goes"


def _parse_templates(text: str, where: str) -> list[str]:
    templates = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{c}" not in line:
            raise TemplateError(
                f"{where}, line {lineno}: template {line!r} has no '{{c}}' placeholder; "
                f"{_placeholder_fix(line)}, one template per line"
            )
        templates.append(line)
    if not templates:
        raise TemplateError(f"{where} holds no templates; write one template per line with {{c}}")
    if len(set(templates)) != len(templates):
        # Kept as written: the protocol averages every line, so a duplicate weighs twice.
        logger.warning(
            "%s: %d duplicate templates (each still counts in the average)",
            where,
            len(templates) - len(set(templates)),
        )
    return templates


def load_templates(name_or_path: str | os.PathLike = DEFAULT_TEMPLATE_SET) -> list[str]:
    """Load a template set by name (:func:`list_template_sets`) or from a text file.

    The file format: one template per line, each containing ``{c}``; blank lines and lines
    starting with ``#`` are ignored; surrounding whitespace is stripped. Order is kept.

    Args:
        name_or_path: a shipped set name (``eo``, ``short``, ``sentinel2`` ...) or a path.

    Raises:
        UnknownTemplateSetError: neither a shipped set nor an existing file.
        TemplateError: the path is a folder or a device, the file is empty or a line lacks
            ``{c}``.
    """
    spec = os.fspath(name_or_path)
    path = template_set_path(spec) if isinstance(name_or_path, str) and "/" not in spec else None
    if path is None:
        p = Path(spec).expanduser()
        why = not_a_file(p, "a text file with one template per line containing {c}")
        if why is not None and why != "not found":  # a folder or a device: said as it is
            raise TemplateError(f"template file {p} {why}", param="templates")
        if why is not None:
            raise UnknownTemplateSetError(
                f"unknown template set {spec!r}: not one of the shipped sets "
                f"({', '.join(list_template_sets())}) and no such file; pass a set name or the "
                "path of a text file with one template per line containing {c}",
                param="templates",
            )
        path = p
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not text
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateError(f"cannot read template file {path}: {err}") from err
    return _parse_templates(text, str(path))


# -- class names -----------------------------------------------------------------------------
def normalize_class_name(name: str) -> str:
    """The published normalisation: lower-case, ``_`` and ``/`` replaced by spaces.

    Nothing else is changed (no stripping, no collapsing of spaces), so prompts are the
    published ones to the character.
    """
    return name.lower().replace("_", " ").replace("/", " ")


def _prompt_key(name: str) -> str:
    """A class name as its prompts reach the text tower: normalised (:func:`normalize_class_name`),
    accents composed and runs of white space made one (as the tokenizer's cleaning does)."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFC", normalize_class_name(name)).split())


def check_class_names(names: Sequence[str], normalize: bool = True) -> list[str]:
    """Validate class names and return them as a list.

    Raises:
        ClassNameError: no names, or an empty name.
        DuplicateClassError: two names that are equal (after normalisation when ``normalize``).
    """
    if isinstance(names, (str, bytes)):
        raise ClassNameError(
            f"class names must be a list of names, got the single string {names!r}; pass "
            f"[{names!r}, ...] (or a .txt/.yaml file of names)",
            param="class_names",
        )
    names = list(names)
    odd = [(i, n) for i, n in enumerate(names) if n is None or isinstance(n, (bytes, bytearray))]
    if odd:  # str() would make the class "None" or "b'forest'", in the prompts too
        i, n = odd[0]
        raise ClassNameError(
            f"class name at position {i} is {n!r}, not text; give every name as a str"
            + (" (decode bytes first: name.decode())" if n is not None else ""),
            param="class_names",
        )
    names = [str(n) for n in names]
    if not names:
        raise ClassNameError(
            "no class names given; give a list of names or a .txt/.yaml file of them",
            param="class_names",
        )
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise ClassNameError(f"class names at positions {empty} are empty")
    seen: dict[str, str] = {}
    dups = []
    for n in names:
        key = _prompt_key(n) if normalize else n
        if key in seen:
            dups.append(f"{seen[key]!r} and {n!r}" if seen[key] != n else repr(n))
        else:
            seen[key] = n
    if dups:
        raise DuplicateClassError(
            f"duplicate class names: {', '.join(dups)}"
            + (
                " (equal after lower-casing, replacing '_' and '/' by spaces and the tokenizer's "
                "cleaning of spaces and accents: their prompts would be the same)"
                if normalize
                else ""
            )
            + "; give every class once"
        )
    return names


def parse_class_lines(text: str, where: str) -> list[tuple[str, str]]:
    """``(label, name)`` per line of a class-name text: ``label = name`` lines, or a bare name
    (its own label); blank lines and ``#`` comments are skipped.

    Raises:
        ClassNameError: a line with nothing before ``=``.
    """
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, sep, name = line.partition("=")
        label, name = label.strip(), name.strip()
        if not label:
            raise ClassNameError(f"{where}: line {line!r} has no label before '='")
        rows.append((label, name if sep else label))
    return rows


def load_class_names(path: str | os.PathLike) -> list[str]:
    """Read class names from a ``.txt``, ``.csv`` or ``.yaml``/``.yml`` file.

    A text file holds one class per line, a name or ``label = name`` (the name is what the
    prompts say: msclip's own lists, ``SeaLake = sea or lake``); blank lines and ``#`` comments
    are skipped. A ``.csv`` file holds one column, read the same way, with CSV quoting (a quoted
    name may hold commas), under an optional header (``class``, ``name``, ``label`` ...); a row
    of several columns is refused. A YAML file may hold a list of
    names, a mapping ``{index: name}`` (ordered by index), or a mapping with one of the keys
    ``classes``, ``class_names`` or ``names`` holding either form. Names are returned as written
    (not normalised); see :func:`check_class_names` for validation.

    Raises:
        ClassNameError: unreadable file, unknown suffix, a CSV row of several columns or an
            unexpected YAML structure.
    """
    p = Path(path).expanduser()
    why = not_a_file(p, "a .txt, .csv or .yaml file of class names")
    if why == "not found":
        raise ClassNameError(f"classes file not found: {p}")
    if why is not None:  # a folder or a device (/dev/null): said as it is
        raise ClassNameError(f"classes file {p} {why}")
    try:
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of a name
    except (OSError, UnicodeDecodeError) as err:
        raise ClassNameError(f"cannot read classes file {p}: {err}") from err
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        from msclip.options import parse_yaml

        try:
            obj = parse_yaml(text, p)
        except yaml.YAMLError as err:
            raise ClassNameError(f"cannot parse YAML classes file {p}: {err}") from err
        return _names_from_yaml(obj, p)
    if suffix == ".csv":
        return _names_from_csv(text, p)
    if suffix in (".txt", ""):
        return _class_names_of(parse_class_lines(text, str(p)), p)
    raise ClassNameError(f"classes file {p} must be .txt or .csv (one name per line) or .yaml/.yml")


# The first row of a one-column CSV classes file that names the column, not a class
_CSV_HEADERS = frozenset(
    {"class", "classes", "class_name", "class_names", "classname", "name", "names", "label",
     "labels", "label_name", "category", "categories"}
)  # fmt: skip


def _names_from_csv(text: str, where: Path) -> list[str]:
    """Class names of a one-column CSV file: one per row, quotes removed (a quoted name may hold
    commas: ``"Beaches, dunes, sands"``); rows read as the lines of a ``.txt`` file otherwise."""
    import csv
    import io

    names: list[str] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as err:
        raise ClassNameError(f"cannot read CSV classes file {where}: {err}") from err
    header = True  # a first row such as "class" or "name" heads the column: it is no class
    for lineno, row in enumerate(rows, start=1):
        fields = [f.strip() for f in row]
        if fields and fields[0].startswith("#"):
            continue  # a comment, commas and all
        if header and fields and any(fields):
            header = False
            if len(fields) == 1 and fields[0].lower().replace(" ", "_") in _CSV_HEADERS:
                logger.info("%s: row %d, %r, is the column's header", where, lineno, fields[0])
                continue
        while len(fields) > 1 and not fields[-1]:  # a trailing comma
            fields.pop()
        if len(fields) > 1:
            shown = ",".join(row)
            raise ClassNameError(
                f"{where}, row {lineno}: {shown!r} has {len(fields)} columns; a classes "
                "file holds one class name per line (quote a name that holds commas), or "
                "'label = name' lines in a .txt file"
            )
        if fields:
            names += _class_names_of(parse_class_lines(fields[0], str(where)), where)
    return names


def _class_names_of(rows: Sequence[tuple[str, str]], where: Path) -> list[str]:
    """The names of a classes file's ``(label, name)`` rows; a ``label =`` line names no class
    (a mapping file may map a label to nothing, a classes file may not)."""
    empty = [label for label, name in rows if not name]
    if empty:
        raise ClassNameError(
            f"{where}: the line {empty[0] + ' ='!r} names no class after '='; write "
            f"'{empty[0]} = <the name the prompts say>', or the name alone"
        )
    return [name for _, name in rows]


def _names_from_yaml(obj: Any, where: Path) -> list[str]:
    if isinstance(obj, dict):
        for key in ("classes", "class_names", "names"):
            if key in obj:
                return _names_from_yaml(obj[key], where)
        try:
            items = sorted(obj.items(), key=lambda kv: int(kv[0]))
        except (TypeError, ValueError):
            items = None
        if items is not None:
            return [_yaml_name(v, where, f"entry {k}") for k, v in items]
    if isinstance(obj, list):
        return [_yaml_name(v, where, f"item {i}") for i, v in enumerate(obj, start=1)]
    if isinstance(obj, str):  # names on lines of their own, without '- ', read as one text
        raise ClassNameError(
            f"{where}: YAML reads the file as the one text {obj[:60]!r}; write one class per "
            "line as '- name' (a YAML list), or name the file .txt"
        )
    raise ClassNameError(
        f"{where}: expected a list of class names, a mapping {{index: name}}, or a mapping with "
        f"a 'classes' key; found {type(obj).__name__}"
    )


def _yaml_name(value: Any, where: Path, entry: str) -> str:
    """A YAML class name (``entry`` says which, for an error); YAML reads yes/no/on/off unquoted
    as true/false, never meant here, and an entry with nothing after its dash or colon as null."""
    if isinstance(value, bool):
        raise ClassNameError(
            f"{where}: a class name reads as {value} (YAML takes yes/no/on/off unquoted as "
            "true/false); quote it ('yes')"
        )
    if value is None:
        raise ClassNameError(f"{where}: {entry} is empty; give it a class name, or remove it")
    if not isinstance(value, (str, int, float)):
        raise ClassNameError(
            f"{where}: {entry} is a {type(value).__name__} ({value!r}), not a class name; give "
            "one name per entry (quote a name that holds ': ' or starts with '[')"
        )
    return str(value)


def format_prompts(class_name: str, templates: Sequence[str], normalize: bool = True) -> list[str]:
    """The prompts of one class: every template with ``{c}`` replaced by the (normalised) name."""
    name = normalize_class_name(class_name) if normalize else class_name
    return [t.replace("{c}", name) for t in templates]


# -- text encoding ---------------------------------------------------------------------------
def _token_lengths(tokens: torch.Tensor) -> torch.Tensor:
    # The end-of-text token has the largest id of the CLIP vocabulary: its position + 1 is the
    # real length of each prompt (the same rule as MSCLIP.encode_text(trim=True)).
    return tokens.argmax(dim=-1) + 1


# On a CPU a batch of prompts ends where the token length grows once it holds this many
# positions: the text tower's cost follows the positions it runs (each batch is trimmed to its
# longest prompt), and products of 512 rows or more run near the GEMM rate. Measured on a Zen 3
# CPU, 500 prompts of 6 to 15 tokens: 5,486 positions in 2.60 s against 6,476 in 3.17 s in
# batches of 256. A GPU pays per call rather than per position: there batches are only capped.
_MIN_BATCH_POSITIONS = 512


def _length_batches(
    order: list[int], lengths: list[int], batch_size: int, cut_at_lengths: bool
) -> Iterator[list[int]]:
    """Batches of the prompts in ``order`` (sorted by token length): at most ``batch_size``
    prompts each, and, where ``cut_at_lengths``, ended early where the length grows once a
    batch holds :data:`_MIN_BATCH_POSITIONS` positions."""
    batch: list[int] = []
    for i in order:
        full = len(batch) >= batch_size
        grows = bool(batch) and cut_at_lengths and lengths[i] > lengths[batch[-1]]
        if batch and (full or (grows and len(batch) * lengths[batch[-1]] >= _MIN_BATCH_POSITIONS)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.inference_mode()
def encode_texts(
    model: Any,
    tokenizer: Callable[..., torch.Tensor],
    texts: Sequence[str],
    cache: TextEmbeddingCache | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Raw (not normalised) text-tower embeddings of ``texts``, float32 on the CPU, ``[N, D]``.

    Texts found in ``cache`` are not encoded again; new ones are added to it. Prompts are
    encoded in batches sorted by token length with ``encode_text(..., trim=True)``, so each
    batch runs only as many positions as its longest prompt (exact up to ~1e-6); on a CPU a
    batch also ends where the length grows once it holds 512 positions, so few padded positions
    are computed.

    Args:
        model: an :class:`msclip.MSCLIP` (any object with ``encode_text(tokens, trim=...)``).
        tokenizer: from :func:`msclip.get_tokenizer`.
        texts: the strings to encode (duplicates are encoded once).
        cache: optional on-disk cache (:class:`msclip.text_cache.TextEmbeddingCache`).
        batch_size: at most this many prompts per text-tower call.
        progress: show a tqdm bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = [texts] if isinstance(texts, str) else list(texts)  # one text, not its characters
    unique = list(dict.fromkeys(texts))
    found: dict[str, torch.Tensor] = {}
    tag = _tokenizer_tag(model, tokenizer)  # cache entries of another tokenizer are others
    if cache is not None and unique:
        for t, emb in cache.get_many([tag + t for t in unique]).items():
            found[t[len(tag) :]] = torch.from_numpy(emb)
    todo = [t for t in unique if t not in found]
    # texts from the cache were cut as well when they were encoded: name them on every run
    cut, n = _cut_texts(tokenizer, [t for t in unique if t in found])
    tokens = tokenizer(todo) if todo else None
    if tokens is not None:
        cut_new, n = _cut_texts(tokenizer, todo, tokens)
        cut += cut_new
    cut_set = set(cut)
    _warn_cut([t for t in unique if t in cut_set], n)
    if todo:
        device = getattr(model, "device", torch.device("cpu"))
        lengths = _token_lengths(tokens)
        order = torch.argsort(lengths, stable=True).tolist()
        from msclip.progress import progress_bar

        new: dict[str, torch.Tensor] = {}
        bar = progress_bar(total=len(todo), desc="text tower", unit="prompt", disable=not progress)
        cpu = torch.device(device).type == "cpu"
        for idx in _length_batches(order, lengths.tolist(), batch_size, cpu):
            emb = model.encode_text(tokens[idx].to(device), trim=True)
            emb = emb.float().cpu()
            for j, i in enumerate(idx):
                new[todo[i]] = emb[j]
            bar.update(len(idx))
        bar.close()
        trim_heap()  # the prompts' activations, kept by the C heap otherwise (msclip.memory)
        if cache is not None:
            cache.put([tag + t for t in todo], torch.stack([new[t] for t in todo]).numpy())
        found.update(new)
        logger.debug("encoded %d texts (%d from cache)", len(todo), len(unique) - len(todo))
    if not texts:
        dim = getattr(model, "embed_dim", 0)
        return torch.zeros(0, dim)
    return torch.stack([found[t] for t in texts]).float()


#: Tokenizers that msclip's models come with (any of them at the model's context length keeps
#: the plain cache keys).
_OWN_TOKENIZERS = ("CLIPTokenizer", "SimpleTokenizer", "HFTokenizer")


def _tokenizer_tag(model: Any, tokenizer: Any) -> str:
    """``""`` for the model's own kind of tokenizer at its context length, else a prefix that
    keeps the cache entries of another tokenizer (other token ids, another cut) apart."""
    n = getattr(tokenizer, "context_length", None)
    if type(tokenizer).__name__ in _OWN_TOKENIZERS and n == getattr(model, "context_length", n):
        return ""
    return f"[{type(tokenizer).__name__} {n}]\x00"


def _cut_texts(
    tokenizer: Any, texts: Sequence[str], tokens: torch.Tensor | None = None
) -> tuple[list[str], int]:
    """The texts that the tokenizer cuts at the text tower's context length, and that length
    (:func:`msclip.tokenizer.cut_at_context`). ``tokens``: their ids when already computed, of
    which only the rows filled to the last position can be cut."""
    from msclip.tokenizer import cut_at_context

    n = getattr(tokenizer, "context_length", 0)
    if not texts or not hasattr(tokenizer, "encode"):
        return [], n
    if tokens is None:
        return ([t for t in texts if cut_at_context(tokenizer, t, n)] if n else []), n
    n = int(tokens.shape[1])
    full = (tokens[:, -1] != 0).nonzero().flatten().tolist()  # filled to the last position
    return [texts[i] for i in full if cut_at_context(tokenizer, texts[i], n)], n


def _warn_cut(cut: Sequence[str], n: int) -> None:
    """Say which texts were cut at the text tower's context length ``n`` (what follows the cut
    changes nothing: two queries that differ only there score the same). The results of a cut
    query or prompt may be wrong, so the programs show it under ``--quiet`` too."""
    if cut:
        shown = "; ".join(repr(t if len(t) <= 60 else t[:57] + "...") for t in cut[:3])
        more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
        shown_when_quiet.warning(
            "%s longer than the text tower's %d tokens and %s cut there (words after the cut "
            "change nothing): %s%s; shorten %s",
            plural(len(cut), "text") + (" is" if len(cut) == 1 else " are"), n,
            "was" if len(cut) == 1 else "were", shown, more, "it" if len(cut) == 1 else "them",
        )  # fmt: skip


def build_classifier(
    model: Any,
    tokenizer: Callable[..., torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    cache: TextEmbeddingCache | None = None,
    batch_size: int = 256,
    normalize_names: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Zero-shot classifier weights, one row per class: ``[C, D]`` float32 on the CPU.

    Row ``c`` is ``normalize(mean_t(normalize(text_tower(template_t(name_c)))))``, exactly the
    published protocol; logits are ``100 * normalize(image) @ W.T`` (:func:`zero_shot_logits`).

    Args:
        model: an :class:`msclip.MSCLIP`.
        tokenizer: from :func:`msclip.get_tokenizer`.
        class_names: class names as given (normalised here when ``normalize_names``).
        templates: prompt templates with ``{c}`` (:func:`load_templates`).
        cache: optional on-disk cache of prompt embeddings.
        batch_size: prompts per text-tower call.
        normalize_names: apply :func:`normalize_class_name` (the published protocol does).
        progress: show a tqdm bar while encoding.

    Raises:
        ClassNameError, DuplicateClassError: bad class names.
        TemplateError: no templates, or a template without ``{c}``.
        InvalidEmbeddingsError: the text tower gave non-finite embeddings (damaged weights).
    """
    names = check_class_names(class_names, normalize=normalize_names)
    if isinstance(templates, (str, bytes)):  # its characters are no templates
        raise TemplateError(
            f"templates must be a list of templates, got the single string {templates!r}; pass "
            f"[{templates!r}] (or load_templates('eo'), a set name or a file)",
        )
    templates = list(templates)
    if not templates:
        raise TemplateError("no templates given")
    if not all(isinstance(t, str) for t in templates):
        # open_clip's template functions (lambda c: f"a photo of {c}.") give the text with the
        # name at its place when called with the placeholder itself
        odd = next(t for t in templates if not isinstance(t, str))
        raise TemplateError(
            f"templates must be strings containing {{c}}, got a {type(odd).__name__}; "
            "for template functions such as open_clip's (lambda c: f'a photo of {c}.') pass "
            "[t('{c}') for t in templates]"
        )
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise TemplateError(
            f"templates without the '{{c}}' placeholder: {bad[:3]}; {_placeholder_fix(bad[0])}"
        )
    prompts = [p for n in names for p in format_prompts(n, templates, normalize_names)]
    emb = encode_texts(model, tokenizer, prompts, cache, batch_size, progress)
    emb = F.normalize(emb, dim=-1).view(len(names), len(templates), -1)
    classifier = F.normalize(emb.mean(dim=1), dim=-1)
    bad_rows = (~torch.isfinite(classifier).all(dim=1)).nonzero().flatten().tolist()
    if bad_rows:  # NaN logits would make every image the first class, with status ok
        raise InvalidEmbeddingsError(
            f"the text tower gave non-finite embeddings for the class(es) "
            f"{[names[i] for i in bad_rows]}: the model's text weights are damaged (check the "
            "checkpoint)"
        )
    return classifier


def encode_queries(
    model: Any,
    tokenizer: Callable[..., torch.Tensor],
    queries: Sequence[str],
    cache: TextEmbeddingCache | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised embeddings of free-text retrieval queries (used as written: no templates,
    no class-name normalisation), ``[Q, D]`` float32 on the CPU."""
    return F.normalize(encode_texts(model, tokenizer, queries, cache, batch_size), dim=-1)


# -- scoring ---------------------------------------------------------------------------------
def zero_shot_logits(
    image_features: torch.Tensor | np.ndarray,
    classifier: torch.Tensor | np.ndarray,
    scale: float = LOGIT_SCALE,
) -> torch.Tensor:
    """``scale * cosine`` between images ``[N, D]`` (normalised here) and classifier ``[C, D]``.

    Computed in float32 whatever the inputs' dtype; numpy or torch inputs.

    Raises:
        InvalidArgumentError: ``scale`` is not a finite positive number (an infinite one, such
            as ``model.logit_scale.exp()`` of a checkpoint with a huge ``logit_scale``, made
            every logit infinite and the probabilities NaN).
    """
    _check_scale(scale)
    classifier = torch.as_tensor(classifier).detach()
    if classifier.ndim != 2:  # a row of it would give one score per image, not per class
        raise DimensionMismatchError(
            f"the classifier must be a [C, D] matrix (build_classifier), got shape "
            f"{tuple(classifier.shape)}; keep one class as a [1, D] matrix (classifier[None])"
        )
    feats = torch.as_tensor(image_features).detach()
    if feats.ndim == 1:
        feats = feats[None]
    if feats.ndim != 2 or feats.shape[1] != classifier.shape[-1]:
        raise DimensionMismatchError(
            f"image embeddings of shape {tuple(feats.shape)} for a classifier of "
            f"{classifier.shape[-1]}-d class embeddings: give [N, {classifier.shape[-1]}] "
            "embeddings of the model that built the classifier"
        )
    img = F.normalize(feats.float(), dim=-1)
    return scale * img @ classifier.float().to(img.device).T


def _check_scale(scale: Any) -> None:
    try:
        value = torch.as_tensor(scale).detach().double()
    except (TypeError, ValueError, RuntimeError):
        value = None
    if value is None or value.numel() != 1 or not (bool(torch.isfinite(value)) and value > 0):
        raise InvalidArgumentError(
            f"scale must be a finite positive number, got {scale!r} (model.logit_scale.exp() of "
            f"weights whose logit_scale is huge or NaN?); the published protocol's scale is "
            f"{LOGIT_SCALE:g}: leave scale out",
            param="scale",
        )


def zero_shot_probs(
    image_features: torch.Tensor | np.ndarray,
    classifier: torch.Tensor | np.ndarray,
    scale: float = LOGIT_SCALE,
) -> torch.Tensor:
    """Softmax over classes of :func:`zero_shot_logits`: ``[N, C]``, rows sum to one."""
    return zero_shot_logits(image_features, classifier, scale).softmax(dim=-1)


# -- decisions -------------------------------------------------------------------------------
#: Multi-label decision rules of :func:`multilabel_predict`.
MULTILABEL_RULES = ("mean_others", "other_class", "threshold")
MultiLabelRule = Literal["mean_others", "other_class", "threshold"]


def multilabel_predict(
    scores: Any,
    rule: MultiLabelRule = "mean_others",
    threshold: float | None = None,
) -> np.ndarray:
    """Binary multi-label predictions from scores.

    Args:
        scores: Scores ``[N, C]`` (numpy or torch).
        rule: ``"mean_others"``: class ``c`` is present when its score exceeds the mean score of
            the other ``C - 1`` classes of that image (the published rule; needs ``C >= 2``).
            ``"other_class"``: the last column is an extra "other features" class whose score is
            the threshold; returns predictions for the first ``C - 1`` columns only.
            ``"threshold"``: score > ``threshold``.
        threshold: Required for (and only used by) ``rule="threshold"``.

    Returns:
        bool array ``[N, C]`` (``[N, C - 1]`` for ``"other_class"``). All comparisons are
        strict, so a score equal to its threshold is "absent".

    Raises:
        MetricInputError: An unknown rule, a missing threshold, too few columns, or scores that
            are not a finite ``[N, C]`` matrix.
    """
    s = as_numpy(scores)
    if s.ndim != 2 or s.dtype.kind not in "fiub":
        raise MetricInputError(
            f"scores must be a numeric [N, C] matrix, got dtype {s.dtype} shape {s.shape}"
        )
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise MetricInputError("scores contain NaN or infinite values")
    c = s.shape[1]
    if rule == "mean_others":
        if c < 2:
            raise MetricInputError(
                f"rule 'mean_others' needs at least 2 classes; scores have C = {c}"
            )
        others_mean = (s.sum(axis=1, keepdims=True) - s) / (c - 1)
        # A row's lowest score can never exceed the mean of the others; the sum's rounding made
        # it seem to in float64 rows of equal scores (every class "present"). The guard only
        # removes such rounding artefacts: float32 scores were never affected.
        return (s > others_mean) & (s > s.min(axis=1, keepdims=True))
    if rule == "other_class":
        if c < 2:
            raise MetricInputError(
                f"rule 'other_class' needs the class columns plus a last 'other' column "
                f"(C >= 2); scores have C = {c}"
            )
        return s[:, :-1] > s[:, -1:]
    if rule == "threshold":
        if threshold is None or isinstance(threshold, bool):
            raise MetricInputError("rule 'threshold' needs a numeric threshold=...; got None")
        thr = float(threshold)
        if not np.isfinite(thr):
            raise MetricInputError(f"threshold must be finite; got {threshold!r}")
        return s > thr
    raise MetricInputError(f"unknown multi-label rule {rule!r}; choose one of {MULTILABEL_RULES}")


@dataclass
class Classification:
    """Zero-shot classification of a set of images (:func:`classify`).

    Attributes:
        class_names: the classes, in column order.
        logits: ``[N, C]`` ``100 x cosine`` (float64).
        probs: ``[N, C]`` softmax over classes (float64; rows sum to one).
        present: ``[N, C]`` bool, the classes marked present (multi-label), else ``None``.
        rule: the multi-label rule used, or ``None`` (single-label: the arg-max class).
    """

    class_names: list[str]
    logits: np.ndarray
    probs: np.ndarray
    present: np.ndarray | None = None
    rule: str | None = None

    @property
    def top1(self) -> np.ndarray:
        """Index of the most probable class per image ``[N]``."""
        return self.probs.argmax(axis=1) if len(self.probs) else np.zeros(0, dtype=np.int64)

    def labels(self, sep: str = ";") -> list[str]:
        """Per image: the arg-max class name, or the names of the classes present joined by
        ``sep`` (empty when none is) for multi-label."""
        if self.present is None:
            return [self.class_names[int(i)] for i in self.top1]
        return [sep.join(n for n, on in zip(self.class_names, row) if on) for row in self.present]


def classify(
    image_features: torch.Tensor | np.ndarray,
    classifier: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    multi_label: str | None = None,
    threshold: float | None = None,
) -> Classification:
    """Zero-shot decisions for image embeddings, by the published protocol.

    Args:
        image_features: ``[N, D]`` image embeddings (normalised here), numpy or torch.
        classifier: ``[C, D]`` from :func:`build_classifier` (numpy or torch).
        class_names: the ``C`` class names.
        multi_label: ``None`` (single-label), ``"mean_others"`` (the published rule, on logits) or
            ``"threshold"`` (probability above ``threshold``).
        threshold: the probability threshold of ``multi_label="threshold"``.

    Raises:
        ClassNameError: names and classifier rows differ in number, one string instead of a
            list, or ``"mean_others"`` with fewer than two classes.
        DuplicateClassError: a class name given twice.
        DimensionMismatchError: embeddings of another dimension than the classifier's, or a
            classifier that is not a matrix.
        InvalidEmbeddingsError: embeddings or classifier rows with NaN or infinity.
        MetricInputError: an unknown rule, ``"threshold"`` without a threshold, or a threshold
            with another rule (it would be ignored).
    """
    if threshold is not None and multi_label != "threshold":
        # the threshold would be ignored: every image would still get one class (or the
        # published rule's classes), not those above the threshold
        raise MetricInputError(
            f"threshold={threshold} applies to multi_label='threshold' only (multi_label is "
            f"{multi_label!r}); pass multi_label='threshold' to keep the classes above it, or "
            "leave the threshold out"
        )
    # one string would be its letters, and a name twice makes the labels ambiguous
    names = check_class_names(class_names, normalize=False)
    classifier = torch.as_tensor(classifier).detach()
    if classifier.ndim != 2:
        raise DimensionMismatchError(
            f"the classifier must be a [C, D] matrix (build_classifier), got shape "
            f"{tuple(classifier.shape)}"
        )
    if len(names) != classifier.shape[0]:
        raise ClassNameError(
            f"{len(names)} class names for a classifier of {classifier.shape[0]} classes"
        )
    bad_classes = ~torch.isfinite(classifier.float()).all(dim=1)
    if bool(bad_classes.any()):  # NaN logits would make every image the first class
        raise InvalidEmbeddingsError(
            f"the classifier rows of {[names[i] for i in bad_classes.nonzero().flatten()]} "
            "contain NaN or infinity: rebuild it with build_classifier from undamaged weights"
        )
    feats = torch.as_tensor(image_features).detach()
    bad = (
        (~torch.isfinite(feats.float())).reshape(feats.shape[0], -1).any(dim=1)
        if feats.ndim >= 1 and feats.numel()
        else torch.zeros(0, dtype=torch.bool)
    )
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:10].tolist()
        raise InvalidEmbeddingsError(
            f"image embeddings rows {rows} contain NaN or infinity (an image of missing pixels, "
            "or a failed encoding): drop them before classifying"
        )
    logits = zero_shot_logits(feats, classifier).cpu()  # features on a GPU: results in numpy
    probs = logits.softmax(dim=-1).double().numpy()
    logits_np = logits.double().numpy()
    if multi_label is None:
        return Classification(names, logits_np, probs)
    if multi_label == "mean_others":
        if len(names) < 2:
            raise ClassNameError(
                "the multi-label rule compares each class with the others: give at least two "
                "classes, or a probability threshold"
            )
        present = multilabel_predict(logits_np, "mean_others") if len(probs) else None
    elif multi_label == "threshold":
        present = multilabel_predict(probs, "threshold", threshold) if len(probs) else None
    else:
        raise MetricInputError(
            f"unknown multi-label rule {multi_label!r}; choose 'mean_others' or 'threshold'"
        )
    if present is None:
        present = np.zeros((0, len(names)), dtype=bool)
    return Classification(names, logits_np, probs, present, multi_label)

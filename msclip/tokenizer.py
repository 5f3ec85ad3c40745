"""CLIP's byte-level BPE tokenizer, without importing OpenCLIP.

Byte-pair encoding (Sennrich, Haddow and Birch, "Neural Machine Translation of Rare Words with
Subword Units", ACL 2016) over UTF-8 bytes mapped to printable characters, with the 49,152-token
vocabulary and merge list of CLIP (Radford et al., ICML 2021). Text is cleaned as OpenCLIP's
default ``lower`` mode does (``ftfy.fix_text``, HTML entities unescaped twice, whitespace runs
collapsed, lower case), split into words, numbers and punctuation runs, each piece encoded by
applying the lowest-ranked merge until none applies, and framed by ``<start_of_text>`` /
``<end_of_text>``; sequences longer than the context are cut and end with ``<end_of_text>``.
The output equals ``open_clip.SimpleTokenizer``'s (checked by the tests).

The merge list is the one OpenCLIP ships (``bpe_simple_vocab_16e6.txt.gz``); it is read from the
installed ``open_clip`` package without importing it (importing OpenCLIP costs seconds: see
:mod:`msclip.architecture`).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["UNPACKING_HINT", "CLIPTokenizer", "cut_at_context", "default_bpe_path"]

#: The fix for an image given to the tokenizer: open_clip's idiom
#: ``model, _, preprocess = open_clip.create_model_and_transforms(...)`` takes msclip's tokenizer
#: for the image transform.
UNPACKING_HINT = (
    "msclip.create_model_and_transforms returns (model, preprocess, tokenizer), where "
    "open_clip's returns (model, preprocess_train, preprocess): unpack it as "
    "model, preprocess, tokenizer = ..."
)


def cut_at_context(tokenizer: Any, text: str, n: int) -> bool:
    """Whether ``tokenizer`` cuts ``text`` at a context of ``n`` tokens (its start and end
    markers take two of them): the words after the cut are never read. msclip's tokenizer
    bounds short texts without reading its merge tables (:meth:`CLIPTokenizer.max_tokens`);
    any other tokenizer with an ``encode`` method is asked for the text's tokens."""
    bound = getattr(tokenizer, "max_tokens", None)
    if bound is not None and bound(text) + 2 <= n:
        return False
    return len(tokenizer.encode(text)) + 2 > n


VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2
_SPECIAL = ("<start_of_text>", "<end_of_text>")


def default_bpe_path() -> Path:
    """The merge list shipped with the installed ``open_clip`` (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is not installed; it ships CLIP's BPE merge list")
    return Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILE


@functools.cache
def _byte_chars() -> dict[int, str]:
    """Byte -> character: printable Latin-1 bytes stand for themselves, the others (controls,
    space, soft hyphen ...) for characters from U+0100 on, so no piece holds whitespace."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    order, chars = list(keep), list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            order.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(order, chars)}


def _merge_lines_text(path: str) -> str:
    """The merge list's text up to its last merge line used: CLIP's file holds 262,145 lines, of
    which the version header and the first :data:`_N_MERGES` merges are read (decompressing a
    quarter of the file: 5 against 16 ms, Zen 5). The chunks are joined, then cut after a line
    end, so the text never ends inside a character."""
    chunks: list[bytes] = []
    lines = 0
    with gzip.open(path, "rb") as f:
        while lines <= _N_MERGES and (chunk := f.read(1 << 18)):
            chunks.append(chunk)
            lines += chunk.count(b"\n")
    data = b"".join(chunks)
    if lines > _N_MERGES:
        data = data[: data.rfind(b"\n") + 1]
    text = data.decode("utf-8")
    # line ends as text mode reads them (Windows and old Mac ends are line ends too)
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


@functools.cache
def _tables(path: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    text = _merge_lines_text(path)
    # the first line is a version header; each merge line is its two pieces and one space
    lines = text.split("\n", _N_MERGES + 1)[1 : _N_MERGES + 1]
    words = " ".join(lines).split(" ")
    if len(words) == 2 * len(lines):  # at once (~30 ms less)
        firsts, seconds = words[0::2], words[1::2]
    else:  # another spacing (tabs, several spaces, spaces at a line's end): line by line
        pairs = [line.split() for line in lines]
        firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
    merges = list(zip(firsts, seconds))
    base = list(_byte_chars().values())
    vocab = [*base, *(c + "</w>" for c in base), *map(str.__add__, firsts, seconds), *_SPECIAL]
    return dict(zip(vocab, range(len(vocab)))), dict(zip(merges, range(len(merges))))


@functools.cache
def _pattern():  # -> regex.Pattern
    import regex

    special = "|".join(_SPECIAL)
    return regex.compile(
        special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )


# Text that ftfy.fix_text and HTML unescaping give back unchanged, up to whitespace (which
# _clean collapses): printable ASCII without "&", tabs and line breaks. ftfy's fixes concern
# characters outside ASCII (mojibake, curly quotes, ligatures, widths, surrogates), control
# characters and terminal escapes, or line breaks ("\r" -> "\n"); an HTML entity needs "&".
# Such text (every prompt template msclip ships) is cleaned without importing ftfy, 0.1 s of a
# program's start-up; the tests check both ways agree.
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


def _clean(text: str) -> str:
    if _PLAIN.fullmatch(text) is None:
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Text -> token ids ``[N, context_length]`` (int64), zero padded.

    Args:
        context_length: tokens per text, start and end markers included.
        bpe_path: the gzipped merge list (default: OpenCLIP's, :func:`default_bpe_path`).
    """

    def __init__(self, context_length: int = 77, bpe_path: str | Path | None = None) -> None:
        self.context_length = int(context_length)
        self.bpe_path = str(bpe_path or default_bpe_path())
        if not Path(self.bpe_path).is_file():  # the tables are read on first use: check now
            raise FileNotFoundError(f"BPE merge list not found: {self.bpe_path}")
        self.byte_encoder = _byte_chars()
        # the vocabulary is the 256 byte characters, the same with "</w>", the merges and the two
        # markers, in this order: its size and the markers' ids are known without reading it
        self.vocab_size = 2 * len(self.byte_encoder) + _N_MERGES + len(_SPECIAL)
        self.sot_token_id, self.eot_token_id = self.vocab_size - 2, self.vocab_size - 1
        self._tables: tuple[dict[str, int], dict[tuple[str, str], int]] | None = None
        self._cache: dict[str, list[int]] = {}

    @property
    def encoder(self) -> dict[str, int]:
        """Token -> id (read from the merge list on first use)."""
        return self._load()[0]

    @property
    def ranks(self) -> dict[tuple[str, str], int]:
        """Merge pair -> rank (read from the merge list on first use)."""
        return self._load()[1]

    def _load(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        if self._tables is None:
            self._tables = _tables(self.bpe_path)
        return self._tables

    def release(self) -> None:
        """Free the merge tables (about 30 MB of Python objects) until the next text is encoded.

        For programs that encode their prompts first and then only images; encoding again reads
        the tables anew (~0.2 s), with the same results.
        """
        self._tables = None
        self._cache.clear()
        _tables.cache_clear()

    def _bpe(self, piece: str) -> list[int]:
        """Ids of one piece: merge the lowest-ranked adjacent pair, everywhere, until none is in
        the merge list."""
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        ranks = self.ranks
        while len(word) > 1:
            best, best_rank = None, None
            for pair in itertools.pairwise(word):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.encoder[w] for w in word]
        self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start and end markers."""
        out: list[int] = []
        for piece in _pattern().findall(_clean(text)):
            if piece in _SPECIAL:
                out.append(self.encoder[piece])
                continue
            out += self._bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8")))
        return out

    def max_tokens(self, text: str) -> int:
        """An upper bound of ``len(self.encode(text))`` that reads no merge table: the UTF-8 bytes
        of the cleaned text outside its spaces (byte-pair encoding gives at most one token per
        byte, and a marker piece is one token)."""
        return len(_clean(text).replace(" ", "").encode("utf-8"))

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """Token ids ``[N, context_length]`` of one text or a list of texts.

        Raises:
            TypeError: something other than texts (an image, an array, a file path object).
        """
        given = texts
        try:
            texts = [texts] if isinstance(texts, str) else list(texts)
        except TypeError:  # not iterable: an image, a Raster
            texts = [given]  # type: ignore[list-item]
        odd = next((t for t in texts if not isinstance(t, str)), None)
        if odd is not None:
            raise TypeError(
                f"the tokenizer takes a text or a list of texts, got {type(given).__name__}"
                + (f" of {type(odd).__name__}" if odd is not given else "")
                + f"; an image goes through preprocess: {UNPACKING_HINT}"
            )
        n = int(context_length or self.context_length)
        result = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot_token_id
            result[i, : len(ids)] = torch.tensor(ids)
        return result

    def __repr__(self) -> str:
        return f"CLIPTokenizer(context_length={self.context_length})"

"""Embedding index of msclip: a crash-safe on-disk store and fast top-k search.

:mod:`msclip.index.store` keeps embeddings (one memory-mappable float32 file), per-row metadata and
the building model's description in a directory that a killed build never corrupts and a restarted
build resumes. :mod:`msclip.index.search` answers top-k inner-product queries over it with an int8
short-list scan and exact float re-ranking (``exact=True``: a full float scan whose result is
provably the exact top-k; the short-list may miss rows whose scores are within the int8 rounding
of the k-th, as among near-duplicate tiles).

Example:
    >>> from msclip.index import IndexStore, IndexWriter, SearchIndex
    >>> with IndexWriter.open_or_create("tiles.index", dim=512, model_info=info) as writer:
    ...     writer.add(embeddings, rows, source="scene_001.tif")
    >>> store = IndexStore.open("tiles.index")
    >>> store.check_compatible(info)
    >>> scores, ids = SearchIndex.from_store(store).search(query_embeddings, k=10)
"""

from msclip.index.search import (
    KERNELS,
    EmptyIndexError,
    SearchIndex,
    SearchResult,
    default_candidates,
)
from msclip.index.store import (
    DEFAULT_COMMIT_ROWS,
    FORMAT_VERSION,
    CorruptIndexError,
    DimensionMismatchError,
    DuplicateSourceError,
    IndexFormatError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexStore,
    IndexWriter,
    InvalidEmbeddingsError,
    MetadataError,
    ModelInfoError,
    SourceRange,
)

__all__ = [
    "DEFAULT_COMMIT_ROWS",
    "FORMAT_VERSION",
    "KERNELS",
    "CorruptIndexError",
    "DimensionMismatchError",
    "DuplicateSourceError",
    "EmptyIndexError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexStore",
    "IndexWriter",
    "InvalidEmbeddingsError",
    "MetadataError",
    "ModelInfoError",
    "SearchIndex",
    "SearchResult",
    "SourceRange",
    "default_candidates",
]

"""``neox prepare inspect`` and ``neox prepare merge`` on mmap datasets."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from neoxcli.data.indexed import IndexedDataset, IndexedDatasetWriter, normalize_prefix
from neoxcli.errors import DataError


def inspect_dataset(
    prefix: str,
    tokenizer_type: str | None = None,
    vocab_file: str | None = None,
    merge_file: str | None = None,
    document: int = 0,
    chars: int = 400,
) -> str:
    """A human-readable report: counts, dtype, token-id range and a sample."""
    ds = IndexedDataset(prefix)
    sizes = np.asarray(ds.sizes, dtype=np.int64)
    lines = [
        f"dataset     {ds.prefix}",
        f"documents   {ds.num_documents:,}",
        f"sequences   {len(ds):,}",
        f"tokens      {int(sizes.sum()):,}",
        f"dtype       {ds.dtype}",
    ]
    if len(sizes):
        lines.append(
            f"doc length  min {int(sizes.min()):,} · mean {sizes.mean():,.1f} · max {int(sizes.max()):,}"
        )
        data = ds._bin_map
        if data.size:
            lo, hi = _id_range(data)
            lines.append(f"token ids   {lo} … {hi}")
    if ds.num_documents:
        if not 0 <= document < ds.num_documents:
            raise DataError(f"--document {document} out of range (0..{ds.num_documents - 1})")
        toks = np.asarray(ds.document(document))
        head = toks[:64].tolist()
        lines.append(f"document {document}: {len(toks):,} tokens, first ids {head}")
        if tokenizer_type or vocab_file:
            from neoxcli.data.tokenizer import build_tokenizer

            tok = build_tokenizer(tokenizer_type or "HFTokenizer", vocab_file, merge_file)
            text = tok.decode(toks[: max(chars, 1) * 2].tolist())[:chars]
            lines.append("decoded sample:")
            lines.append(text)
        else:
            lines.append("(pass --tokenizer/--vocab-file to see decoded text)")
    return "\n".join(lines)


def _id_range(data: np.ndarray, block: int = 1 << 24) -> tuple[int, int]:
    lo, hi = None, None
    for s in range(0, data.size, block):
        part = data[s : s + block]
        a, b = int(part.min()), int(part.max())
        lo = a if lo is None else min(lo, a)
        hi = b if hi is None else max(hi, b)
    return int(lo or 0), int(hi or 0)


def merge_datasets(
    prefixes: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]
) -> tuple[int, int]:
    """Concatenate datasets (same dtype) into ``output``, keeping document boundaries.

    Returns (documents, tokens). The ``.bin`` data is copied in large blocks.
    ``output`` may end in ``.bin`` or ``.idx``, as the writer accepts it.
    """
    if not prefixes:
        raise DataError("nothing to merge")
    sets = [IndexedDataset(p) for p in prefixes]
    dtypes = {str(s.dtype) for s in sets}
    if len(dtypes) != 1:
        raise DataError(f"cannot merge datasets of different dtypes ({', '.join(sorted(dtypes))})")
    out = os.path.abspath(normalize_prefix(output))
    for s in sets:
        if os.path.abspath(s.prefix) == out:
            raise DataError(f"the output {output} is also an input")
    n_docs = 0
    with IndexedDatasetWriter(output, sets[0].dtype) as w:
        for s in sets:
            w.append_dataset(s)
            n_docs += s.num_documents
        tokens = w.tokens
    return n_docs, tokens

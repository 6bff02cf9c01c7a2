"""Which samples each rank reads at each step: GPT-NeoX's (Megatron's) batch order."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neoxcli.training.documents import DocumentMasks


class BatchSampler:
    """Sequential batches: global batch k holds sample ids consumed..consumed+global_batch.

    Within a global batch, micro step m on data-parallel rank r takes the
    ``micro`` consecutive ids starting at m*micro*dp + r*micro, so changing
    the number of ranks keeps the global sequence of samples unchanged.
    With ``documents`` the batch carries what the packed-document keys make of
    its EOD tokens (``neoxcli.training.documents``), built here, off the step.
    """

    def __init__(
        self, dataset: Any, micro: int, dp_size: int, dp_rank: int, documents: DocumentMasks | None = None
    ) -> None:
        self.dataset, self.micro, self.dp, self.rank = dataset, micro, dp_size, dp_rank
        self.documents = documents

    def batch(self, consumed: int, micro_step: int) -> Any:
        """``(inputs, labels)`` of ``micro_step`` in the global batch starting at sample ``consumed``."""
        x, y = self._tokens(consumed, micro_step)
        return (x, y) if self.documents is None else self.documents.apply(x, y)

    def _tokens(self, consumed: int, micro_step: int) -> Any:
        import numpy as np
        import torch

        start = consumed + micro_step * self.micro * self.dp + self.rank * self.micro
        n = len(self.dataset)
        ids = [(start + k) % n for k in range(self.micro)]
        tokens = torch.from_numpy(np.stack([np.asarray(self.dataset[i], dtype=np.int64) for i in ids]))
        read_labels = getattr(self.dataset, "labels", None)
        label_rows = [read_labels(i) for i in ids] if read_labels is not None else []
        if not label_rows or any(row is None for row in label_rows):
            return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        # A label file (label_data_paths) replaces the targets; as in GPT-NeoX every
        # negative label is left out of the loss (the loss ignores -100).
        labels = torch.from_numpy(np.stack([np.asarray(row, dtype=np.int64) for row in label_rows]))
        labels = labels[:, 1:].masked_fill(labels[:, 1:] < 0, -100)
        return tokens[:, :-1].contiguous(), labels.contiguous()


def valid_start(iteration: int, eval_interval: int, eval_iters: int, train_batch: int) -> int:
    """First validation sample of the evaluation run after ``iteration``.

    GPT-NeoX keeps one validation iterator for the whole run: each evaluation
    reads the next ``eval_iters`` global batches (the validation split is sized
    for that), and a resumed run skips the ones earlier evaluations read. So the
    evaluation at step ``k * eval_interval`` reads window ``k - 1``, and the one
    at a final step between two intervals the window after the last.
    """
    window = max(iteration - 1, 0) // eval_interval
    return window * eval_iters * train_batch


class Prefetcher:
    """Reads the batches of the next micro step ahead, on ``workers`` threads, in the sampler's order.

    Exactly the batches ``sampler.batch`` would give, in the same order: it
    only moves the reading (memory-mapped tokens, numpy stacking, pinning on
    GPU) off the step's critical path. ``workers`` 0 reads in line.
    """

    def __init__(
        self, sampler: BatchSampler, micro_steps: int, global_batch: int, workers: int, pin: bool = False
    ):
        self.sampler, self.micro_steps, self.global_batch, self.pin = sampler, micro_steps, global_batch, pin
        self._pool = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="neox-data") if workers else None
        )
        self._ahead: dict[tuple[int, int], Future[Any]] = {}
        self._depth = max(workers, 1)

    def _read(self, consumed: int, micro_step: int) -> Any:
        from neoxcli.training.documents import map_batch

        batch = self.sampler.batch(consumed, micro_step)
        return map_batch(batch, lambda t: t.pin_memory()) if self.pin else batch

    def _next(self, key: tuple[int, int]) -> tuple[int, int]:
        consumed, m = key
        return (consumed, m + 1) if m + 1 < self.micro_steps else (consumed + self.global_batch, 0)

    def batch(self, consumed: int, micro_step: int) -> Any:
        if self._pool is None:
            return self._read(consumed, micro_step)
        key = (consumed, micro_step)
        future = self._ahead.pop(key, None)
        # Anything queued for another position (a jump in consumed) is stale.
        for stale in self._ahead.values():
            stale.cancel()
        self._ahead.clear()
        ahead = key
        for _ in range(self._depth):
            ahead = self._next(ahead)
            self._ahead[ahead] = self._pool.submit(self._read, *ahead)
        return future.result() if future is not None else self._read(consumed, micro_step)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

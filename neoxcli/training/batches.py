"""Which samples each rank reads at each step: GPT-NeoX's (Megatron's) batch order."""

from __future__ import annotations

from typing import Any


class BatchSampler:
    """Sequential batches: global batch k holds sample ids consumed..consumed+global_batch.

    Within a global batch, micro step m on data-parallel rank r takes the
    ``micro`` consecutive ids starting at m*micro*dp + r*micro, so changing
    the number of ranks keeps the global sequence of samples unchanged.
    """

    def __init__(self, dataset: Any, micro: int, dp_size: int, dp_rank: int) -> None:
        self.dataset, self.micro, self.dp, self.rank = dataset, micro, dp_size, dp_rank

    def batch(self, consumed: int, micro_step: int) -> Any:
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

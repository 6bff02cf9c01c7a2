"""Sequence-length curricula: the length each optimizer step trains on.

Two ways to ask for one, both a pure function of the step number, so a resumed
run trains each step on exactly the length an uninterrupted run would:

* ``seq_length_warmup`` (neox): fixed stages, e.g. ``{stages: [128, 256, 512],
  steps: 3000}`` (the steps split evenly over the stages, or one count per stage);
  afterwards the run trains at ``seq_length``.
* ``curriculum_learning`` (GPT-NeoX's key, DeepSpeed's legacy seqlen curriculum):
  ``fixed_linear``, ``fixed_root`` and ``fixed_discrete`` with DeepSpeed's
  formulas (``deepspeed/runtime/data_pipeline/curriculum_scheduler.py``), its
  rule that the difficulty stops changing once it reaches ``max_difficulty``,
  and its step numbering (step k, counted from 1, uses the difficulty of k).

A sample keeps GPT-NeoX's order and is cut to its first ``L + 1`` tokens (``L``
inputs, ``L`` targets). The tokens beyond are dropped, as DeepSpeed and GPT-NeoX
drop them, so a step at length ``L`` sees the same samples as a full-length step
and the data position (``consumed_samples``) does not depend on the curriculum.
Evaluation always runs at full length. The learning-rate schedule counts steps,
not tokens, as GPT-NeoX's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from neoxcli.config.schema import CurriculumLearning, NeoXConfig, SeqLengthWarmup


@dataclass(frozen=True)
class Stage:
    """Steps ``first``..``last`` (inclusive, from 1) train at ``seq_length``."""

    first: int
    last: int
    seq_length: int


class SeqLengthSchedule:
    """The sequence length of optimizer step ``k`` (counted from 1): ``schedule.at(k)``."""

    #: The last step whose length may differ from the one every later step has.
    horizon: int = 0

    def at(self, step: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def stages(self, train_iters: int) -> list[Stage]:
        """Runs of equal length over steps 1..``train_iters`` (the last one runs to the end)."""
        out: list[Stage] = []
        end = min(train_iters, self.horizon + 1)
        for k in range(1, end + 1):
            length = self.at(k)
            if out and out[-1].seq_length == length:
                out[-1] = Stage(out[-1].first, k, length)
            else:
                out.append(Stage(k, k, length))
        if out:
            out[-1] = Stage(out[-1].first, max(train_iters, out[-1].last), out[-1].seq_length)
        return out

    def length_sum(self, steps: int) -> int:
        """Sum of the lengths of steps 1..``steps``: tokens per sample seen by then."""
        return sum((s.last - s.first + 1) * s.seq_length for s in self.stages(steps)) if steps > 0 else 0


class StagedWarmup(SeqLengthSchedule):
    """``seq_length_warmup``: each stage for its steps, then ``full``."""

    def __init__(self, spec: SeqLengthWarmup, full: int) -> None:
        n = len(spec.stages)
        if isinstance(spec.steps, list):
            counts = list(spec.steps)
        else:
            # An even split; the remainder goes one step each to the later stages.
            counts = [(i + 1) * spec.steps // n - i * spec.steps // n for i in range(n)]
        self.lengths, self.full = list(spec.stages), full
        self.ends = [sum(counts[: i + 1]) for i in range(n)]
        self.horizon = self.ends[-1]

    def at(self, step: int) -> int:
        for end, length in zip(self.ends, self.lengths, strict=True):
            if step <= end:
                return length
        return self.full


class DeepSpeedCurriculum(SeqLengthSchedule):
    """GPT-NeoX's ``curriculum_learning`` block, computed as DeepSpeed's CurriculumScheduler does."""

    def __init__(self, spec: CurriculumLearning) -> None:
        assert spec.min_difficulty is not None and spec.max_difficulty is not None
        self.lo, self.hi, self.kind = spec.min_difficulty, spec.max_difficulty, spec.schedule_type
        sc = spec.schedule_config
        if self.kind == "fixed_discrete":
            self.difficulty = [int(d) for d in sc["difficulty"]]
            self.max_step = [int(s) for s in sc["max_step"]]
            self.horizon = max(self.max_step)
        else:
            self.total = int(sc["total_curriculum_step"])
            self.step_size = int(sc["difficulty_step"])
            self.degree = 1.0 if self.kind == "fixed_linear" else float(sc["root_degree"])
            self.horizon = self._reaches_max() - 1

    def _reaches_max(self) -> int:
        """The first step at max_difficulty. Past total_curriculum_step the formula keeps growing,
        so a max_difficulty that is no multiple of difficulty_step is reached only later."""
        if self.lo >= self.hi:
            return 1
        target = -(-self.hi // self.step_size) * self.step_size  # the first multiple at or above max
        step = max(1, math.ceil(self.total * ((target - self.lo) / (self.hi - self.lo)) ** self.degree))
        while self._get(step) < self.hi:
            step += 1
        while step > 1 and self._get(step - 1) >= self.hi:
            step -= 1
        return step

    def _get(self, step: int) -> int:
        """DeepSpeed's ``get_difficulty(step)``."""
        if self.kind == "fixed_discrete":
            if step > self.max_step[-1]:
                return self.difficulty[-1]
            for limit, value in zip(self.max_step, self.difficulty, strict=False):
                if step <= limit:
                    return value
            return self.difficulty[-1]  # pragma: no cover - unsorted max_step; DeepSpeed returns None
        frac = (float(step) / self.total) ** (1.0 / self.degree)
        value = math.floor(frac * (self.hi - self.lo) + self.lo)
        value -= value % self.step_size
        # DeepSpeed 0.19 lifts a floor below min_difficulty to the first multiple of the step above it.
        value = max(value, -(-self.lo // self.step_size) * self.step_size)
        return min(value, self.hi)

    def at(self, step: int) -> int:
        # DeepSpeed starts at min_difficulty and updates only while below max_difficulty: the first
        # step that reaches it fixes the length for good. Linear and root schedules only grow, so
        # for them that is the formula itself; a discrete list may come down again, so find it.
        if self.lo >= self.hi:
            return self.lo
        if self.kind != "fixed_discrete":
            return self._get(step)
        first = 1
        for limit, value in [*zip(self.max_step, self.difficulty, strict=False), (None, self.difficulty[-1])]:
            if first > step:
                break
            if value >= self.hi:
                return value
            if limit is None or step <= limit:
                return value
            first = limit + 1
        return self._get(step)  # pragma: no cover


def build_schedule(cfg: NeoXConfig) -> SeqLengthSchedule | None:
    """The run's curriculum, or None when every step trains at ``seq_length``."""
    t = cfg.train
    if t.seq_length_warmup is not None:
        return StagedWarmup(t.seq_length_warmup, cfg.model.seq_length)
    if t.curriculum_learning is not None and t.curriculum_learning.enabled:
        return DeepSpeedCurriculum(t.curriculum_learning)
    return None


def describe(
    schedule: SeqLengthSchedule, train_iters: int, train_batch: int, max_lines: int = 8
) -> list[str]:
    """One line per stage: its steps, length and tokens per global batch (long lists are elided)."""
    stages = schedule.stages(train_iters)
    lines = [
        f"steps {s.first}-{s.last}: seq_length {s.seq_length}, {s.seq_length * train_batch:,} tokens per batch"
        for s in stages
    ]
    if len(lines) > max_lines:
        keep = max_lines // 2
        lines = [*lines[:keep], f"... {len(lines) - 2 * keep} more stages ...", *lines[-keep:]]
    return lines

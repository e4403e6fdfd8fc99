"""Examples for circuit discovery: clean and corrupted ids, and where outputs are read."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

__all__ = ["Examples", "OutputKind"]

OutputKind = Literal["categorical", "numerical"]


@dataclasses.dataclass(frozen=True)
class Examples:
    """A set of prompts with their paired corruptions.

    Attributes:
      clean: ``[N, S]`` token ids.
      corrupted: ``[N, S]`` token ids of the paired corrupted prompts (resample
        ablation reads the writers' outputs on these).
      valid: ``[N, S]`` bool, the non-padding positions; passed to the model as
        its attention mask (padding keys are never attended), and shared by the
        corrupted prompts, which are padded like their clean ones.
      answer: ``[N, S]`` bool, the positions whose outputs count (metrics, loss,
        exact match).
      kind: ``categorical`` outputs are argmax labels compared exactly;
        ``numerical`` outputs are the single logit, compared within ``atol``.
      atol: tolerance for numerical outputs.
      answer_tokens: ``[N, 2]`` token ids (correct, incorrect) for a task with
        one right and one competing answer (the language-model tasks). When
        given, the gradient methods' metric is their logit difference at the
        answer positions (EAP-IG's and MIB's), not the log-probability of the
        full model's label, which saturates on a confident model.
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    valid: torch.Tensor
    answer: torch.Tensor
    kind: OutputKind = "categorical"
    atol: float = 1e-3
    answer_tokens: torch.Tensor | None = None

    def __post_init__(self):
        if self.clean.ndim != 2:
            raise ValueError(f"clean ids must be [N, S], got shape {tuple(self.clean.shape)}")
        if len(self.clean) == 0:
            raise ValueError("empty dataset: no examples to evaluate or train on")
        for name in ("corrupted", "valid", "answer"):
            if getattr(self, name).shape != self.clean.shape:
                raise ValueError(
                    f"{name} has shape {tuple(getattr(self, name).shape)} but clean ids have "
                    f"shape {tuple(self.clean.shape)}; clean and corrupted prompts must be paired "
                    f"and of equal length"
                )
        if self.kind not in ("categorical", "numerical"):
            raise ValueError(f"kind must be 'categorical' or 'numerical', got {self.kind!r}")
        t = self.answer_tokens
        if t is not None and (t.shape != (len(self.clean), 2) or t.dtype != torch.long or self.kind != "categorical"):
            raise ValueError(f"answer_tokens must be [N, 2] = [{len(self.clean)}, 2] token ids (correct, incorrect) "
                             f"of categorical examples, got {t.dtype} {tuple(t.shape)} for kind={self.kind!r}")

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, index) -> Examples:
        return dataclasses.replace(
            self, clean=self.clean[index], corrupted=self.corrupted[index],
            valid=self.valid[index], answer=self.answer[index],
            answer_tokens=None if self.answer_tokens is None else self.answer_tokens[index],
        )

    def to(self, device) -> Examples:
        return dataclasses.replace(
            self, clean=self.clean.to(device), corrupted=self.corrupted.to(device),
            valid=self.valid.to(device), answer=self.answer.to(device),
            answer_tokens=None if self.answer_tokens is None else self.answer_tokens.to(device),
        )

    # ------------------------------------------------------------- outputs
    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Outputs per position: argmax labels, or the numerical value."""
        return logits.argmax(-1) if self.kind == "categorical" else logits[..., 0]

    def agree(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: decoded outputs equal at every answer position."""
        a, b = self.decode(logits_a), self.decode(logits_b)
        same = (a == b) if self.kind == "categorical" else (a - b).abs() <= self.atol
        return (same | ~self.answer).all(-1)

"""Score a base, a fine-tune and a compressed fine-tune (base + .ddq delta) on the example task.

The compressed model is the base with the file's delta applied in place by `ddq_format.loaders.apply_delta`,
i.e. exactly what a user of the toolkit gets.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import task


def load_model(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from .build import no_hf_bars

    with no_hf_bars():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def compressed_model(base: Path, ddq: Path):
    """The base model with the .ddq delta applied (base binding checked by the loader)."""
    from ..loaders import apply_delta

    model = load_model(base)
    apply_delta(model, Path(ddq))
    return model


@dataclass
class Result:
    accuracy: float
    correct: int
    n: int
    answer_nll: float
    kl: float | None  # mean KL(fine-tune || this model) on held-out text; None for the fine-tune itself

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "n": self.n, "answer_nll": self.answer_nll,
                "kl": self.kl}


class Evaluator:
    """Holds the tokenizer, the facts and the fine-tune's held-out log-probs, so each model costs two passes."""

    def __init__(self, tokenizer, facts, ref_model=None):
        self.tokenizer = tokenizer
        self.facts = facts
        self.ref = task.text_logprobs(ref_model, tokenizer) if ref_model is not None else None

    def score(self, model, *, kl: bool = True) -> Result:
        s = task.evaluate(model, self.tokenizer, self.facts)
        k = None
        if kl and self.ref is not None:
            k = task.mean_kl(self.ref, task.text_logprobs(model, self.tokenizer))
        return Result(s.accuracy, s.correct, s.n, s.nll, k)


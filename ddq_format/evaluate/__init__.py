"""`ddq eval`: score a base, its fine-tune and any number of .ddq deltas on the user's own data.

Data: JSON lines, each either {"prompt": ..., "answer": ...} (teacher-forced exact match: every answer token
must be the argmax; answer NLL per token) or {"text": ...} (perplexity). KL(fine-tune || model) is the mean
over every predicted position of every line. A .ddq is applied to the base in place
(ddq_format.loaders.apply_delta), i.e. exactly what a user of the toolkit serves.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError

MAX_DATA_BYTES = 256 * 1024 * 1024
MAX_LINES = 1_000_000
BATCH_TOKENS = 4096  # padded tokens per forward pass


@dataclass(frozen=True)
class Pair:
    prompt: str
    answer: str


@dataclass
class Data:
    path: str
    pairs: list = field(default_factory=list)
    texts: list = field(default_factory=list)


def load_data(path) -> Data:
    """Parse FILE.jsonl; a bad line is an error naming the file and the line."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise UsageError(f"cannot read data file: {e.strerror}", path=p, field="data") from None
    if size > MAX_DATA_BYTES:
        raise UsageError(f"data file of {size} bytes is larger than {MAX_DATA_BYTES}", path=p, field="data")
    data = Data(str(p))
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UsageError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=p, field="data") from None
    if len(lines) > MAX_LINES:
        raise UsageError(f"{len(lines)} lines; at most {MAX_LINES}", path=p, field="data")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {i}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise UsageError(f"not JSON: {e}", path=p, field=where) from None
        if not isinstance(obj, dict):
            raise UsageError("each line must be a JSON object", path=p, field=where)
        if "prompt" in obj or "answer" in obj:
            pr, an = obj.get("prompt"), obj.get("answer")
            if not isinstance(pr, str) or not isinstance(an, str) or not an:
                raise UsageError('needs "prompt" and a non-empty "answer", both strings', path=p, field=where)
            data.pairs.append(Pair(pr, an))
        elif "text" in obj:
            if not isinstance(obj["text"], str) or not obj["text"].strip():
                raise UsageError('"text" must be a non-empty string', path=p, field=where)
            data.texts.append(obj["text"])
        else:
            raise UsageError('needs "prompt" and "answer" (accuracy) or "text" (perplexity, KL)', path=p,
                             field=where)
    if not data.pairs and not data.texts:
        raise UsageError("no examples in the data file", path=p, field="data")
    return data


@dataclass
class Sequence:
    ids: list
    answer_from: int | None  # index of the first answer token (pairs); None for text


def sequences(tokenizer, data: Data) -> list[Sequence]:
    out = []
    for pr in data.pairs:  # prompt and answer tokenized apart, so the boundary is exact
        p = tokenizer(pr.prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(pr.answer, add_special_tokens=False)["input_ids"]
        if not p or not a:
            raise UsageError(f"prompt or answer tokenizes to nothing: {pr.prompt!r} -> {pr.answer!r}",
                             path=data.path, field="data")
        out.append(Sequence(list(p) + list(a), len(p)))
    for t in data.texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) >= 2:
            out.append(Sequence(list(ids), None))
    return out


@dataclass
class Score:
    correct: int = 0
    n: int = 0
    answer_nll_sum: float = 0.0
    answer_tokens: int = 0
    text_nll_sum: float = 0.0
    text_tokens: int = 0
    kl_sum: float = 0.0
    kl_tokens: int = 0

    def summary(self) -> dict:
        return {"accuracy": self.correct / self.n if self.n else None, "correct": self.correct, "n": self.n,
                "answer_nll": self.answer_nll_sum / self.answer_tokens if self.answer_tokens else None,
                "perplexity": math.exp(self.text_nll_sum / self.text_tokens) if self.text_tokens else None,
                "kl": self.kl_sum / self.kl_tokens if self.kl_tokens else None}


def batches(seqs: list[Sequence], pad: int, batch_tokens: int = BATCH_TOKENS):
    import torch
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    i = 0
    while i < len(order):
        T = len(seqs[order[i]].ids)
        j = i
        while j < len(order) and (j - i + 1) * len(seqs[order[j]].ids) <= max(batch_tokens, T):
            j += 1
        group = [seqs[k] for k in order[i:j]]
        T = max(len(s.ids) for s in group)
        ids = torch.full((len(group), T), pad, dtype=torch.long)
        mask = torch.zeros((len(group), T), dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, :len(s.ids)] = torch.tensor(s.ids)
            mask[r, :len(s.ids)] = 1
        yield group, ids, mask
        i = j


def score(model, seqs, pad: int, ref=None, progress=None, task=None) -> Score:
    """One pass over `seqs`; ref: the fine-tune, run in lockstep for KL (None: no KL)."""
    import torch
    sc = Score()
    dev = next(model.parameters()).device
    with torch.no_grad():
        for group, ids, mask in batches(seqs, pad):
            logp = torch.log_softmax(model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float(), -1)
            ref_logp = None
            if ref is not None:
                ref_logp = torch.log_softmax(ref(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float(), -1)
            for r, s in enumerate(group):
                n = len(s.ids)
                tgt = ids[r, 1:n].to(dev)
                lp = logp[r, : n - 1]
                nll = -lp.gather(1, tgt[:, None])[:, 0]
                if s.answer_from is None:
                    sc.text_nll_sum += float(nll.sum())
                    sc.text_tokens += n - 1
                else:
                    a0 = s.answer_from - 1
                    sc.n += 1
                    sc.correct += int(bool((lp[a0:].argmax(-1) == tgt[a0:]).all()))
                    sc.answer_nll_sum += float(nll[a0:].sum())
                    sc.answer_tokens += n - 1 - a0
                if ref_logp is not None:
                    rl = ref_logp[r, : n - 1]
                    sc.kl_sum += float((rl.exp() * (rl - lp)).sum(-1).clamp_min(0).sum())
                    sc.kl_tokens += n - 1
            if progress is not None:
                progress.update(task, advance=len(group))
    return sc


@dataclass
class Row:
    label: str
    path: str | None
    tensors_true_ratio: float | None
    file_bytes: int | None
    metrics: dict

    def as_dict(self):
        return asdict(self)

"""The example's task: memorized key -> value pairs (dense knowledge), and its teacher-forced evaluation.

Why this task: a short *skill* fine-tune (digit manipulation) of a 135M model survives even 2048x true
compression, so it separates no method. Random facts have no structure to fall back on: every stored bit of
the delta matters, so accuracy falls off as compression grows and methods separate.

Facts are random 4-letter names -> 3-digit numbers (100..999), drawn from a seed (chance level 1/900).
Exact match is computed without generation: an answer is correct when the argmax at every answer position
equals the answer token (what greedy decoding would emit), so one forward pass scores a whole batch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROMPT = "The code of {key} is"
ANSWER = " {value}"

# Held-out text for KL(fine-tune || compressed): generic prose the fine-tune never saw, so the KL measures
# how far compression moves the model's behaviour off the task, not only on it.
HELD_OUT_TEXT = [
    "The river winds through the valley, past old stone bridges and fields of barley.",
    "To bake bread, mix flour, water, salt and yeast, then let the dough rise for an hour.",
    "The committee will meet on Thursday to review the budget for the coming year.",
    "Photosynthesis converts light energy into chemical energy stored in sugar molecules.",
    "She opened the window and listened to the rain falling on the roof of the barn.",
    "A prime number has exactly two divisors: one and the number itself.",
    "The library closes at eight in the evening, except on Sundays when it stays shut.",
    "Mountains in the north are covered with snow for most of the year.",
    "He wrote a short letter to his grandmother describing the trip to the coast.",
    "Computers store numbers in binary, using only the digits zero and one.",
    "The train to the city leaves every twenty minutes from the second platform.",
    "Good sleep, regular exercise and a balanced diet help people stay healthy.",
    "The museum displays paintings from the seventeenth and eighteenth centuries.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The children built a small boat out of wood and sailed it on the pond.",
    "Markets opened higher today after the central bank held interest rates steady.",
]


@dataclass(frozen=True)
class Fact:
    key: str
    value: int

    @property
    def prompt(self) -> str:
        return PROMPT.format(key=self.key)

    @property
    def answer(self) -> str:
        return ANSWER.format(value=self.value)


def make_facts(n: int, seed: int) -> list[Fact]:
    """n distinct random 4-letter keys with 3-digit values, deterministic in (n, seed)."""
    rng = random.Random(seed)
    keys: set[str] = set()
    facts = []
    while len(facts) < n:
        key = "".join(rng.choice(LETTERS) for _ in range(4))
        if key in keys:
            continue
        keys.add(key)
        facts.append(Fact(key, rng.randint(100, 999)))
    return facts


@dataclass
class Batch:
    """Right-padded token ids; answer_pos[i] are the positions whose logits must predict answer_ids[i]."""
    input_ids: "object"       # torch.LongTensor [B, T]
    attention_mask: "object"  # torch.LongTensor [B, T]
    rows: "object"            # torch.LongTensor [A]: batch row of each answer token
    pos: "object"             # torch.LongTensor [A]: position whose logits predict it (token index - 1)
    target: "object"          # torch.LongTensor [A]: the answer token
    example: "object"         # torch.LongTensor [A]: index of the example within the batch


def encode(tokenizer, facts: list[Fact]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per fact; prompt and answer are tokenized apart so the boundary is exact."""
    out = []
    for f in facts:
        p = tokenizer(f.prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(f.answer, add_special_tokens=False)["input_ids"]
        out.append((list(p), list(a)))
    return out


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    import torch

    T = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), T), dtype=torch.long)
    rows, pos, target, example = [], [], [], []
    for i, (p, a) in enumerate(pairs):
        seq = p + a
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        for j, tok in enumerate(a):
            rows.append(i)
            pos.append(len(p) + j - 1)
            target.append(tok)
            example.append(i)
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return Batch(ids, mask, t(rows), t(pos), t(target), t(example))


def answer_logits(model, batch: Batch):
    """Logits at the answer positions only [A, vocab]: the LM head runs on A rows, not on B*T."""
    dev = batch_device(model)
    hidden = model.get_decoder()(input_ids=batch.input_ids.to(dev),
                                 attention_mask=batch.attention_mask.to(dev)).last_hidden_state
    h = hidden[batch.rows.to(dev), batch.pos.to(dev)]
    return model.get_output_embeddings()(h).float()


@dataclass
class Score:
    n: int            # prompts scored
    correct: int      # exact matches
    nll: float        # mean negative log-likelihood per answer token (nats)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def evaluate(model, tokenizer, facts: list[Fact], *, batch_size: int = 64) -> Score:
    """Teacher-forced exact match and answer NLL of `model` on `facts` (one forward pass per batch)."""
    import torch

    pairs = encode(tokenizer, facts)
    pad = pad_id(tokenizer)
    correct, nll_sum, n_tok = 0, 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            b = collate(pairs[s:s + batch_size], pad)
            logits = answer_logits(model, b).cpu()
            ok = (logits.argmax(-1) == b.target).long()
            n_ex = int(b.example.max()) + 1
            wrong = torch.zeros(n_ex, dtype=torch.long).index_add_(0, b.example, 1 - ok)
            correct += int((wrong == 0).sum())
            nll_sum += float(torch.nn.functional.cross_entropy(logits, b.target, reduction="sum"))
            n_tok += len(b.target)
    model.train(was_training)
    return Score(len(pairs), correct, nll_sum / max(n_tok, 1))


def text_logprobs(model, tokenizer, texts=HELD_OUT_TEXT):
    """Log-probabilities [N_tokens, vocab] at every real (non-pad) position of `texts`, float32."""
    import torch

    pad = pad_id(tokenizer)
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    was_training = model.training
    model.eval()
    dev = batch_device(model)
    with torch.no_grad():
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float().cpu()
    model.train(was_training)
    return torch.log_softmax(logits[mask.bool()], dim=-1)


def mean_kl(ref_logprobs, logprobs) -> float:
    """Mean over positions of KL(ref || other), in nats."""
    p = ref_logprobs.exp()
    return float((p * (ref_logprobs - logprobs)).sum(-1).mean().clamp_min(0.0)) if len(p) else 0.0


def batch_device(model):
    """Where the model's parameters live (inputs follow them); CPU for a parameterless stand-in."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else "cpu"


def pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if t is not None:
            return int(t)
    return 0

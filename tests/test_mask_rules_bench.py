"""benchmarks/mask_rules.py: its candidate mask rules are valid dropout masks, and a rule reaches the converter,
the reader and the loader (else its quality figures would be the spec's under another name)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import mask_rules  # noqa: E402

from ddq_format import seeded_mask  # noqa: E402
from tests.tiny_models import make_pair  # noqa: E402

RULES = ("spec", "rounds1", "affine")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("cols,group,alpha", [(256, 128, 8), (100, 32, 4), (96, 64, 8), (40, 40, 8)])
def test_rule_keeps_distinct_columns_of_each_group(rule, cols, group, alpha):
    with mask_rules.mask_rule(rule):
        kept = seeded_mask.mask_columns(11, 50, cols, group, alpha)
    full, keep, tail, keep_tail = seeded_mask.group_layout(cols, group, alpha)
    assert kept.shape == (50, full * keep + keep_tail)
    for g in range(full + (keep_tail > 0)):
        span = kept[:, g * keep: g * keep + (keep if g < full else keep_tail)]
        assert ((span >= g * group) & (span < min(cols, (g + 1) * group))).all()
        assert all(len(set(r)) == len(r) for r in span)


def test_rules_differ_and_the_spec_is_untouched():
    spec = seeded_mask.mask_columns(3, 20, 256, 128, 8)
    with mask_rules.mask_rule("affine"):
        affine = seeded_mask.mask_columns(3, 20, 256, 128, 8)
    with mask_rules.mask_rule("rounds1"):
        one = seeded_mask.mask_columns(3, 20, 256, 128, 8)
    assert not np.array_equal(spec, affine) and not np.array_equal(spec, one)
    np.testing.assert_array_equal(seeded_mask.mask_columns(3, 20, 256, 128, 8), spec)  # restored after the block


@pytest.mark.parametrize("rule", RULES)
def test_rule_reaches_converter_reader_and_loader(tmp_path, rule):
    import transformers as tf
    base, ft = make_pair(tmp_path, "llama", steps=1)
    model = tf.AutoModelForCausalLM.from_pretrained(base)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    calib = tmp_path / "calib.txt"
    calib.write_text("one two three four five six seven eight nine ten")
    name = mask_rules.convert_applied(base, ft, tmp_path / "x.ddq", model, base_sd, rule=rule, alpha=8, bits=4,
                                      calib=calib, seed=0)
    assert name in base_sd


def test_check_fails_when_the_rule_did_not_reach_the_file(tmp_path):
    """A file converted with the spec's mask, checked as if converted under affine: the check refuses it."""
    import transformers as tf
    base, ft = make_pair(tmp_path, "llama", steps=1)
    model = tf.AutoModelForCausalLM.from_pretrained(base)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    calib = tmp_path / "calib.txt"
    calib.write_text("one two three four five six seven eight nine ten")
    out = tmp_path / "x.ddq"
    mask_rules.convert_applied(base, ft, out, model, base_sd, rule="spec", alpha=8, bits=4, calib=calib, seed=0)
    applied = {k: (v - base_sd[k]).numpy() for k, v in model.state_dict().items()}
    with pytest.raises(SystemExit, match="the rule did not reach"):
        mask_rules.check_masks(out, "affine", applied)

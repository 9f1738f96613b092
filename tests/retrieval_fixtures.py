"""A hand-made corpus and a tiny random-initialised BERT encoder: retrieval tests that need no model files.

The corpus has one passage per topic with little shared vocabulary, so the right passage for a query is
obvious to a reader; the tests still check exact scores against an independent computation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from r3rag.data.corpus import write_corpus
from r3rag.schema import Passage

PASSAGES = [
    Passage(
        "curie",
        "Marie Curie",
        "Marie Curie was a physicist and chemist who pioneered research on radioactivity.",
    ),
    Passage(
        "pierre",
        "Pierre Curie",
        "Pierre Curie was a French physicist, a pioneer in crystallography and magnetism.",
    ),
    Passage("paris", "Paris", "Paris is the capital and largest city of France, on the river Seine."),
    Passage("seine", "Seine", "The Seine is a river that flows through Paris into the English Channel."),
    Passage("radium", "Radium", "Radium is a radioactive chemical element discovered by the Curies in 1898."),
    Passage(
        "ada",
        "Ada Lovelace",
        "Ada Lovelace was an English mathematician who wrote the first computer program.",
    ),
    Passage(
        "engine",
        "Analytical Engine",
        "The Analytical Engine was a mechanical computer designed by Charles Babbage.",
    ),
    Passage(
        "babbage",
        "Charles Babbage",
        "Charles Babbage was an English mathematician and inventor of computers.",
    ),
    Passage(
        "running", "Running", "Running is a method of terrestrial locomotion; runners run fast over ground."
    ),
    Passage("nile", "Nile", "The Nile is the longest river in Africa, flowing north through Egypt."),
]


def write_hand_corpus(path: Path, passages: list[Passage] = PASSAGES) -> Path:
    write_corpus(path, passages)
    return path


def tiny_encoder_dir(directory: Path, seed: int = 0) -> Path:
    """A 1-layer, 32-dimensional BERT with a word vocabulary of the corpus, saved as a Hugging Face folder."""
    words = sorted({w.strip(".,;:()").lower() for p in PASSAGES for w in p.contents.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", *words, "query", "passage"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(directory, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def generated_passages(n: int, seed: int = 0, words_per_passage: int = 12) -> list[Passage]:
    """``n`` passages of words drawn (seeded) from the hand corpus, so the tiny encoder knows every word:
    enough rows for several chunks, IVF lists and an HNSW graph that is not the whole corpus."""
    import random

    rng = random.Random(seed)
    words = sorted({w.strip(".,;:()").lower() for p in PASSAGES for w in p.contents.split()} - {""})
    return [
        Passage(f"g{i}", rng.choice(words).title(), " ".join(rng.choices(words, k=words_per_passage)))
        for i in range(n)
    ]

"""A word-level tokenizer over the prompt grammar, with a fixed vocabulary.

    [a|the] COLOUR SHAPE (moving|going) [to the] DIRECTION

Prompts are lowercased and split on whitespace; '.', ',' and '!' are
dropped. A word outside the vocabulary becomes <unk> (encode reports which
words those were, and the encoder phase logs them); parse() is the strict
check, naming what is wrong with a prompt outside the grammar.
"""

from __future__ import annotations

import re
from typing import List, Tuple

from .data import COLOURS, DIRECTIONS, SHAPES, VERBS

PAD, UNK = "<pad>", "<unk>"
MAX_LEN = 8
VOCAB: Tuple[str, ...] = (PAD, UNK, "a", "the", *COLOURS, *SHAPES, *VERBS, "to", *DIRECTIONS)
INDEX = {w: i for i, w in enumerate(VOCAB)}
PAD_ID, UNK_ID = INDEX[PAD], INDEX[UNK]

GRAMMAR = (f"[a|the] COLOUR SHAPE ({'|'.join(VERBS)}) [to the] DIRECTION, with COLOUR one of "
           f"{', '.join(COLOURS)}; SHAPE one of {', '.join(SHAPES)}; DIRECTION one of {', '.join(DIRECTIONS)}")


def words(prompt: str) -> List[str]:
    return re.sub(r"[.,!]", " ", prompt.lower()).split()


def encode(prompt: str) -> Tuple[List[int], List[str]]:
    """Token ids padded to MAX_LEN, and the words that became <unk> (or
    were cut off past MAX_LEN words, shown as '...')."""
    ws = words(prompt)
    unknown = [w for w in ws if w not in INDEX]
    if len(ws) > MAX_LEN:
        unknown.append("... " + " ".join(ws[MAX_LEN:]))
        ws = ws[:MAX_LEN]
    ids = [INDEX.get(w, UNK_ID) for w in ws]
    return ids + [PAD_ID] * (MAX_LEN - len(ids)), unknown


def decode(ids: List[int]) -> str:
    return " ".join(VOCAB[i] for i in ids if i != PAD_ID)


def parse(prompt: str) -> Tuple[str, str, str]:
    """(colour, shape, direction) of a prompt in the grammar; ValueError
    naming the problem otherwise."""
    ws = words(prompt)
    unknown = [w for w in ws if w not in INDEX]
    if unknown:
        raise ValueError(f"prompt {prompt!r}: unknown word(s) {', '.join(map(repr, unknown))}; "
                         f"the grammar is {GRAMMAR}")
    rest = list(ws)
    if rest and rest[0] in ("a", "the"):
        rest.pop(0)
    ok = len(rest) in (4, 6) and rest[0] in COLOURS and rest[1] in SHAPES and rest[2] in VERBS \
        and rest[-1] in DIRECTIONS and (len(rest) == 4 or (rest[3:5] == ["to", "the"] and rest[-1] in ("left", "right")))
    if not ok:
        raise ValueError(f"prompt {prompt!r} is outside the grammar: {GRAMMAR}")
    return rest[0], rest[1], rest[-1]

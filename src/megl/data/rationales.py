"""Which stand-in rationale sentences name their class, how many may, and the share a dataset has.

`names_class(sentence, class_name, kind)` is the one rule: the generator (megl.data.standin) sorts
its sentences with it and the report (`class_name_share`, `class_name_report`) counts with it.
What "names the class" means per kind (docs/data.md § Rationales):

- objects (class = colour_shape): the sentence holds BOTH the class's colour word and its shape
  word (or the shape's plural). The colour alone, the shape alone, or a relational fact ("has five
  points", "the warm-coloured one") does not name it: each of those is shared by two classes.
- actions (class = verb[_object...]): the sentence holds a word of the class name other than the
  object noun (`ball`, `box`: four classes share each) and `on`, in any inflection (touches,
  touching, touched; held for holds; stood for stands; sat for sits). So `stands` names both
  stands_on_box and stands_beside_box, and `head` names heads_ball and holds_ball_above_head.
- digits (class = the digit's word): the sentence holds the word (`seven`) or the numeral (`7`).

Words are lower-cased runs of letters and digits; inflections are reduced by a small suffix rule
written here (no stemming library is needed for this closed vocabulary, and the rule must stay
the same as the generator's templates).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from megl.errors import MEGLError

OBJECT_WORDS_NOT_NAMING = frozenset({"ball", "box", "on"})  # actions: shared object nouns, "on"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IRREGULAR = {"held": "hold", "stood": "stand", "sat": "sit", "sitting": "sit", "besides": "beside"}
KINDS = ("objects", "actions", "digits")


def words(sentence: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", sentence.lower())


def stem(word: str) -> str:
    """touches -> touch, kicks -> kick, standing -> stand, held -> hold (the rationale vocabulary)."""
    word = word.lower()
    if word in IRREGULAR:
        return IRREGULAR[word]
    for suffix in ("ing", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def names_class(sentence: str, class_name: str, kind: str) -> bool:
    """True when `sentence` names the class `class_name` of stand-in `kind` (module docstring)."""
    toks = words(sentence)
    if kind == "objects":
        colour, shape = class_name.split("_")
        return colour in toks and any(t in (shape, shape + "s", shape + "es") for t in toks)
    if kind == "actions":
        keys = {stem(w) for w in class_name.split("_") if w not in OBJECT_WORDS_NOT_NAMING}
        return any(stem(t) in keys for t in toks)
    if kind == "digits":
        return class_name in toks or str(DIGIT_WORDS.index(class_name)) in toks
    raise MEGLError(f"names_class: kind must be one of {', '.join(KINDS)}, got {kind!r}")


def pick_sentences(rng: np.random.Generator, sentences: list[str], class_name: str, kind: str,
                   class_name_fraction: float) -> list[str]:
    """3-5 distinct sentences for one image; each names the class with probability
    `class_name_fraction` (a Binomial(k, fraction) count of naming sentences, then drawn without
    replacement from each group and shuffled). When a group has too few sentences the other fills
    in (the templates give at least 5 of each, tested)."""
    distinct = list(dict.fromkeys(sentences))
    named = [s for s in distinct if names_class(s, class_name, kind)]
    plain = [s for s in distinct if not names_class(s, class_name, kind)]
    k = int(rng.integers(3, 6))
    n_named = int(rng.binomial(k, class_name_fraction))
    n_named = max(min(n_named, len(named)), k - len(plain))
    chosen = ([named[j] for j in rng.permutation(len(named))[:n_named]]
              + [plain[j] for j in rng.permutation(len(plain))[:k - n_named]])
    return [chosen[j] for j in rng.permutation(len(chosen))]


def class_name_share(records: dict[str, dict], split: dict[str, list[str]], kind: str) -> dict[str, Any]:
    """Per split (and "all"): sentences, how many name their class, and the share, from
    exp_annotation-style records {id: {"ans": class name, "exp": [sentences]}}."""
    out: dict[str, Any] = {}
    parts = {**{p: split[p] for p in ("train", "val", "test") if p in split}, "all": list(records)}
    for part, ids in parts.items():
        flags = [names_class(s, records[i]["ans"], kind) for i in ids for s in records[i]["exp"]]
        out[part] = {"sentences": len(flags), "naming": int(sum(flags)),
                     "share": round(float(np.mean(flags)), 4) if flags else None}
    return out


def class_name_report(root: str | Path) -> dict[str, Any]:
    """`class_name_share` of a generated stand-in folder, counted from its files
    (exp_annotation.json; the kind and split from standin.json)."""
    root = Path(root)
    try:
        manifest = json.loads((root / "standin.json").read_text(encoding="utf-8"))
        records = json.loads((root / "exp_annotation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MEGLError(f"{root}: not a readable stand-in folder ({exc})") from exc
    return class_name_share(records, manifest["split"], manifest["kind"])


__all__ = ["names_class", "pick_sentences", "class_name_share", "class_name_report", "stem", "words"]

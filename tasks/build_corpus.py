"""Generate the small toolqa lookup corpus shipped as package data (seeded, so it is reproducible).

``python -m tasks.build_corpus`` rewrites ``tasks/data/toolqa_corpus.jsonl`` (one document per line:
``id``, ``title``, ``text``; what the ``search`` tool indexes) and ``tasks/data/toolqa_facts.json`` (the
same facts, structured, which the toolqa task generator uses to compute answers). The places are
fictional so a model cannot answer from memory: it has to look them up.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS_PATH = DATA_DIR / "toolqa_corpus.jsonl"
FACTS_PATH = DATA_DIR / "toolqa_facts.json"
SEED = 20240603
NUM_CITIES = 48

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "n", "r", "l", "s", "m", "k"]


def _name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


def build(seed: int = SEED, num_cities: int = NUM_CITIES) -> tuple[list[dict], list[dict]]:
    """Return ``(documents, facts)``; names are unique and no name contains another."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < num_cities + 8 + 12:
        n = _name(rng, rng.choice([2, 3]))
        if all(n.lower() not in m.lower() and m.lower() not in n.lower() for m in names):
            names.append(n)
    countries, rivers, cities = names[:8], names[8:20], names[20 : 20 + num_cities]
    facts, docs = [], []
    for i, city in enumerate(cities):
        fact = {
            "city": city,
            "country": rng.choice(countries),
            "founded": rng.randint(1100, 1950),
            "population": rng.randint(5, 900),
            "river": rng.choice(rivers),
        }
        facts.append(fact)
        text = (
            f"{city} is a city in {fact['country']}. {city} was founded in {fact['founded']}. "
            f"{city} has a population of {fact['population']} thousand people. "
            f"The river {fact['river']} flows through {city}."
        )
        docs.append({"id": f"city-{i:03d}", "title": city, "text": text})
    return docs, facts


def main() -> None:
    docs, facts = build()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with CORPUS_PATH.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    FACTS_PATH.write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(docs)} documents to {CORPUS_PATH} and facts to {FACTS_PATH}")


if __name__ == "__main__":
    main()

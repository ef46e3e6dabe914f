"""The `stories` corpus: short grammar-made stories with long-range cues (the shipped default).

Each line is one story. Its first sentence names a hero, their home, and a described object;
two to four unrelated sentences follow (he/she agreeing with the hero), some naming other
people with other objects; the last sentence names the hero, the object and its adjective, or
the home again. Predicting those words needs the first sentence, 29 to 51 words back (10th to
90th percentile), kept apart from the distractors in between: selective long-range memory,
which gates give an LSTM or GRU and a plain RNN, its gradient vanishing over that distance,
mostly lacks. The distance fits inside the default 70-token BPTT window, so a gradient can
connect cue and recall at all. `lmrnn probe recall` draws fresh stories with a set number of
middle sentences to measure recall against distance.

    python -m lmrnn.stories            # rewrites corpora/stories/{train,valid,test}.txt

Deterministic: the same seed always writes the same bytes.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

HEROES = {
    "she": ["mira", "anna", "lena", "tove", "ida", "rosa", "nell", "vera", "elsa", "cora", "maud", "iris"],
    "he": ["tomas", "erik", "paul", "ivo", "bram", "otto", "karl", "finn", "jonas", "hugo", "leif", "nils"],
}
TRADES = ["baker", "smith", "weaver", "miller", "potter", "fisher", "hunter", "tailor", "farmer", "mason", "sailor", "healer"]
PLACES = ["the north", "the hills", "the coast", "the valley", "the old town", "the marsh",
          "the high pass", "the river bend", "the pine wood", "the salt flats", "the island", "the red cliffs"]
ADJECTIVES = ["silver", "golden", "wooden", "broken", "painted", "heavy", "tiny", "ancient", "green", "burning"]
OBJECTS = ["lamp", "sword", "drum", "key", "cup", "ring", "map", "flute", "box", "mirror", "bell", "coat", "knife", "book"]
TERRAIN = ["forest", "desert", "meadow", "swamp", "mountains", "fields", "ruins", "snow"]
WEATHER = [("rain", "cold"), ("wind", "strong"), ("sun", "hot"), ("fog", "thick"), ("snow", "deep")]
ANIMALS = ["crow", "fox", "wolf", "goat", "owl", "horse", "cat", "bear"]
PLURALS = {"fox": "foxes", "wolf": "wolves"}
MOODS = ["quiet", "hungry", "restless", "tired", "curious"]
GOODS = ["bread", "salt", "rope", "apples", "cloth", "fish", "nails", "honey"]
DURATIONS = ["for three days", "all morning", "until dusk", "for a week", "without rest", "for many hours"]
SEASONS = ["spring", "summer", "autumn", "winter"]


def a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    return PLURALS.get(noun, noun + "s")


def opening(rng: random.Random, hero: dict) -> str:
    forms = [
        "{name} was {a_trade} from {place} who carried {a_thing} .",
        "long ago {name} the {trade} left {place} with {a_thing} .",
        "in {place} there lived {a_trade} called {name} , who owned {a_thing} .",
    ]
    return rng.choice(forms).format(**hero, a_trade=a(hero["trade"]), a_thing=a(f"{hero['adj']} {hero['obj']}"))


def filler(rng: random.Random, hero: dict) -> str:
    subject = hero["pron"]
    obj = "her" if subject == "she" else "him"
    weather, state = rng.choice(WEATHER)
    # distractors: other people with other described objects, so that the closing sentence
    # cannot be guessed from the most recent name or object, only from the hero's
    other_pron = rng.choice(["she", "he"])
    other = rng.choice([n for n in HEROES[other_pron] if n != hero["name"]])
    thing = a(f"{rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)}")
    forms = [
        f"{subject} met {other} , who showed {obj} {thing} .",
        f"{other} the {rng.choice(TRADES)} tried to sell {obj} {thing} .",
        f"near {rng.choice(PLACES)} {subject} saw {other} drop {thing} .",
        f"{subject} walked {rng.choice(DURATIONS)} through the {rng.choice(TERRAIN)} .",
        f"the {weather} was {state} and the {plural(rng.choice(ANIMALS))} were {rng.choice(MOODS)} .",
        f"{subject} met {a(rng.choice(TRADES))} who sold {rng.choice(GOODS)} .",
        f"{a(rng.choice(ANIMALS))} followed {obj} for a while .",
        f"at night {subject} slept near the {rng.choice(TERRAIN)} .",
        f"{subject} sang a song about the {rng.choice(SEASONS)} .",
        f"the people of the {rng.choice(TERRAIN)} gave {obj} {rng.choice(GOODS)} .",
        f"{subject} was {rng.choice(MOODS)} but kept going .",
    ]
    return rng.choice(forms)


def closing(rng: random.Random, hero: dict) -> str:
    forms = [
        "at last {name} came home to {place} with the {adj} {obj} .",
        "and so {name} kept the {adj} {obj} forever .",
        "{name} never lost the {adj} {obj} again .",
        "in the end {name} gave the {adj} {obj} to {other} from {place} .",
    ]
    return rng.choice(forms).format(**hero, other=a(rng.choice(TRADES)))


@dataclass
class Story:
    text: str
    answer: str  # the word that needs the cue: the hero's name again, or (agreement) their pronoun
    recall_at: int  # character offset of `answer` where it is to be predicted
    distance: int  # words from the cue (the hero's name in the opening) to `answer`


def _hero(rng: random.Random) -> dict:
    pron = rng.choice(["she", "he"])
    return {"pron": pron, "name": rng.choice(HEROES[pron]), "trade": rng.choice(TRADES),
            "place": rng.choice(PLACES), "adj": rng.choice(ADJECTIVES), "obj": rng.choice(OBJECTS)}


def story(rng: random.Random, fillers: int | None = None) -> Story:
    """One story with `fillers` middle sentences (default: 2 to 4, as in the corpus)."""
    hero = _hero(rng)
    middle = [filler(rng, hero) for _ in range(rng.randint(2, 4) if fillers is None else fillers)]
    text = " ".join([opening(rng, hero), *middle, closing(rng, hero)])
    words = text.split()
    # middle sentences never name the hero (distractors are other people), so the first and the
    # last occurrence of the name are the cue and the recall
    cue = words.index(hero["name"])
    recall = len(words) - 1 - words[::-1].index(hero["name"])
    return Story(text, hero["name"], text.rindex(f" {hero['name']} ") + 1, recall - cue)


def agreement(rng: random.Random, fillers: int) -> Story:
    """The opening, `fillers` weather sentences (no person in them), then a sentence that opens
    with the hero's pronoun. Nothing but the name, `distance` words back, tells he from she."""
    hero = _hero(rng)
    middle = []
    for _ in range(fillers):
        weather, state = rng.choice(WEATHER)
        middle.append(f"the {weather} was {state} and the {plural(rng.choice(ANIMALS))} were {rng.choice(MOODS)} .")
    head = " ".join([opening(rng, hero), *middle])
    text = f"{head} {hero['pron']} was {rng.choice(MOODS)} but kept going ."
    return Story(text, hero["pron"], len(head) + 1, len(head.split()) - head.split().index(hero["name"]))


DEFAULT_OUT = Path(__file__).resolve().parent.parent / "corpora" / "stories"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=2014)
    parser.add_argument("--stories", type=int, nargs=3, default=[1200, 80, 80], metavar=("TRAIN", "VALID", "TEST"))
    args = parser.parse_args()
    rng = random.Random(args.seed)  # the same stream as random.seed(seed): the corpus is unchanged
    for name, count in zip(("train", "valid", "test"), args.stories):
        lines = [story(rng).text for _ in range(count)]
        (args.out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

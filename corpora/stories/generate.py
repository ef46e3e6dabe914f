"""Generate the `stories` corpus: short grammar-made stories with long-range cues.

Each line is one story. Its first sentence names a hero, their home, and a described object;
two to four unrelated sentences follow (he/she agreeing with the hero), some naming other
people with other objects; the last sentence names the hero, the object and its adjective, or
the home again. Predicting those words needs the first sentence, 29 to 51 words back (10th to
90th percentile), kept apart from the distractors in between: selective long-range memory,
which gates give an LSTM or GRU and a plain RNN, its gradient vanishing over that distance,
mostly lacks. The distance fits inside the default 70-token BPTT window, so a gradient can
connect cue and recall at all.

    python corpora/stories/generate.py            # rewrites train.txt, valid.txt, test.txt here

Deterministic: the same seed always writes the same bytes.
"""

from __future__ import annotations

import argparse
import random
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


def opening(hero: dict) -> str:
    forms = [
        "{name} was {a_trade} from {place} who carried {a_thing} .",
        "long ago {name} the {trade} left {place} with {a_thing} .",
        "in {place} there lived {a_trade} called {name} , who owned {a_thing} .",
    ]
    return random.choice(forms).format(**hero, a_trade=a(hero["trade"]), a_thing=a(f"{hero['adj']} {hero['obj']}"))


def filler(hero: dict) -> str:
    subject = hero["pron"]
    obj = "her" if subject == "she" else "him"
    weather, state = random.choice(WEATHER)
    # distractors: other people with other described objects, so that the closing sentence
    # cannot be guessed from the most recent name or object, only from the hero's
    other_pron = random.choice(["she", "he"])
    other = random.choice([n for n in HEROES[other_pron] if n != hero["name"]])
    thing = a(f"{random.choice(ADJECTIVES)} {random.choice(OBJECTS)}")
    forms = [
        f"{subject} met {other} , who showed {obj} {thing} .",
        f"{other} the {random.choice(TRADES)} tried to sell {obj} {thing} .",
        f"near {random.choice(PLACES)} {subject} saw {other} drop {thing} .",
        f"{subject} walked {random.choice(DURATIONS)} through the {random.choice(TERRAIN)} .",
        f"the {weather} was {state} and the {plural(random.choice(ANIMALS))} were {random.choice(MOODS)} .",
        f"{subject} met {a(random.choice(TRADES))} who sold {random.choice(GOODS)} .",
        f"{a(random.choice(ANIMALS))} followed {obj} for a while .",
        f"at night {subject} slept near the {random.choice(TERRAIN)} .",
        f"{subject} sang a song about the {random.choice(SEASONS)} .",
        f"the people of the {random.choice(TERRAIN)} gave {obj} {random.choice(GOODS)} .",
        f"{subject} was {random.choice(MOODS)} but kept going .",
    ]
    return random.choice(forms)


def closing(hero: dict) -> str:
    forms = [
        "at last {name} came home to {place} with the {adj} {obj} .",
        "and so {name} kept the {adj} {obj} forever .",
        "{name} never lost the {adj} {obj} again .",
        "in the end {name} gave the {adj} {obj} to {other} from {place} .",
    ]
    return random.choice(forms).format(**hero, other=a(random.choice(TRADES)))


def story() -> str:
    pron = random.choice(["she", "he"])
    hero = {"pron": pron, "name": random.choice(HEROES[pron]), "trade": random.choice(TRADES),
            "place": random.choice(PLACES), "adj": random.choice(ADJECTIVES), "obj": random.choice(OBJECTS)}
    middle = [filler(hero) for _ in range(random.randint(2, 4))]
    return " ".join([opening(hero), *middle, closing(hero)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seed", type=int, default=2014)
    parser.add_argument("--stories", type=int, nargs=3, default=[1200, 80, 80], metavar=("TRAIN", "VALID", "TEST"))
    args = parser.parse_args()
    random.seed(args.seed)
    for name, count in zip(("train", "valid", "test"), args.stories):
        lines = [story() for _ in range(count)]
        (args.out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

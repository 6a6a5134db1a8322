"""The text retention set of the Gemma track: a few hundred text-only prompts (no image) that a 270M language
model answers — facts, completions, simple arithmetic — written here, in the base's own prompt form
(``Question: {question}\\nAnswer:``). The reference of every prompt is the base's own greedy answer, so the
set measures what SAFE changes, not what Gemma knows; where a prompt has a known right answer (``gold``),
the base and SAFE are also scored against it (McNemar's test on the paired scores).

:func:`text_prompts` is a pure function of its arguments (the same prompts on every machine).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

#: (question, accepted answers): general knowledge a small pretrained model often has.
FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What colour is the sky on a clear day?", ("blue",)),
    ("What colour is grass?", ("green",)),
    ("What colour is snow?", ("white",)),
    ("What colour is a banana?", ("yellow",)),
    ("What colour is coal?", ("black",)),
    ("What colour is a ripe tomato?", ("red",)),
    ("What colour is an orange?", ("orange",)),
    ("What colour do you get by mixing blue and yellow?", ("green",)),
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of England?", ("london",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of China?", ("beijing",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of Canada?", ("ottawa",)),
    ("What is the capital of Australia?", ("canberra",)),
    ("What is the capital of Greece?", ("athens",)),
    ("What is the capital of Portugal?", ("lisbon",)),
    ("What is the capital of Ireland?", ("dublin",)),
    ("What is the capital of Norway?", ("oslo",)),
    ("What is the capital of Sweden?", ("stockholm",)),
    ("What is the capital of Austria?", ("vienna",)),
    ("What is the capital of Poland?", ("warsaw",)),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many legs does a dog have?", ("4", "four")),
    ("How many legs does a bird have?", ("2", "two")),
    ("How many days are in a week?", ("7", "seven")),
    ("How many months are in a year?", ("12", "twelve")),
    ("How many hours are in a day?", ("24", "twenty")),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("How many sides does a triangle have?", ("3", "three")),
    ("How many sides does a square have?", ("4", "four")),
    ("How many continents are there?", ("7", "seven")),
    ("What is the largest planet in the solar system?", ("jupiter",)),
    ("Which planet is known as the red planet?", ("mars",)),
    ("What is the closest star to the Earth?", ("the sun", "sun")),
    ("What do bees make?", ("honey",)),
    ("What do cows drink?", ("water",)),
    ("What is frozen water called?", ("ice",)),
    ("What gas do plants take in from the air?", ("carbon dioxide", "co2")),
    ("What is the largest ocean on Earth?", ("pacific", "the pacific")),
    ("What is the longest river in Africa?", ("nile", "the nile")),
    ("Who wrote Romeo and Juliet?", ("william shakespeare", "shakespeare")),
    ("Who painted the Mona Lisa?", ("leonardo", "da vinci")),
    ("What language is spoken in Brazil?", ("portuguese",)),
    ("What language is spoken in Mexico?", ("spanish",)),
    ("What is the chemical symbol for gold?", ("au",)),
    ("What is the chemical symbol for water?", ("h2o",)),
    ("What is the boiling point of water in Celsius?", ("100",)),
    ("What animal says moo?", ("cow", "a cow", "the cow")),
    ("What animal says meow?", ("cat", "a cat", "the cat")),
    ("What animal says woof?", ("dog", "a dog", "the dog")),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the opposite of up?", ("down",)),
    ("What is the opposite of big?", ("small", "little")),
    ("What is the opposite of day?", ("night",)),
    ("What is the opposite of black?", ("white",)),
    ("What is the opposite of left?", ("right",)),
    ("What is the opposite of fast?", ("slow",)),
    ("What is the opposite of happy?", ("sad",)),
    ("What is the opposite of open?", ("closed", "close", "shut")),
    ("What is the plural of mouse?", ("mice",)),
    ("What is the plural of child?", ("children",)),
    ("What is the plural of foot?", ("feet",)),
    ("What is the plural of tooth?", ("teeth",)),
    ("What is the first letter of the alphabet?", ("a",)),
    ("What is the last letter of the alphabet?", ("z",)),
    ("What season comes after winter?", ("spring",)),
    ("What season comes after summer?", ("autumn", "fall")),
    ("What day comes after Monday?", ("tuesday",)),
    ("What day comes after Friday?", ("saturday",)),
    ("What month comes after January?", ("february",)),
    ("What month comes after June?", ("july",)),
    ("What is the freezing point of water in Celsius?", ("0", "zero")),
    ("What shape has three sides?", ("triangle", "a triangle")),
    ("What shape is a ball?", ("round", "sphere", "a sphere", "a ball")),
    ("What do you call a baby cat?", ("kitten", "a kitten")),
    ("What do you call a baby dog?", ("puppy", "a puppy")),
)

#: (text to complete, accepted continuations).
COMPLETIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("1, 2, 3, 4,", ("5",)),
    ("2, 4, 6, 8,", ("10",)),
    ("10, 20, 30, 40,", ("50",)),
    ("5, 10, 15, 20,", ("25",)),
    ("A, B, C, D,", ("e",)),
    ("Monday, Tuesday, Wednesday,", ("thursday",)),
    ("January, February, March,", ("april",)),
    ("one, two, three, four,", ("five",)),
    ("red, orange, yellow, green,", ("blue",)),
    ("The sun rises in the", ("east",)),
    ("The sun sets in the", ("west",)),
    ("Twinkle, twinkle, little", ("star",)),
    ("An apple a day keeps the", ("doctor",)),
    ("Actions speak louder than", ("words",)),
    ("The early bird catches the", ("worm",)),
    ("Better late than", ("never",)),
    ("Practice makes", ("perfect",)),
    ("Once upon a", ("time",)),
    ("Ladies and", ("gentlemen",)),
    ("Salt and", ("pepper",)),
    ("Knives and", ("forks",)),
    ("Bread and", ("butter",)),
    ("Thunder and", ("lightning",)),
    ("Rock, paper,", ("scissors",)),
    ("Ready, set,", ("go",)),
    ("North, south, east and", ("west",)),
    ("Spring, summer, autumn and", ("winter",)),
    ("Happy birthday to", ("you",)),
    ("The cat sat on the", ("mat",)),
    ("Water is made of hydrogen and", ("oxygen",)),
)

OPS = ("+", "-", "x")


@dataclass(frozen=True)
class TextPrompt:
    """One text-only prompt: ``id``, ``kind`` (fact / completion / arithmetic), the question, and the accepted
    answers when the prompt has a known right one (empty when not)."""

    id: str
    kind: str
    question: str
    gold: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The prompt the base reads (its own form, with no image): ``Question: ...\\nAnswer:``."""
        return f"Question: {self.question}\nAnswer:"


def _arithmetic(rng: random.Random, n: int) -> list[TextPrompt]:
    out, seen = [], set()
    while len(out) < n:
        op = OPS[len(out) % len(OPS)]
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if op == "-":
            a, b = max(a, b), min(a, b)
        if op == "x":
            a, b = rng.randint(2, 10), rng.randint(2, 10)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        word = {"+": "plus", "-": "minus", "x": "times"}[op]
        q = f"What is {a} {op if op != 'x' else '*'} {b}?" if len(out) % 2 else f"What is {a} {word} {b}?"
        out.append(TextPrompt(f"arith-{len(out):03d}", "arithmetic", q, (str(value),)))
    return out


def text_prompts(total: int = 300, seed: int = 0) -> list[TextPrompt]:
    """The text retention set: every fact and completion written above, then distinct additions, subtractions
    and multiplications of small numbers (drawn from ``seed``) up to ``total`` prompts. A ``total`` below the
    written ones takes a third of it from each kind (for tests)."""
    facts = [TextPrompt(f"fact-{i:03d}", "fact", q, g) for i, (q, g) in enumerate(FACTS)]
    comps = [TextPrompt(f"completion-{i:03d}", "completion", f"Complete: {t}", g)
             for i, (t, g) in enumerate(COMPLETIONS)]
    if total < len(facts) + len(comps) + 3:
        k = max(1, total // 3)
        facts, comps = facts[:k], comps[:k]
    return facts + comps + _arithmetic(random.Random(seed), max(0, total - len(facts) - len(comps)))


def is_correct(answer: str, gold: tuple[str, ...]) -> bool:
    """Whether ``answer`` starts with one of the accepted answers (case and surrounding punctuation ignored;
    "Paris." and "Paris, France" count for "paris", "12 apples" for "12", "120" not for "12")."""
    a = answer.strip().lower().lstrip("\"'* ")
    for g in gold:
        if a == g or (a.startswith(g) and not a[len(g)].isalnum()):
            return True
    return False


# The training side of text retention (Stage A's ``text_retention`` file): prompts of the same kinds and form as
# the set above, none of them in it (a test checks), so the set above measures retention on prompts Stage A never
# saw. No answers: the reference is the base's own greedy answer.
_TRAIN_CAPITALS = ("the Netherlands", "Belgium", "Denmark", "Finland", "Switzerland", "Turkey", "India", "Kenya",
                   "Argentina", "Peru", "Cuba", "Thailand", "Hungary", "Iceland", "Scotland", "Mexico", "Chile",
                   "South Korea", "Vietnam", "Morocco")
_TRAIN_COLOURS = ("a lemon", "a strawberry", "milk", "a carrot", "a cucumber", "the sea", "a polar bear", "a crow",
                  "chocolate", "a lime", "a cherry", "a pumpkin", "a fire engine", "a daffodil", "an eggplant")
_TRAIN_OPPOSITES = ("cold", "down", "small", "night", "white", "right", "slow", "sad", "closed", "tall", "old",
                    "wet", "hard", "light", "early", "empty", "loud", "rich", "young", "near")
_TRAIN_PLURALS = ("goose", "man", "woman", "person", "sheep", "leaf", "knife", "wolf", "box", "city")
_TRAIN_LEGS = ("cat", "horse", "ant", "chicken", "cow", "duck", "beetle", "octopus")
_TRAIN_DAYS = ("Tuesday", "Wednesday", "Thursday", "Saturday", "Sunday")
_TRAIN_MONTHS = ("February", "March", "April", "May", "July", "August", "September", "October", "November")
_TRAIN_BABIES = ("cow", "sheep", "horse", "duck", "goat", "frog")
_TRAIN_SOUNDS = ("a duck", "a sheep", "a pig", "a lion", "an owl", "a horse")
_TRAIN_COMPLETIONS = ("3, 6, 9, 12,", "1, 3, 5, 7,", "100, 200, 300,", "Z, Y, X, W,", "five, six, seven,",
                      "Thursday, Friday, Saturday,", "April, May, June,", "A stitch in time saves",
                      "When in Rome, do as the", "All that glitters is not", "Cats and", "Fish and",
                      "Peanut butter and", "Black and", "Up, down, left and", "Hide and", "Once in a blue",
                      "The quick brown fox jumps over the lazy", "Birds of a feather flock", "Look before you")


def training_prompts(arithmetic: int = 100, seed: int = 1) -> list[TextPrompt]:
    """Stage A's text retention prompts for the Gemma track: capitals, colours, opposites, plurals, legs, days,
    months, baby animals and animal sounds not asked in :func:`text_prompts`, other completions, and
    ``arithmetic`` sums, differences and products (drawn from ``seed``) none of which :func:`text_prompts` asks."""
    qs = ([f"What is the capital of {c}?" for c in _TRAIN_CAPITALS]
          + [f"What colour is {t}?" for t in _TRAIN_COLOURS]
          + [f"What is the opposite of {w}?" for w in _TRAIN_OPPOSITES]
          + [f"What is the plural of {w}?" for w in _TRAIN_PLURALS]
          + [f"How many legs does a {a} have?" for a in _TRAIN_LEGS]
          + [f"What day comes after {d}?" for d in _TRAIN_DAYS]
          + [f"What month comes after {m}?" for m in _TRAIN_MONTHS]
          + [f"What do you call a baby {a}?" for a in _TRAIN_BABIES]
          + [f"What sound does {a} make?" for a in _TRAIN_SOUNDS])
    out = [TextPrompt(f"train-fact-{i:03d}", "fact", q) for i, q in enumerate(qs)]
    out += [TextPrompt(f"train-completion-{i:03d}", "completion", f"Complete: {t}") for i, t in enumerate(_TRAIN_COMPLETIONS)]
    held_out = text_prompts()
    asked = {_sum_of(p.question) for p in held_out} - {None}
    pool = [(a, op, b) for op in OPS for a in range(1, 21) for b in range(1, 21)
            if (op != "-" or a >= b) and (op != "x" or (a <= 10 and b <= 10 and min(a, b) >= 2))]
    pool = [t for t in pool if t not in asked]  # not the same sum in either phrasing
    random.Random(seed).shuffle(pool)
    for i, (a, op, b) in enumerate(pool[:arithmetic]):
        word = {"+": "plus", "-": "minus", "x": "times"}[op]
        q = f"What is {a} {op if op != 'x' else '*'} {b}?" if i % 2 else f"What is {a} {word} {b}?"
        out.append(TextPrompt(f"train-arith-{i:03d}", "arithmetic", q))
    questions = {p.question for p in held_out}
    return [p for p in out if p.question not in questions]


def _sum_of(question: str) -> tuple[int, str, int] | None:
    """``(a, op, b)`` of an arithmetic question of :func:`_arithmetic` (either phrasing), else None."""
    import re

    m = re.fullmatch(r"What is (\d+) (plus|minus|times|\+|-|\*) (\d+)\?", question)
    if m is None:
        return None
    op = {"plus": "+", "minus": "-", "times": "x", "*": "x"}.get(m.group(2), m.group(2))
    return int(m.group(1)), op, int(m.group(3))

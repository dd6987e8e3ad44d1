"""The built-in preference task: arithmetic, facts and format pairs, gold by construction."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from hafrm.data.types import PreferencePair

SKILLS: tuple[str, ...] = ("arithmetic", "facts", "format")

# --------------------------------------------------------------------------- facts table
# One line per cluster of three facts. A wrong answer is drawn only from its own cluster and the
# whole cluster is one split group, so inside train and inside test every answer is chosen exactly
# as often as it is rejected (in expectation): a model that only reads the response learns nothing.
_FACT_LINES = {
    "capital": """
        France=Paris; Germany=Berlin; Italy=Rome
        Spain=Madrid; Portugal=Lisbon; Greece=Athens
        United Kingdom=London; Ireland=Dublin; Netherlands=Amsterdam
        Belgium=Brussels; Austria=Vienna; Switzerland=Bern
        Sweden=Stockholm; Norway=Oslo; Denmark=Copenhagen
        Finland=Helsinki; Poland=Warsaw; Hungary=Budapest
        Russia=Moscow; Ukraine=Kyiv; Czech Republic=Prague
        Japan=Tokyo; China=Beijing; South Korea=Seoul
        India=New Delhi; Pakistan=Islamabad; Bangladesh=Dhaka
        Thailand=Bangkok; Vietnam=Hanoi; Indonesia=Jakarta
        Turkey=Ankara; Iran=Tehran; Iraq=Baghdad
        Saudi Arabia=Riyadh; Afghanistan=Kabul; Malaysia=Kuala Lumpur
        Australia=Canberra; New Zealand=Wellington; Philippines=Manila
        Egypt=Cairo; Kenya=Nairobi; Nigeria=Abuja
        Morocco=Rabat; Ethiopia=Addis Ababa; Ghana=Accra
        United States=Washington; Canada=Ottawa; Mexico=Mexico City
        Brazil=Brasilia; Argentina=Buenos Aires; Chile=Santiago
        Peru=Lima; Colombia=Bogota; Cuba=Havana""",
    "continent": """
        France=Europe; Japan=Asia; Brazil=South America
        Germany=Europe; Egypt=Africa; Canada=North America
        Italy=Europe; India=Asia; Argentina=South America
        China=Asia; Kenya=Africa; Mexico=North America
        Spain=Europe; Nigeria=Africa; Peru=South America
        Thailand=Asia; Morocco=Africa; Cuba=North America
        Poland=Europe; Vietnam=Asia; Chile=South America
        Sweden=Europe; Ghana=Africa; United States=North America""",
    "currency": """
        Japan=yen; United Kingdom=pound; India=rupee
        China=yuan; Russia=ruble; Mexico=peso
        United States=dollar; Germany=euro; Switzerland=franc
        Turkey=lira; Thailand=baht; France=euro""",
    "language": """
        France=French; Germany=German; Japan=Japanese
        Italy=Italian; Russia=Russian; China=Chinese
        Spain=Spanish; Brazil=Portuguese; Greece=Greek
        Netherlands=Dutch; Sweden=Swedish; Turkey=Turkish
        Poland=Polish; Egypt=Arabic; South Korea=Korean""",
}
_ALIASES = {
    "Washington": ("Washington, D.C.", "Washington D.C.", "Washington DC"),
    "Kyiv": ("Kiev",),
    "Bern": ("Berne",),
    "Brasilia": ("Brasília",),
    "Bogota": ("Bogotá",),
    "New Delhi": ("Delhi",),
    "United States": ("USA", "U.S.", "U.S.A.", "United States of America", "America"),
    "United Kingdom": ("UK", "U.K.", "Britain", "Great Britain", "England"),
    "Netherlands": ("Holland",),
    "Czech Republic": ("Czechia",),
    "South Korea": ("Korea",),
    "pound": ("pound sterling", "sterling"),
    "yuan": ("renminbi", "RMB"),
    "ruble": ("rouble",),
    "Chinese": ("Mandarin",),
}
_WITH_THE = {"United States", "United Kingdom", "Netherlands", "Czech Republic", "Philippines"}

# Questions per relation: `{e}` is the entity asked about; the answer kind is in `_KIND`.
_FACT_QUESTIONS = {
    "capital": (
        "What is the capital of {e}?",
        "What is the capital city of {e}?",
        "Which city is the capital of {e}?",
        "Name the capital of {e}.",
    ),
    "capital_of": (
        "{E} is the capital of which country?",
        "Which country has {e} as its capital?",
        "Of which country is {e} the capital?",
    ),
    "continent": (
        "On which continent is {e}?",
        "Which continent is {e} in?",
        "{E} is on which continent?",
    ),
    "currency": (
        "What is the currency of {e}?",
        "Which currency is used in {e}?",
        "What money do people use in {e}?",
    ),
    "language": (
        "What language is mainly spoken in {e}?",
        "What is the main language of {e}?",
        "Which language do most people in {e} speak?",
    ),
}
# Full-sentence answers; `{v}` is the answer (right or wrong), `{e}` the entity.
_FACT_SENTENCES = {
    "capital": ("The capital of {e} is {v}.", "{V} is the capital of {e}.", "It is {v}."),
    "capital_of": ("{E} is the capital of {v}.", "It is {v}.", "That would be {v}."),
    "continent": ("{E} is in {v}.", "It is in {v}.", "{E} is on the continent of {v}."),
    "currency": ("The currency of {e} is the {v}.", "{E} uses the {v}.", "It is the {v}."),
    "language": ("The main language of {e} is {v}.", "People in {e} mostly speak {v}.", "It is {v}."),
}
_FACT_PREFIXES = ("", "Quick question: ", "Geography quiz: ", "Tell me: ")
# Each suffix fixes the answer style: None lets either style answer.
_FACT_SUFFIXES = (
    ("", None),
    (" Answer briefly.", None),
    (" Just the name, please.", "bare"),
    (" Reply in a full sentence.", "sentence"),
)


@dataclass(frozen=True)
class _Fact:
    relation: str  # a key of _FACT_QUESTIONS
    entity: str
    answer: str
    cluster: tuple[str, ...]  # answers of the cluster, this one included
    group: str


@cache
def _facts() -> tuple[_Fact, ...]:
    """Every fact of the table; `capital_of` is `capital` read backwards, in the same group."""
    facts = []
    for relation, text in _FACT_LINES.items():
        for line in text.strip().splitlines():
            rows = [tuple(cell.strip().split("=")) for cell in line.split(";")]
            group = f"{relation}:" + "/".join(entity for entity, _ in rows)
            answers = tuple(answer for _, answer in rows)
            countries = tuple(entity for entity, _ in rows)
            for entity, answer in rows:
                facts.append(_Fact(relation, entity, answer, answers, group))
                if relation == "capital":
                    facts.append(_Fact("capital_of", answer, entity, countries, group))
    return tuple(facts)


def _the(name: str) -> str:
    return f"the {name}" if name in _WITH_THE else name


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fact_text(template: str, entity: str, value: str) -> str:
    e, v = _the(entity), _the(value)
    return template.format(e=e, E=_upper_first(e), v=v, V=_upper_first(v))


def _build_fact(params: tuple, rng: random.Random) -> PreferencePair:
    fact, question, prefix, (suffix, style) = params
    prompt = prefix + _fact_text(question, fact.entity, "") + suffix
    wrong = rng.choice([a for a in fact.cluster if a != fact.answer])
    style = style or rng.choice(("bare", "sentence"))
    template = "{V}." if style == "bare" else rng.choice(_FACT_SENTENCES[fact.relation])
    spec = {"kind": "facts", "relation": fact.relation, "answer": fact.answer,
            "aliases": list(_ALIASES.get(fact.answer, ()))}
    return _pair(prompt, _fact_text(template, fact.entity, fact.answer),
                 _fact_text(template, fact.entity, wrong), "facts", fact.relation, fact.group, spec)


def _facts_pool() -> _Pool:
    params = [(f, q, p, s) for f in _facts() for q in _FACT_QUESTIONS[f.relation]
              for p in _FACT_PREFIXES for s in _FACT_SUFFIXES]
    return _Pool("facts", params, _build_fact)


@cache
def _kind_pattern(relation: str) -> tuple[re.Pattern[str], dict[str, str]]:
    """A regex that finds any answer of the relation's kind, and a map from surface form to it."""
    answers = {f.answer for f in _facts() if f.relation == relation}
    surface = {form.lower(): a for a in answers for form in (a, *_ALIASES.get(a, ()))}
    # Longest first, so "Mexico City" is one capital, not the country Mexico plus "City".
    forms = sorted(surface, key=len, reverse=True)
    pattern = r"(?<!\w)(" + "|".join(map(re.escape, forms)) + r")s?(?!\w)"
    return re.compile(pattern, re.IGNORECASE), surface


# ---------------------------------------------------------------------------- arithmetic
_OPS = {
    "add": ("+", lambda a, b: a + b, ("What is {a} + {b}?", "What is {a} plus {b}?",
                                      "Compute {a} + {b}.", "Add {a} and {b}.")),
    "subtract": ("-", lambda a, b: a - b, ("What is {a} - {b}?", "What is {a} minus {b}?",
                                           "Compute {a} - {b}.", "Subtract {b} from {a}.")),
    "multiply": ("x", lambda a, b: a * b, ("What is {a} times {b}?", "What is {a} x {b}?",
                                           "Compute {a} * {b}.", "Multiply {a} by {b}.")),
}
_ARITHMETIC_ANSWERS = ("{x}", "The answer is {x}.", "{a} {sym} {b} = {x}", "It is {x}.",
                       "{a} {sym} {b} is {x}.")


def _operands(op: str) -> list[tuple[int, int]]:
    """Two-digit sums and differences (never negative); one-digit by up-to-25 products."""
    if op == "add":
        return [(a, b) for a in range(2, 100) for b in range(2, 100)]
    if op == "subtract":
        return [(a, b) for a in range(11, 100) for b in range(2, a)]
    return [(a, b) for a in range(2, 26) for b in range(2, 26) if min(a, b) <= 9]


def _near_miss(op: str, a: int, b: int, answer: int, rng: random.Random) -> int:
    """A wrong answer a careless solver gives: a digit slip, or one group too many or too few.

    The sign is a coin flip so that the wrong answer is as often larger as smaller.
    """
    step = rng.choice((1, 10, min(a, b)) if op == "multiply" else (1, 2, 10))
    wrong = answer + rng.choice((-1, 1)) * step
    return wrong if wrong >= 0 else answer + step


def _build_arithmetic(params: tuple, rng: random.Random) -> PreferencePair:
    op, a, b, question = params
    sym, fn, _ = _OPS[op]
    answer = fn(a, b)
    wrong = _near_miss(op, a, b, answer, rng)
    template = rng.choice(_ARITHMETIC_ANSWERS)
    chosen, rejected = (template.format(a=a, b=b, sym=sym, x=x) for x in (answer, wrong))
    # The same problem under another wording, or with its operands swapped, stays in one group.
    key = (min(a, b), max(a, b)) if op != "subtract" else (a, b)
    group = f"arithmetic:{op}:{key[0]}:{key[1]}"
    spec = {"kind": "arithmetic", "answer": answer}
    return _pair(question.format(a=a, b=b), chosen, rejected, "arithmetic", op, group, spec)


def _arithmetic_pools() -> list[_Pool]:
    return [_Pool(op, [(op, a, b, q) for a, b in _operands(op) for q in _OPS[op][2]],
                  _build_arithmetic) for op in _OPS]


# -------------------------------------------------------------------------------- format
_TOPICS = (
    "the sea", "the moon", "the desert", "winter", "summer", "autumn", "spring", "coffee", "tea",
    "music", "the city", "a small town", "the night sky", "snow", "the weekend", "breakfast",
    "an old book", "the wind", "the morning", "the train", "my cat", "the park", "mountain air",
    "a rainy day", "the beach", "the kitchen", "chess", "my bicycle", "cooking", "jazz",
    "starlight", "a campfire", "a thunderstorm", "soup", "fresh bread", "the zoo",
    "the holiday season", "my dog", "history", "painting", "the ocean", "a sunset", "fresh fruit",
    "the subway", "football", "a warm bath", "the first snow", "a picnic",
)
_ADJECTIVES = (
    "calm", "bright", "quiet", "warm", "lovely", "gentle", "busy", "strange", "simple",
    "peaceful", "cozy", "friendly", "cold", "wild", "soft", "happy", "pleasant", "golden",
    "lively", "charming", "sleepy", "curious", "magical", "noisy",
)
_KEYWORDS = (
    "river", "garden", "bridge", "forest", "market", "castle", "lantern", "window", "hill",
    "harbor", "library", "candle", "meadow", "tower", "island", "village", "kettle", "mirror",
    "blanket", "ladder", "orchard", "valley", "station", "cottage", "fountain", "basket", "pillow",
    "wagon", "compass", "chimney",
)
_CASE_ASKS = ("Describe {t} in one sentence.", "Tell me what you think of {t}.",
              "Write one short line about {t}.", "Say something about {t}.",
              "Give me your view on {t}.")
_CASE_RULES = {
    "all_caps": ("Use only capital letters.", "Write in all caps.", "Reply in ALL CAPS.",
                 "Capital letters only, please."),
    "lowercase": ("Use only lowercase letters.", "Write in all lowercase.",
                  "Reply with no capital letters.", "Lowercase letters only, please."),
}
_CASE_SENTENCES = ("{T} is {a} and {b}.", "I think {t} is {a}.", "{T} always seems {a} to me.",
                   "Most people find {t} {a} and {b}.", "To me, {t} is {a} but {b}.")
_KEYWORD_ASKS = ('Write a sentence about {t} that uses the word "{w}".',
                 'Mention the word "{w}" in one sentence about {t}.',
                 'Write one line about {t}. Include the word "{w}".')
_KEYWORD_SENTENCES = ("{T} reminds me of the {w} near my home.",
                      "I thought about {t} while walking past the {w}.",
                      "{T} is best enjoyed near the {w}.", "We talked about {t} by the {w}.")
_COUNT_ASKS = ("Describe {t} in exactly {n} words.", "Using exactly {n} words, describe {t}.",
               "Write exactly {n} words about {t}.", "Tell me about {t} in exactly {n} words.")
_LIST_ASKS = (("List exactly {k} {c}.", None), ("Name {k} {c} as a numbered list.", "numbered"),
              ("Give a bulleted list of {k} {c}.", "bulleted"),
              ("Write a list of exactly {k} {c}, one per line.", None),
              ("List {k} {c}, one per line.", None))
_CATEGORIES = {
    "fruits": "apples bananas cherries grapes lemons mangoes pears plums",
    "vegetables": "carrots onions peas potatoes spinach broccoli cabbage leeks",
    "colors": "red blue green yellow purple orange pink brown",
    "farm animals": "cows pigs sheep goats horses chickens ducks donkeys",
    "musical instruments": "piano guitar violin drums flute trumpet cello harp",
    "sports": "tennis soccer golf hockey rugby cricket baseball swimming",
    "things in a kitchen": "spoons plates cups pots knives forks bowls kettles",
    "things at the beach": "sand shells towels waves crabs umbrellas seagulls buckets",
    "school supplies": "pencils erasers rulers notebooks crayons scissors folders markers",
    "flowers": "roses tulips daisies lilies orchids poppies sunflowers violets",
    "tools": "hammers saws drills wrenches pliers screwdrivers chisels shovels",
    "clothes": "shirts jackets scarves socks gloves hats boots sweaters",
    "birds": "robins sparrows eagles owls parrots crows pigeons swans",
    "drinks": "water milk juice tea coffee cocoa lemonade soda",
    "desserts": "cake pie cookies pudding brownies ice_cream muffins tarts",
    "jobs": "doctor teacher farmer pilot baker nurse chef plumber",
    "vehicles": "cars buses trains bikes trucks boats planes scooters",
    "shapes": "circle square triangle oval star heart diamond hexagon",
    "body parts": "arms legs hands feet eyes ears knees elbows",
    "insects": "ants bees beetles moths flies wasps crickets ladybugs",
    "sea animals": "whales dolphins sharks octopuses seals crabs jellyfish starfish",
    "camping gear": "tents lanterns sleeping_bags matches maps flashlights compasses backpacks",
    "hobbies": "reading painting hiking gardening knitting cooking chess fishing",
    "kinds of weather": "rain snow sunshine wind fog hail sleet thunder",
    "breakfast foods": "eggs toast cereal pancakes bacon oatmeal waffles yogurt",
    "things in an office": "desks chairs printers staplers pens folders lamps phones",
    "pets": "dogs cats rabbits hamsters parrots goldfish turtles mice",
    "trees": "oaks pines maples birches willows elms cedars palms",
    "board games": "chess checkers Monopoly Scrabble Clue Risk backgammon Go",
    "planets": "Mercury Venus Earth Mars Jupiter Saturn Uranus Neptune",
    "spices": "salt pepper cinnamon ginger nutmeg cumin paprika oregano",
    "rooms in a house": "kitchen bedroom bathroom attic cellar hallway garage study",
    "things in a garden": "hoses shovels seeds flowers fences benches ponds gnomes",
}
# Sizes of the two responses of a word-count or list pair: `lo` and `lo + 1`, either one chosen.
# The edge sizes can only be chosen one way, so they get half weight: then the pair of sizes says
# nothing about which response is the right one.
_ADJECTIVE_COUNTS = range(2, 6)
_LIST_SIZES = range(2, 6)


def _edge_half(value: int, sizes: range) -> float:
    return 0.5 if value in (sizes[0], sizes[-1]) else 1.0


def _other_size(size: int, sizes: range, rng: random.Random) -> int:
    if size == sizes[0]:
        return size + 1
    if size == sizes[-1]:
        return size - 1
    return size + rng.choice((-1, 1))


def _build_case(params: tuple, rng: random.Random) -> PreferencePair:
    """All caps vs one word left lower case, or all lower case vs one word in capitals.

    The odd word is flipped to the *other* subtype's case, so every word form appears as often in
    chosen as in rejected responses across the two subtypes.
    """
    kind, topic, ask, rule = params
    a, b = rng.sample(_ADJECTIVES, 2)
    sentence = rng.choice(_CASE_SENTENCES).format(t=topic, T=_upper_first(topic), a=a, b=b)
    good, flip = (str.upper, str.lower) if kind == "all_caps" else (str.lower, str.upper)
    words = good(sentence).split(" ")
    i = rng.choice([j for j, w in enumerate(words) if sum(c.isalpha() for c in w) >= 3])
    rejected = " ".join(words[:i] + [flip(words[i])] + words[i + 1:])
    prompt = f"{ask.format(t=topic)} {rule}"
    return _pair(prompt, " ".join(words), rejected, "format", kind, f"{kind}:{topic}",
                 {"kind": kind})


def _build_keyword(params: tuple, rng: random.Random) -> PreferencePair:
    """The keyword vs a same-slot substitute; both are drawn from one pool, so they balance."""
    topic, word, ask = params
    other = rng.choice([w for w in _KEYWORDS if w != word])
    template = rng.choice(_KEYWORD_SENTENCES)
    chosen, rejected = (template.format(t=topic, T=_upper_first(topic), w=w) for w in (word, other))
    return _pair(ask.format(t=topic, w=word), chosen, rejected, "format", "keyword",
                 f"keyword:{topic}:{word}", {"kind": "keyword", "word": word})


def _adjective_list(words: list[str]) -> str:
    return " and ".join(words) if len(words) == 2 else ", ".join(words[:-1]) + ", and " + words[-1]


def _build_word_count(params: tuple, rng: random.Random) -> PreferencePair:
    """`<Topic> is a, b, and c.` with one adjective more or fewer than asked for."""
    topic, ask, m = params
    other = _other_size(m, _ADJECTIVE_COUNTS, rng)
    longer = rng.sample(_ADJECTIVES, max(m, other))
    shorter = longer[:]
    del shorter[rng.randrange(len(shorter))]
    chosen, rejected = (longer, shorter) if m > other else (shorter, longer)
    chosen_text, rejected_text = (f"{_upper_first(topic)} is {_adjective_list(adjs)}."
                                  for adjs in (chosen, rejected))
    n = len(chosen_text.split())
    return _pair(ask.format(t=topic, n=n), chosen_text, rejected_text, "format", "word_count",
                 f"word_count:{topic}:{n}", {"kind": "word_count", "n": n})


def _build_list(params: tuple, rng: random.Random) -> PreferencePair:
    """A list of exactly k items vs the same list with one item more or fewer."""
    category, (ask, style), k = params
    other = _other_size(k, _LIST_SIZES, rng)
    items = [w.replace("_", " ") for w in _CATEGORIES[category].split()]
    longer = [_upper_first(w) for w in rng.sample(items, max(k, other))]
    shorter = longer[:]
    del shorter[rng.randrange(len(shorter))]
    style = style or rng.choice(("numbered", "bulleted"))
    chosen, rejected = (_render_list(lst, style) for lst in
                        ((longer, shorter) if k > other else (shorter, longer)))
    return _pair(ask.format(k=k, c=category), chosen, rejected, "format", "list_items",
                 f"list_items:{category}:{k}", {"kind": "list_items", "k": k})


def _render_list(items: list[str], style: str) -> str:
    if style == "numbered":
        return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))
    return "\n".join(f"- {item}" for item in items)


def _format_pools() -> list[_Pool]:
    case = [_Pool(kind, [(kind, t, a, r) for t in _TOPICS for a in _CASE_ASKS for r in rules],
                  _build_case) for kind, rules in _CASE_RULES.items()]
    keyword = _Pool("keyword", [(t, w, a) for t in _TOPICS for w in _KEYWORDS
                                for a in _KEYWORD_ASKS], _build_keyword)
    count_params = [(t, a, m) for t in _TOPICS for a in _COUNT_ASKS for m in _ADJECTIVE_COUNTS]
    count = _Pool("word_count", count_params, _build_word_count,
                  [_edge_half(m, _ADJECTIVE_COUNTS) for *_, m in count_params])
    list_params = [(c, a, k) for c in _CATEGORIES for a in _LIST_ASKS for k in _LIST_SIZES]
    lists = _Pool("list_items", list_params, _build_list,
                  [_edge_half(k, _LIST_SIZES) for *_, k in list_params])
    return [*case, keyword, count, lists]


# ---------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class _Pool:
    """Every distinct prompt of one subtype, as parameters, and how to build a pair from one."""

    name: str
    params: list[tuple]
    build: Callable[[tuple, random.Random], PreferencePair]
    weights: list[float] | None = None

    def sample(self, k: int, rng: random.Random) -> list[tuple]:
        """k distinct parameter sets, weighted without replacement (Efraimidis-Spirakis keys)."""
        weights = self.weights or [1.0] * len(self.params)
        keys = [rng.random() ** (1.0 / w) for w in weights]
        top = sorted(range(len(keys)), key=keys.__getitem__, reverse=True)[:k]
        return [self.params[i] for i in top]


_POOLS: dict[str, Callable[[], list[_Pool]]] = {
    "arithmetic": _arithmetic_pools,
    "facts": lambda: [_facts_pool()],
    "format": _format_pools,
}


def _pair(prompt: str, chosen: str, rejected: str, skill: str, subtype: str, group: str,
          spec: dict[str, Any]) -> PreferencePair:
    meta = {"skill": skill, "subtype": subtype, "group": group, "spec": spec}
    return PreferencePair(prompt=[{"role": "user", "content": prompt}], chosen=chosen,
                          rejected=rejected, source="builtin", meta=meta)


def _shares(n: int, k: int) -> list[int]:
    """n split round-robin over k buckets: the first n % k buckets get one more."""
    return [n // k + (i < n % k) for i in range(k)]


def _round_robin(lists: list[list[PreferencePair]]) -> list[PreferencePair]:
    n = sum(map(len, lists))
    iters = [iter(lst) for lst in lists]
    return [next(iters[i % len(iters)]) for i in range(n)]


def _generate_skill(skill: str, n: int, rng: random.Random) -> list[PreferencePair]:
    pools = _POOLS[skill]()
    per_pool = []
    for pool, share in zip(pools, _shares(n, len(pools)), strict=True):
        if share > len(pool.params):
            raise ValueError(
                f"skill {skill!r} subtype {pool.name!r} has only {len(pool.params)} unique "
                f"prompts but {share} were asked for; lower n (the subtypes share a skill's "
                f"pairs equally)"
            )
        per_pool.append([pool.build(p, rng) for p in pool.sample(share, rng)])
    return _round_robin(per_pool)


def generate_pairs(n: int, seed: int = 0,
                   skills: Sequence[str] | None = None) -> list[PreferencePair]:
    """n built-in pairs, the skills in equal shares and interleaved round-robin.

    Deterministic for a seed. Prompts are unique. Every pair's `meta` holds the `skill`, its
    `subtype`, the split `group` and the `spec` that `verify` judges responses against.
    """
    skills = tuple(SKILLS if skills is None else skills)
    unknown = [s for s in skills if s not in SKILLS]
    if unknown or not skills or len(set(skills)) != len(skills):
        raise ValueError(f"skills must be distinct names from {', '.join(SKILLS)}; got {skills}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    per_skill = [_generate_skill(s, k, rng) for s, k in zip(skills, _shares(n, len(skills)),
                                                            strict=True)]
    pairs = _round_robin(per_skill)
    if len({p.prompt[0]["content"] for p in pairs}) != len(pairs):
        raise AssertionError("built-in templates produced a duplicate prompt")
    return pairs


def split_pairs(pairs: Sequence[PreferencePair], test_fraction: float = 0.2,
                seed: int = 0) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, test) by a stable hash of each pair's group, so no group is on both sides.

    The fraction holds over groups, not pairs: with few groups (facts has 33) the share of pairs
    in test varies around it.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    train, test = [], []
    for pair in pairs:
        digest = hashlib.sha256(f"{seed}:{pair.meta['group']}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        (test if u < test_fraction else train).append(pair)
    return train, test


# ------------------------------------------------------------------------------ verifier
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_LIST_LINE = re.compile(r"^\s*(?:[-*]|\d+[.)])\s+\S", re.MULTILINE)


def _words(response: str) -> list[str]:
    """Whitespace-separated tokens that contain a letter or a digit (so "-" or "—" is no word)."""
    return [w for w in response.split() if any(c.isalnum() for c in w)]


def _verify_arithmetic(spec: dict[str, Any], response: str) -> bool:
    numbers = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", response))
    return bool(numbers) and float(numbers[-1]) == spec["answer"]


def _verify_facts(spec: dict[str, Any], response: str) -> bool:
    pattern, surface = _kind_pattern(spec["relation"])
    surface = surface | {f.lower(): spec["answer"] for f in (spec["answer"], *spec["aliases"])}
    found = {surface.get(m.group(1).lower()) for m in pattern.finditer(response)}
    return found == {spec["answer"]}


def _verify_case(response: str, want: Callable[[str], str]) -> bool:
    words = [w for w in response.split() if any(c.isalpha() for c in w)]
    return bool(words) and all(want(w) == w for w in words)


_VERIFIERS: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "arithmetic": _verify_arithmetic,
    "facts": _verify_facts,
    "all_caps": lambda spec, r: _verify_case(r, str.upper),
    "lowercase": lambda spec, r: _verify_case(r, str.lower),
    "keyword": lambda spec, r: re.search(rf"(?<!\w){re.escape(spec['word'])}(?!\w)", r,
                                         re.IGNORECASE) is not None,
    "word_count": lambda spec, r: len(_words(r)) == spec["n"],
    "list_items": lambda spec, r: len(_LIST_LINE.findall(r)) == spec["k"],
}


def verify(spec: dict[str, Any], response: str) -> bool:
    """Whether a free-form response meets a pair's spec (gold, independent of any model).

    - arithmetic: the last number in the response equals the answer ("47 + 38 = 85" passes).
    - facts: the answer or an alias appears (case-insensitive, whole words, a plural "s" allowed)
      and no other answer of the same kind from the table does.
    - all_caps / lowercase: at least one word has letters, and every such word is in that case.
    - keyword: the word appears as a whole word, any case.
    - word_count: exactly n words, a word being a whitespace-separated token with a letter or
      digit in it.
    - list_items: exactly k lines start with "- ", "* ", "N." or "N)".
    """
    verifier = _VERIFIERS.get(spec.get("kind"))
    if verifier is None:
        raise ValueError(f"unknown spec kind {spec.get('kind')!r}; expected one of "
                         f"{', '.join(_VERIFIERS)}")
    return verifier(spec, response)

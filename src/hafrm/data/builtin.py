"""The built-in preference task: arithmetic, facts and format pairs, gold by construction."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

from hafrm.data.types import PreferencePair

SKILLS: tuple[str, ...] = ("arithmetic", "facts", "format")

# Pairs are made in mirror couples: two pairs of one split group, each one's rejected answer the
# other's chosen answer, in the same template (e.g. "France? Paris > Berlin" beside "Germany?
# Berlin > Paris"). Then whatever a scorer that sees only the responses prefers (the longer one,
# some word, uniform case), it is right on exactly one pair of each couple: no surface cue, on
# every train/test split, by construction. The wrong answer stays a near miss in the same format.


@dataclass(frozen=True)
class _Pool:
    """Every mirror couple of one subtype, as parameters, and how to build its two pairs."""

    name: str
    params: list[Any]  # one named record per couple (_FactCouple, _ArithmeticCouple, ...)
    build: Callable[[Any, random.Random], list[PreferencePair]]


def _pair(prompt: str, chosen: str, rejected: str, **meta: Any) -> PreferencePair:
    """A built-in pair; `meta` is skill, subset (skill.subtype: "arithmetic.add"...), group and spec."""
    message = {"role": "user", "content": prompt}
    meta["subset"] = f"{meta['skill']}.{meta['subset']}"
    return PreferencePair([message], chosen, rejected, source="builtin", meta=meta)


def _split(text: str, sep: str = "|") -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(sep))


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


# ----------------------------------------------------------------------------------------- facts
# One line per cluster of three facts; a cluster is one split group and wrong answers come from
# inside it. (Split by single country, a held-out answer such as "Paris" would appear in train
# only as a wrong answer, teaching a response-only model to reject it.)
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
# `{e}` is the entity asked about, `{v}` the value (right or wrong); `{E}`, `{V}` open a sentence.
# `capital_of` is the capital table read backwards: the entity is the city.
_FACT_QUESTIONS = {
    "capital": _split(
        """What is the capital of {e}? | What is the capital city of {e}? |
        Which city is the capital of {e}? | Name the capital of {e}."""
    ),
    "capital_of": _split(
        """{E} is the capital of which country? | Which country has {e} as its capital? |
        Of which country is {e} the capital?"""
    ),
    "continent": _split("On which continent is {e}? | Which continent is {e} in? | {E} is on which continent?"),
    "currency": _split(
        """What is the currency of {e}? | Which currency is used in {e}? |
        What money do people use in {e}?"""
    ),
    "language": _split(
        """What language is mainly spoken in {e}? | What is the main language of {e}? |
        Which language do most people in {e} speak?"""
    ),
}
_FACT_SENTENCES = {
    "capital": ("The capital of {e} is {v}.", "{V} is the capital of {e}.", "It is {v}."),
    "capital_of": ("{E} is the capital of {v}.", "It is {v}.", "That would be {v}."),
    "continent": ("{E} is in {v}.", "It is in {v}.", "{E} is on the continent of {v}."),
    "currency": ("The currency of {e} is the {v}.", "{E} uses the {v}.", "It is the {v}."),
    "language": ("The main language of {e} is {v}.", "People in {e} speak {v}.", "It is {v}."),
}
_FACT_PREFIXES = ("", "Quick question: ", "Geography quiz: ", "Tell me: ")
_FACT_SUFFIXES = (  # (suffix, the answer style it asks for; None: either)
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
    group: str


@cache
def _fact_clusters() -> tuple[tuple[_Fact, ...], ...]:
    """The table as clusters of three facts; a capital cluster read backwards is one too."""
    clusters = []
    for relation, text in _FACT_LINES.items():
        for line in text.strip().splitlines():
            rows = [_split(cell, "=") for cell in line.split(";")]
            group = f"{relation}:" + "/".join(entity for entity, _ in rows)
            clusters.append(tuple(_Fact(relation, e, a, group) for e, a in rows))
            if relation == "capital":  # one group: "capital of France?" gives away "Paris is ...?"
                clusters.append(tuple(_Fact("capital_of", a, e, group) for e, a in rows))
    return tuple(clusters)


def _fact_text(template: str, entity: str, value: str = "") -> str:
    e, v = (f"the {x}" if x in _WITH_THE else x for x in (entity, value))
    return template.format(e=e, E=_upper_first(e), v=v, V=_upper_first(v))


class _FactCouple(NamedTuple):
    fact: _Fact
    prefix: str
    mate: _Fact  # the fact whose answer is `fact`'s wrong one, and the other way round
    mate_prefix: str
    question: str
    suffix: tuple[str, str | None]  # an entry of _FACT_SUFFIXES


def _fact_couples() -> list[_FactCouple]:
    """Every prompt's couple, each prompt used once.

    In a cluster (x, y, z), for one question and suffix, the prompts under prefixes p and q are
    matched (x p, y p), (z p, x q), (y q, z q): each fact is wrong-answered by each mate once.
    """
    couples = []
    for x, y, z in _fact_clusters():
        for question in _FACT_QUESTIONS[x.relation]:
            for suffix in _FACT_SUFFIXES:
                for p, q in zip(_FACT_PREFIXES[::2], _FACT_PREFIXES[1::2], strict=True):
                    couples += [
                        _FactCouple(x, p, y, p, question, suffix),
                        _FactCouple(z, p, x, q, question, suffix),
                        _FactCouple(y, q, z, q, question, suffix),
                    ]
    return couples


def _build_facts(couple: _FactCouple, rng: random.Random) -> list[PreferencePair]:
    """x's answer vs y's, and y's answer vs x's, in one answer template."""
    x, x_prefix, y, y_prefix, question = couple.fact, couple.prefix, couple.mate, couple.mate_prefix, couple.question
    suffix, style = couple.suffix
    style = style or rng.choice(("bare", "sentence"))
    template = "{V}." if style == "bare" else rng.choice(_FACT_SENTENCES[x.relation])
    return [
        _pair(
            prefix + _fact_text(question, fact.entity) + suffix,
            _fact_text(template, fact.entity, fact.answer),
            _fact_text(template, fact.entity, wrong),
            skill="facts",
            subset=fact.relation,
            group=fact.group,
            spec={
                "kind": "facts",
                "relation": fact.relation,
                "answer": fact.answer,
                "aliases": list(_ALIASES.get(fact.answer, ())),
            },
        )
        for fact, prefix, wrong in ((x, x_prefix, y.answer), (y, y_prefix, x.answer))
    ]


@cache
def _kind_pattern(relation: str) -> tuple[re.Pattern[str], dict[str, str]]:
    """A regex finding any answer of the relation's kind, and a map from surface form to answer."""
    answers = {f.answer for c in _fact_clusters() for f in c if f.relation == relation}
    surface = {form.lower(): a for a in answers for form in (a, *_ALIASES.get(a, ()))}
    # Longest first, so "Mexico City" is one capital and "Great Britain" one country.
    forms = sorted(surface, key=len, reverse=True)
    pattern = r"(?<!\w)(" + "|".join(map(re.escape, forms)) + r")s?(?!\w)"
    return re.compile(pattern, re.IGNORECASE), surface


# ------------------------------------------------------------------------------------ arithmetic
_OPS = {  # op: (symbol in answers, function, questions)
    "add": (
        "+",
        lambda a, b: a + b,
        _split("What is {a} + {b}? | What is {a} plus {b}? | Compute {a} + {b}. | Add {a} and {b}."),
    ),
    "subtract": (
        "-",
        lambda a, b: a - b,
        _split(
            """What is {a} - {b}? | What is {a} minus {b}? | Compute {a} - {b}. |
            Subtract {b} from {a}."""
        ),
    ),
    "multiply": (
        "x",
        lambda a, b: a * b,
        _split(
            """What is {a} times {b}? | What is {a} x {b}? | Compute {a} * {b}. |
            Multiply {a} by {b}."""
        ),
    ),
}
_ARITHMETIC_ANSWERS = _split("{x} | The answer is {x}. | {a} {s} {b} = {x} | It is {x}.")


def _steps(start: int, stop: int, d: int) -> Iterator[tuple[int, int]]:
    """Disjoint (v, v + d) in [start, stop): in blocks of 2d, the first half meets the second."""
    for v in range(start, stop - d):
        if (v - start) // d % 2 == 0:
            yield v, v + d


def _problem_couples(op: str) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """Two problems whose answers differ by a slip, so each is the other's near-miss answer.

    Small numbers on purpose: sums and differences of operands up to 30 move one operand by 1 or
    2 (the answer is off by 1 or 2); products from the times tables (one-digit a, b < 13) move b
    by one, so the answer is one group of a off. Small enough that the embedded model's zero-shot
    log-probs already lean to the right answer, so a reward head can learn to verify them within a
    CPU budget (docs/results.md, "What held the reward head back").
    """
    if op == "multiply":
        for a in range(2, 10):
            for b, b2 in _steps(a + 1, 13, 1):
                yield (a, b), (a, b2)
        return
    for fixed in range(2, 21):
        d = (1, 2)[fixed % 2]
        for v, v2 in _steps(fixed + 1, 31, d):
            yield ((fixed, v), (fixed, v2)) if op == "add" else ((v, fixed), (v2, fixed))


class _ArithmeticCouple(NamedTuple):
    op: str  # a key of _OPS
    problem: tuple[int, int]  # operands
    mate: tuple[int, int]  # the problem whose answer is `problem`'s near miss, and the other way round
    question: str
    swapped: bool  # the operands asked the other way round


def _arithmetic_couples(op: str) -> list[_ArithmeticCouple]:
    """Every couple of `op`; sums and products are also asked with their operands the other way
    round, in the same split group."""
    orders = (False, True) if op != "subtract" else (False,)
    return [
        _ArithmeticCouple(op, p1, p2, question, swap)
        for p1, p2 in _problem_couples(op)
        for question in _OPS[op][2]
        for swap in orders
    ]


def _build_arithmetic(couple: _ArithmeticCouple, rng: random.Random) -> list[PreferencePair]:
    op, p1, p2, question, swap = couple.op, couple.problem, couple.mate, couple.question, couple.swapped
    symbol, fn, _ = _OPS[op]
    template = rng.choice(_ARITHMETIC_ANSWERS)
    group = f"arithmetic:{op}:{p1[0]}:{p1[1]}/{p2[0]}:{p2[1]}"
    pairs = []
    for (a, b), other in ((p1, p2), (p2, p1)):
        answer, wrong = fn(a, b), fn(*other)
        a, b = (b, a) if swap else (a, b)
        chosen, rejected = (template.format(a=a, b=b, s=symbol, x=x) for x in (answer, wrong))
        spec = {"kind": "arithmetic", "answer": answer}
        pairs.append(
            _pair(
                question.format(a=a, b=b),
                chosen,
                rejected,
                skill="arithmetic",
                subset=op,
                group=group,
                spec=spec,
            )
        )
    return pairs


# ---------------------------------------------------------------------------------------- format
_TOPICS = _split(
    """the sea | the moon | the desert | winter | summer | autumn | spring | coffee | tea | music |
    the city | a small town | the night sky | snow | the weekend | breakfast | an old book |
    the wind | the morning | the train | my cat | the park | mountain air | a rainy day |
    the beach | the kitchen | chess | my bicycle | cooking | jazz | starlight | a campfire |
    a thunderstorm | soup | fresh bread | the zoo | the holiday season | my dog | history |
    painting | the ocean | a sunset | fresh fruit | the subway | football | a warm bath |
    the first snow | a picnic"""
)
_ADJECTIVES = _split(
    """calm bright quiet warm lovely gentle busy strange simple peaceful cozy friendly cold wild
    soft happy pleasant golden lively charming sleepy curious magical noisy""",
    None,
)
# 32 keywords, none in a topic or template: word i is matched with word i XOR m (a perfect
# matching for any m in 1..31), m varying with the prompt.
_KEYWORDS = _split(
    """river garden bridge forest market castle lantern window hill harbor library candle meadow
    tower island village kettle mirror blanket ladder orchard valley station cottage fountain
    basket pillow wagon compass chimney lighthouse barn""",
    None,
)
_CASE_ASKS = _split(
    """Describe {t} in one sentence. | Tell me what you think of {t}. |
    Write one short line about {t}. | Say something about {t}. | Give me your view on {t}."""
)
# (kind, case of the sentence): four rules, then the same four with one word in the other case.
_CASE_RULES = {
    ("all_caps", "upper"): _split(
        """Use only capital letters. | Write in all caps. | Reply in ALL CAPS. |
        Capital letters only, please."""
    ),
    ("lowercase", "lower"): _split(
        """Use only lowercase letters. | Write in all lowercase. | Reply with no capital letters. |
        Lowercase letters only, please."""
    ),
    ("case_except", "upper"): _split(
        """Use only capital letters, but write "{w}" in lowercase. |
        Write in all caps, except the word "{w}" in lowercase. |
        Reply in ALL CAPS apart from "{w}", which stays lowercase. |
        Capital letters only, please, but keep "{w}" lowercase."""
    ),
    ("case_except", "lower"): _split(
        """Use only lowercase letters, but write "{w}" in capitals. |
        Write in all lowercase, except the word "{w}" in caps. |
        Reply with no capital letters apart from "{w}", which is in caps. |
        Lowercase letters only, please, but put "{w}" in capitals."""
    ),
}
_CASE_SENTENCES = _split(
    """{T} is {a} and {b}. | I think {t} is {a}. | {T} always seems {a} to me. |
    Most people find {t} {a} and {b}. | To me, {t} is {a} but {b}."""
)
_KEYWORD_ASKS = _split(
    """Write a sentence about {t} that uses the word "{w}". |
    Mention the word "{w}" in one sentence about {t}. |
    Write one line about {t}. Include the word "{w}"."""
)
_KEYWORD_SENTENCES = _split(
    """{T} reminds me of the {w} near my home. | I thought about {t} while walking past the {w}. |
    {T} is best enjoyed near the {w}. | We talked about {t} by the {w}."""
)
_COUNT_ASKS = _split(
    """Describe {t} in exactly {n} words. | Using exactly {n} words, describe {t}. |
    Write exactly {n} words about {t}. | Tell me about {t} in exactly {n} words. |
    In exactly {n} words, what is {t} like? | Give a description of {t} exactly {n} words long."""
)
_LIST_ASKS = (  # (ask, list style; None: either)
    ("List exactly {k} {c}.", None),
    ("Name {k} {c} as a numbered list.", "numbered"),
    ("Give a bulleted list of {k} {c}.", "bulleted"),
    ("Write a list of exactly {k} {c}, one per line.", None),
    ("List {k} {c}, one per line.", None),
    ("Give me exactly {k} {c} as a list.", None),
    ("Name exactly {k} {c}, one per line.", None),
    ("Make a numbered list of {k} {c}.", "numbered"),
)
_CATEGORIES = {  # "_" joins a two-word item
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
# Sizes (adjectives of a word-count sentence, items of a list) a couple asks for: `lo` in one
# prompt and `lo + 1` in the other, the same two responses swapped. Even asks match 2-3 and 4-5,
# odd asks 3-4, so a middle size is wrong-answered by one more as often as by one fewer.
_SIZES = ((2, 4), (3,))


class _SizeCouple(NamedTuple):
    item: str  # a topic (word count) or a category (list)
    ask: Any  # an entry of _COUNT_ASKS or _LIST_ASKS
    lo: int  # the smaller of the two sizes; the other is lo + 1


def _size_couples(items: Sequence[str], asks: Sequence) -> list[_SizeCouple]:
    return [_SizeCouple(item, ask, lo) for item in items for i, ask in enumerate(asks) for lo in _SIZES[i % 2]]


class _CaseCouple(NamedTuple):
    """The plain rule and its one-word exception."""

    case: str  # "upper" or "lower"
    topic: str
    ask: str
    rule: int  # the index of the rule's wording in _CASE_RULES


def _case_couples() -> list[_CaseCouple]:
    return [
        _CaseCouple(case, t, a, r) for case in ("upper", "lower") for t in _TOPICS for a in _CASE_ASKS for r in range(4)
    ]


_PLAIN = {"a", "an", "i", "is", "me", "to", "my", "and", "but", "the"}  # no odd word: too small


def _build_case(couple: _CaseCouple, rng: random.Random) -> list[PreferencePair]:
    """All in one case vs one word in the other, and the same two the other way round.

    "Use only capital letters" prefers ALL CAPS to ALL CAPS with "calm" in lowercase; its mirror
    "Use only capital letters, but write "calm" in lowercase" prefers the second.
    """
    case, topic, ask, rule = couple.case, couple.topic, couple.ask, couple.rule
    plain_kind = "all_caps" if case == "upper" else "lowercase"
    a, b = rng.sample(_ADJECTIVES, 2)
    sentence = rng.choice(_CASE_SENTENCES).format(t=topic, T=_upper_first(topic), a=a, b=b)
    same, other = (str.upper, str.lower) if case == "upper" else (str.lower, str.upper)
    words = same(sentence).split(" ")
    bare = [w.strip(".,").lower() for w in words]
    i = rng.choice([j for j, w in enumerate(bare) if w not in _PLAIN and bare.count(w) == 1])
    plain, odd = " ".join(words), " ".join([*words[:i], other(words[i]), *words[i + 1 :]])
    ask = ask.format(t=topic)
    plain_rule = _CASE_RULES[plain_kind, case][rule]
    except_rule = _CASE_RULES["case_except", case][rule].format(w=bare[i])
    group = f"case:{topic}"
    except_spec = {"kind": "case_except", "case": case, "word": bare[i]}
    return [
        _pair(
            f"{ask} {plain_rule}",
            plain,
            odd,
            skill="format",
            subset=plain_kind,
            group=group,
            spec={"kind": plain_kind},
        ),
        _pair(
            f"{ask} {except_rule}",
            odd,
            plain,
            skill="format",
            subset="case_except",
            group=group,
            spec=except_spec,
        ),
    ]


class _KeywordCouple(NamedTuple):
    topic: str
    ask: str
    word: str
    mate: str  # the keyword in the same slot of the near miss


def _keyword_couples() -> list[_KeywordCouple]:
    """Keyword i and mate i XOR m, m varying with topic and ask."""
    couples = []
    for t, topic in enumerate(_TOPICS):
        for a, ask in enumerate(_KEYWORD_ASKS):
            m = 1 + (5 * t + 11 * a) % 31
            couples += [_KeywordCouple(topic, ask, _KEYWORDS[i], _KEYWORDS[i ^ m]) for i in range(32) if i < i ^ m]
    return couples


def _build_keyword(couple: _KeywordCouple, rng: random.Random) -> list[PreferencePair]:
    """Each of two keywords asked for, the other one in the same slot as the near miss."""
    topic, ask, word, mate = couple.topic, couple.ask, couple.word, couple.mate
    template = rng.choice(_KEYWORD_SENTENCES)
    text = {w: template.format(t=topic, T=_upper_first(topic), w=w) for w in (word, mate)}
    return [
        _pair(
            ask.format(t=topic, w=w),
            text[w],
            text[other],
            skill="format",
            subset="keyword",
            group=f"keyword:{topic}",
            spec={"kind": "keyword", "word": w},
        )
        for w, other in ((word, mate), (mate, word))
    ]


def _adjective_sentence(topic: str, adjectives: Sequence[str]) -> str:
    """`<Topic> is a and b.` or `<Topic> is a, b, and c.`"""
    *head, last = adjectives
    joined = f"{head[0]} and {last}" if len(head) == 1 else f"{', '.join(head)}, and {last}"
    return f"{_upper_first(topic)} is {joined}."


def _build_word_count(couple: _SizeCouple, rng: random.Random) -> list[PreferencePair]:
    """A sentence of lo + 1 adjectives and the same less one; each is asked for once."""
    topic, ask, lo = couple.item, couple.ask, couple.lo
    longer = rng.sample(_ADJECTIVES, lo + 1)
    drop = rng.randrange(lo + 1)
    shorter = [w for i, w in enumerate(longer) if i != drop]
    texts = [_adjective_sentence(topic, adjs) for adjs in (shorter, longer)]
    pairs = []
    for chosen, rejected in (texts, texts[::-1]):
        n = len(chosen.split())
        pairs.append(
            _pair(
                ask.format(t=topic, n=n),
                chosen,
                rejected,
                skill="format",
                subset="word_count",
                group=f"word_count:{topic}",
                spec={"kind": "word_count", "n": n},
            )
        )
    return pairs


def _render_list(items: Sequence[str], style: str) -> str:
    if style == "numbered":
        return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))
    return "\n".join(f"- {item}" for item in items)


def _build_list(couple: _SizeCouple, rng: random.Random) -> list[PreferencePair]:
    """A list of lo + 1 items and the same less one; each is asked for once."""
    category, lo = couple.item, couple.lo
    ask, style = couple.ask
    items = [_upper_first(w.replace("_", " ")) for w in _CATEGORIES[category].split()]
    longer = rng.sample(items, lo + 1)
    drop = rng.randrange(lo + 1)
    style = style or rng.choice(("numbered", "bulleted"))
    lists = [[w for i, w in enumerate(longer) if i != drop], longer]
    texts = [_render_list(lst, style) for lst in lists]
    return [
        _pair(
            ask.format(k=len(lst), c=category),
            chosen,
            rejected,
            skill="format",
            subset="list_items",
            group=f"list_items:{category}",
            spec={"kind": "list_items", "k": len(lst)},
        )
        for lst, chosen, rejected in ((lists[0], *texts), (lists[1], *texts[::-1]))
    ]


# ------------------------------------------------------------------------------------ generation
def _pools(skill: str) -> list[_Pool]:
    if skill == "arithmetic":
        return [_Pool(op, _arithmetic_couples(op), _build_arithmetic) for op in _OPS]
    if skill == "facts":
        return [_Pool("facts", _fact_couples(), _build_facts)]
    return [
        _Pool("case", _case_couples(), _build_case),
        _Pool("keyword", _keyword_couples(), _build_keyword),
        _Pool("word_count", _size_couples(_TOPICS, _COUNT_ASKS), _build_word_count),
        _Pool("list_items", _size_couples(list(_CATEGORIES), _LIST_ASKS), _build_list),
    ]


def max_pairs(skills: Sequence[str] | None = None) -> int:
    """The most pairs `generate_pairs` can make for these skills (shares are equal, so the
    subtype with the fewest unique problems sets the limit)."""
    skills = tuple(SKILLS if skills is None else skills)
    caps = [[2 * len(pool.params) for pool in _pools(skill)] for skill in skills]  # unique pairs per subtype

    def fits(n: int) -> bool:  # the shares _generate_skill would ask of each subtype
        return all(
            share <= cap
            for skill_caps, k in zip(caps, _shares(n, len(caps)), strict=True)
            for cap, share in zip(skill_caps, _shares(k, len(skill_caps)), strict=True)
        )

    lo, hi = 0, sum(map(sum, caps))  # fits(lo) holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _shares(n: int, k: int) -> list[int]:
    """n split round-robin over k buckets: the first n % k buckets get one more."""
    return [n // k + (i < n % k) for i in range(k)]


def _round_robin(lists: list[list[PreferencePair]]) -> list[PreferencePair]:
    """Interleave lists whose lengths are `_shares` of the total: one from each in turn."""
    iters = [iter(lst) for lst in lists]
    return [next(iters[i % len(iters)]) for i in range(sum(map(len, lists)))]


def _generate_skill(skill: str, n: int, rng: random.Random) -> list[PreferencePair]:
    """n pairs of a skill, its pools in equal shares; an odd share cuts its last couple."""
    pools = _pools(skill)
    per_pool = []
    for pool, share in zip(pools, _shares(n, len(pools)), strict=True):
        if share > 2 * len(pool.params):
            raise ValueError(
                f"skill {skill!r}: {pool.name!r} can make {2 * len(pool.params)} unique pairs but "
                f"{share} were asked for (a skill's pairs are shared equally by its subtypes); "
                f"ask for fewer pairs"
            )
        couples = rng.sample(pool.params, -(-share // 2))
        per_pool.append([pair for c in couples for pair in pool.build(c, rng)][:share])
    return _round_robin(per_pool)


def generate_pairs(n: int, seed: int = 0, skills: Sequence[str] | None = None) -> list[PreferencePair]:
    """n built-in pairs, the skills in equal shares, interleaved round-robin.

    Deterministic for a seed; every prompt is unique (one user message, no system message). Each
    pair's `meta` holds `skill`, `subset` ("arithmetic.add"), the split `group` and the `spec` that
    `is_correct` judges any response against. ValueError for an unknown skill or more pairs than the templates make.
    """
    skills = tuple(SKILLS if skills is None else skills)
    if not skills or len(set(skills)) != len(skills) or not set(skills) <= set(SKILLS):
        raise ValueError(f"skills must be distinct names among {', '.join(SKILLS)}; got {skills}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    shares = _shares(n, len(skills))
    pairs = _round_robin([_generate_skill(s, k, rng) for s, k in zip(skills, shares, strict=True)])
    if len({p.prompt[0]["content"] for p in pairs}) != len(pairs):
        raise AssertionError("the built-in templates made a duplicate prompt")
    return pairs


# -------------------------------------------------------------------------------------- verifier
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")  # "-9", but not the "-" of "47-38"
_LIST_LINE = re.compile(r"^\s*(?:[-*]|\d+[.)])\s+\S", re.MULTILINE)


def _verify_arithmetic(spec: dict[str, Any], response: str) -> bool:
    numbers = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", response))  # "1,234" -> "1234"
    return bool(numbers) and float(numbers[-1]) == spec["answer"]


def _verify_facts(spec: dict[str, Any], response: str) -> bool:
    pattern, surface = _kind_pattern(spec["relation"])
    surface = surface | {f.lower(): spec["answer"] for f in (spec["answer"], *spec["aliases"])}
    found = {surface.get(m.group(1).lower()) for m in pattern.finditer(response)}
    return found == {spec["answer"]}


def _lettered(response: str) -> list[str]:
    return [w for w in response.split() if any(c.isalpha() for c in w)]


def _verify_case(response: str, case: str, word: str | None = None) -> bool:
    """Every lettered word in `case` ("upper"/"lower"), but `word` (present) in the other case."""
    words = _lettered(response)
    odd = [w for w in words if word is not None and w.strip(".,!?;:\"'").lower() == word.lower()]
    same, other = (str.upper, str.lower) if case == "upper" else (str.lower, str.upper)
    rest_ok = all(same(w) == w for w in words if w not in odd)
    odd_ok = word is None or (bool(odd) and all(other(w) == w for w in odd))
    return bool(words) and rest_ok and odd_ok


def _verify_keyword(spec: dict[str, Any], response: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(spec['word'])}(?!\w)", response, re.IGNORECASE) is not None


def _word_count(response: str) -> int:
    return sum(any(c.isalnum() for c in token) for token in response.split())


_VERIFIERS: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "arithmetic": _verify_arithmetic,
    "facts": _verify_facts,
    "all_caps": lambda spec, response: _verify_case(response, "upper"),
    "lowercase": lambda spec, response: _verify_case(response, "lower"),
    "case_except": lambda spec, response: _verify_case(response, spec["case"], spec["word"]),
    "keyword": _verify_keyword,
    "word_count": lambda spec, response: _word_count(response) == spec["n"],
    "list_items": lambda spec, response: len(_LIST_LINE.findall(response)) == spec["k"],
}


def is_correct(spec: dict[str, Any], response: str) -> bool:
    """Whether a free-form response (a model's, say) meets a pair's spec; the gold judge.

    - arithmetic: the last number in the response equals the answer ("47 + 38 = 85" passes).
    - facts: the answer or an alias appears (any case, whole words, a plural "s" allowed) and no
      other answer of that relation in the table does ("Paris, not Lyon" passes, "Paris or
      Berlin" fails).
    - all_caps / lowercase: some word has a letter, and every such word is wholly in that case.
    - case_except: likewise in `case` ("upper"/"lower"), except `word`, which must appear and be
      wholly in the other case.
    - keyword: the word appears as a whole word, in any case ("rivers" does not count).
    - word_count: exactly n words, a word being a whitespace-separated token with a letter or a
      digit in it (a lone "-" is no word; "well-known" is one).
    - list_items: exactly k lines start with "- ", "* ", "N." or "N)"; other lines are allowed.
    """
    judge = _VERIFIERS.get(spec.get("kind"))
    if judge is None:
        raise ValueError(f"unknown spec kind {spec.get('kind')!r}; expected one of {', '.join(_VERIFIERS)}")
    return judge(spec, response)

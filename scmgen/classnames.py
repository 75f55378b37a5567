"""Built-in sets of class names (`names: imagenet` in a label node) and how words find classes in them.

torchvision ships one name per ImageNet class ('tabby', 'tiger cat', 'seashore', ...), which is
not what people type: they ask for `--do shape=cat` or `--do background=beach`. So a word is
looked up, case-insensitively and with '_' read as a space, in this order:

1. an exact class name: that class ('tabby' -> 281, 'plane' -> 726, the carpenter's plane);
2. the curated synonym table below: its classes, the first being the documented canonical pick
   ('cat' -> 281 tabby, also 282..285; 'elephant' -> 386 African elephant; 'beach' -> 978 seashore);
3. every class whose name contains the word as a whole word, the lowest id first
   ('retriever' -> 205 flat-coated retriever, also 206..209).

A word naming several classes resolves to the first and reports the others, so a caller can
say what it picked, or refuse in strict mode (`scmgen.interventions.resolve_class`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Sequence


@lru_cache(maxsize=None)
def imagenet_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-id order, as torchvision ships them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES  # imported late: torchvision is slow to import

    return tuple(_IMAGENET_CATEGORIES)


NAMED_SETS: dict[str, Callable[[], tuple[str, ...]]] = {"imagenet": imagenet_names}


def named_set(name: str) -> list[str]:
    """The class names of built-in set `name`; ValueError naming the known sets otherwise."""
    if name not in NAMED_SETS:
        raise ValueError(f"unknown set of class names '{name}', expected a list of names or one of: "
                         f"{', '.join(NAMED_SETS)}")
    return list(NAMED_SETS[name]())


def set_name_of(names: Sequence[str] | None) -> str | None:
    """Which built-in set `names` is, if any. Sets are recognised by content, so a spec written
    back to YAML (which stores the set's name) and reloaded resolves words the same way."""
    if names is None:
        return None
    for name, load in NAMED_SETS.items():
        known = load()
        if len(names) == len(known) and tuple(names) == known:
            return name
    return None


def _ids(first: int, *ranges: range) -> tuple[int, ...]:
    """`first`, then every id in `ranges` except it: a canonical pick and its alternatives."""
    return (first, *(i for r in ranges for i in r if i != first))


_CATS = (281, 282, 283, 284, 285)
_DOGS = _ids(207, range(151, 269))  # 207 golden retriever; 151..268 are the dog breeds
_BIRDS = _ids(15, range(7, 25), range(80, 101), range(127, 147))  # 15 robin
_CARS = (817, 436, 468, 511, 627, 656, 661, 751)  # sports car, beach wagon, cab, convertible, ...
_PLANES = (404, 895)  # airliner, warplane
_BIKES = (671, 444)  # mountain bike, bicycle-built-for-two
_MOTORBIKES = (670, 665)  # motor scooter, moped
_PHONES = (487, 528, 707)  # cellular telephone, dial telephone, pay-phone
_RABBITS = (330, 331, 332)  # wood rabbit, hare, Angora
_SEASHORE = (978,)

# Curated synonyms of ImageNet classes: word -> class ids, the first being the canonical pick.
# Keys are lower case and never an exact class name (an exact name always means its class).
IMAGENET_SYNONYMS: dict[str, tuple[int, ...]] = {
    # mammals
    "cat": _CATS, "cats": _CATS, "kitten": _CATS, "kitty": _CATS, "house cat": _CATS, "domestic cat": _CATS,
    "big cat": (291, 292, 288, 290, 293, 286, 289, 287),  # lion, tiger, leopard, jaguar, cheetah, ...
    "dog": _DOGS, "dogs": _DOGS, "puppy": _DOGS,
    "wolf": (269, 270, 271),  # timber, white, red wolf
    "fox": (277, 278, 279, 280),  # red, kit, Arctic, grey fox (not the fox terrier or fox squirrel)
    "bear": (294, 295, 296, 297), "polar bear": (296,),
    "elephant": (386, 385, 101),  # African, Indian elephant, tusker
    "panda": (388, 387), "red panda": (387,),
    "monkey": _ids(373, range(370, 383)),  # 373 macaque; guenon .. squirrel monkey
    "ape": (366, 365, 367, 368, 369),  # gorilla, orangutan, chimpanzee, gibbon, siamang
    "chimp": (367,),
    "horse": (339,),  # sorrel, ImageNet's only horse
    "cow": (345, 346, 347), "cattle": (345, 346, 347),  # ox, water buffalo, bison
    "pig": (341, 342, 343),  # hog, wild boar, warthog
    "sheep": (348, 349),  # ram, bighorn
    "goat": (350,),  # ibex
    "rabbit": _RABBITS, "bunny": _RABBITS,
    "hippo": (344,),
    "kangaroo": (104,),  # wallaby
    "orca": (148,),
    # other animals
    "bird": _BIRDS, "birds": _BIRDS,
    "chicken": (8, 7),  # hen, cock
    "duck": (97, 98),  # drake, red-breasted merganser
    "parrot": (88, 87, 89, 90),  # macaw, African grey, cockatoo, lorikeet
    "shark": (2, 3, 4),  # great white, tiger shark, hammerhead
    "fish": _ids(1, range(0, 2), range(389, 398)),  # goldfish, tench, barracouta .. puffer
    "clownfish": (393,), "salmon": (391,),
    "snake": _ids(57, range(52, 69)),  # garter snake; thunder snake .. sidewinder
    "lizard": _ids(46, range(38, 49)),  # green lizard; banded gecko .. Komodo dragon
    "alligator": (50,),  # American alligator (whole-word matching would pick the alligator lizard)
    "turtle": (37, 33, 34, 35, 36),  # box turtle, loggerhead, leatherback, mud turtle, terrapin
    "frog": (31, 30, 32),  # tree frog, bullfrog, tailed frog
    "spider": (74, 72, 73, 75, 76, 77),  # garden spider, ..., black widow, tarantula, wolf spider
    "butterfly": (323, 321, 322, 324, 325, 326),  # monarch, admiral, ringlet, cabbage, sulphur, lycaenid
    # vehicles
    "car": _CARS, "automobile": _CARS, "taxi": (468,), "race car": (751,),
    "truck": (867, 569, 555, 675, 717, 864),  # trailer, garbage, fire engine, moving van, pickup, tow
    "fire truck": (555,),
    "bus": (779, 874, 654),  # school bus, trolleybus, minibus
    "train": (466, 547, 820, 829),  # bullet train, electric and steam locomotive, streetcar
    "boat": (814, 472, 484, 554, 576, 625, 780, 871, 914),  # speedboat, canoe, catamaran, ...
    "ship": (510, 403, 628, 724),  # container ship, aircraft carrier, liner, pirate ship
    "airplane": _PLANES, "aeroplane": _PLANES, "aircraft": _PLANES, "jet": _PLANES,
    "bicycle": _BIKES, "bike": _BIKES, "motorcycle": _MOTORBIKES, "motorbike": _MOTORBIKES,
    # things
    "phone": _PHONES, "telephone": _PHONES, "cellphone": (487,), "mobile phone": (487,), "smartphone": (487,),
    "computer": (527, 620, 590),  # desktop computer, laptop, hand-held computer
    "tv": (851,), "sofa": (831,), "couch": (831,),
    "hat": (515, 808, 452),  # cowboy hat, sombrero, bonnet
    "shoe": (770, 630, 514, 774, 502),  # running shoe, Loafer, cowboy boot, sandal, clog
    "ball": (805, 574, 722, 768, 852, 522, 429, 430, 890),  # soccer, golf, ping-pong, rugby, tennis, ...
    "gun": (764, 413, 763),  # rifle, assault rifle, revolver
    # food and plants
    "apple": (948,), "flower": (985, 986), "burger": (933,), "hamburger": (933,), "hot dog": (934,),
    "popsicle": (929,),
    # scenes (backgrounds)
    "beach": _SEASHORE, "coast": _SEASHORE, "shore": _SEASHORE, "seaside": _SEASHORE,
    "mountain": (970,),  # alp
    "lake": (975,),  # lakeside
}

SYNONYMS: dict[str, dict[str, tuple[int, ...]]] = {"imagenet": IMAGENET_SYNONYMS}


def normalise(word: str) -> str:
    """Lower case, '_' as a space, single spaces: how words and names are compared."""
    return " ".join(word.replace("_", " ").lower().split())


def lookup(set_name: str, word: str) -> tuple[int, ...]:
    """Every class of built-in set `set_name` that `word` names, the canonical pick first;
    empty when it names none (see the module docstring for the order of the rules)."""
    names = [normalise(n) for n in NAMED_SETS[set_name]()]
    key = normalise(word)
    if not key:
        return ()
    if key in names:
        return (names.index(key),)
    if key in SYNONYMS.get(set_name, {}):
        return SYNONYMS[set_name][key]
    pattern = re.compile(rf"(?<!\w){re.escape(key)}(?!\w)")
    return tuple(i for i, n in enumerate(names) if pattern.search(n))


def vocabulary(set_name: str) -> list[str]:
    """The words `lookup` knows exactly for set `set_name` (names and synonyms), for suggestions."""
    return [normalise(n) for n in NAMED_SETS[set_name]()] + list(SYNONYMS.get(set_name, {}))

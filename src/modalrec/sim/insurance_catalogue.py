"""The insurance simulator's catalogue (`modalrec.sim.insurance`): the 24 items with their names and web
sections, the vocabulary of web tags and conversation keywords (one id space), and the call-centre
sentence templates conversations are written from."""

from __future__ import annotations

import numpy as np

# item id -> (product name, web section); ids as in the release (24 items), names are invented but
# chosen so that the most bought ids and co-bought clusters of the real structure read plausibly
ITEMS: dict[int, tuple[str, str]] = {
    1: ("car glass cover", "vehicles"), 2: ("bicycle insurance", "leisure"),
    3: ("motorcycle insurance", "vehicles"), 4: ("car insurance", "vehicles"),
    5: ("caravan insurance", "vehicles"), 6: ("holiday home insurance", "home"),
    7: ("house insurance", "home"), 8: ("home assistance cover", "home"),
    9: ("boat insurance", "leisure"), 10: ("horse insurance", "pets"),
    11: ("dental insurance", "personal"), 12: ("child accident insurance", "personal"),
    13: ("accident insurance", "personal"), 14: ("cat insurance", "pets"),
    15: ("life insurance", "personal"), 16: ("health insurance", "personal"),
    17: ("critical illness insurance", "personal"), 18: ("contents insurance", "home"),
    19: ("annual travel insurance", "travel"), 20: ("cancellation insurance", "travel"),
    21: ("dog insurance", "pets"), 22: ("travel insurance", "travel"),
    23: ("legal expenses insurance", "home"), 24: ("roadside assistance", "vehicles"),
}
N_ITEMS = len(ITEMS)
PRODUCT_SECTIONS = ["vehicles", "home", "travel", "personal", "pets", "leisure"]
SERVICE_SECTIONS = ["my page", "claims", "payment", "contact"]
BROWSE_SECTIONS = ["front page", "news"]
PRODUCT_OBJECTS = ["price calculator", "terms and conditions", "offer", "purchase form", "coverage overview"]
SERVICE_OBJECTS = ["login", "claim form", "invoice", "documents", "contact form"]
BROWSE_OBJECTS = ["faq", "news article", "search box"]
ACTION_TYPES = ["view", "click", "search", "calculate", "download", "submit", "login"]
WORDS = ["price", "family", "cancel", "address", "deductible", "discount", "renew", "change", "question", "buy",
         "website", "email", "cover", "start"]


def vocabulary() -> list[tuple[int, str, str]]:
    """(tag id, kind, name) of every web tag and conversation keyword (one id space, ids from 1)."""
    entries = [("section", s) for s in PRODUCT_SECTIONS + SERVICE_SECTIONS + BROWSE_SECTIONS]
    entries += [("product", ITEMS[i][0]) for i in sorted(ITEMS)]
    entries += [("object", o) for o in PRODUCT_OBJECTS + SERVICE_OBJECTS + BROWSE_OBJECTS]
    entries += [("type", t) for t in ACTION_TYPES]
    entries += [("word", w) for w in WORDS]
    return [(k + 1, kind, name) for k, (kind, name) in enumerate(entries)]


_VOCAB = vocabulary()
_TAG = {(kind, name): i for i, kind, name in _VOCAB}
_KW = {name: i for i, kind, name in _VOCAB if kind != "type"}  # keywords mentioned by name
_SECTION_TAG = np.array([0] + [_TAG["section", ITEMS[i][1]] for i in range(1, N_ITEMS + 1)])
_PRODUCT_TAG = np.array([0] + [_TAG["product", ITEMS[i][0]] for i in range(1, N_ITEMS + 1)])


def _tags(kind: str, names: list[str]) -> np.ndarray:
    return np.array([_TAG[kind, n] for n in names])


# sentence templates: (category, text, keywords named); "{item}" is the product, "{Item}" capitalised
_GREET, _CLOSE_A, _CLOSE_U, _SMALL_A, _SMALL_U, _PROD_U, _PROD_A, _SERV_U, _SERV_A = range(9)
_TEMPLATES: list[tuple[int, str, list[str]]] = [
    (_GREET, "Welcome to customer service, my name is Anna. How can I help you?", []),
    (_GREET, "Good morning, you are speaking with Peter. What can I do for you?", []),
    (_GREET, "Hello and welcome, this is Maria from customer service.", []),
    (_GREET, "Thank you for calling, my name is Lars. How may I help?", []),
    (_CLOSE_A, "Is there anything else I can help you with today?", []),
    (_CLOSE_A, "Thank you for calling, have a nice day.", []),
    (_CLOSE_A, "You will receive a confirmation by email.", ["email"]),
    (_CLOSE_U, "No, that was all. Thank you.", []),
    (_CLOSE_U, "Great, thanks for your help.", []),
    (_CLOSE_U, "Thank you, goodbye.", []),
    (_SMALL_A, "Just a moment, please.", []),
    (_SMALL_A, "Let me check that for you.", []),
    (_SMALL_A, "Could you confirm your date of birth?", []),
    (_SMALL_A, "I can see your customer details here.", []),
    (_SMALL_A, "I understand.", []),
    (_SMALL_U, "Yes, that is right.", []),
    (_SMALL_U, "Could you repeat that?", []),
    (_SMALL_U, "Sure, one moment.", []),
    (_SMALL_U, "That sounds good.", []),
    (_PROD_U, "I would like to add {item} for my family.", ["family"]),
    (_PROD_U, "How much does {item} cost?", ["price"]),
    (_PROD_U, "Can I get an offer on {item}?", ["offer"]),
    (_PROD_U, "I am thinking about whether to buy {item}.", ["buy"]),
    (_PROD_U, "What does {item} cover?", ["cover"]),
    (_PROD_U, "Is there a discount if I take {item} together with my other policies?", ["discount"]),
    (_PROD_U, "I saw {item} on your website.", ["website"]),
    (_PROD_U, "Does {item} have a deductible?", ["deductible"]),
    (_PROD_A, "Of course, let me look at {item} for you.", []),
    (_PROD_A, "The price of {item} depends on the deductible you choose.", ["price", "deductible"]),
    (_PROD_A, "I can send you an offer on {item} by email.", ["offer", "email"]),
    (_PROD_A, "You can also buy {item} on my page on our website.", ["buy", "my page", "website"]),
    (_PROD_A, "{Item} can start from tomorrow if you want.", ["start"]),
    (_PROD_A, "Let me use the price calculator for {item}.", ["price calculator"]),
    (_PROD_A, "Here are the terms and conditions for {item}.", ["terms and conditions"]),
    (_PROD_A, "{Item} will cover both you and your family.", ["cover", "family"]),
    (_SERV_U, "I want to change my address.", ["change", "address"]),
    (_SERV_U, "I have a question about my last invoice.", ["question", "invoice"]),
    (_SERV_U, "I need to report a damage and fill in the claim form.", ["claim form"]),
    (_SERV_U, "I cannot login to my page.", ["login", "my page"]),
    (_SERV_U, "When is my next payment due?", ["payment"]),
    (_SERV_U, "I would like to cancel a policy that I no longer need.", ["cancel"]),
    (_SERV_U, "Can I renew my policies for another year?", ["renew"]),
    (_SERV_A, "I have updated your address now.", ["address"]),
    (_SERV_A, "Your next payment is due at the end of the month.", ["payment"]),
    (_SERV_A, "I have registered your case in claims, you will hear from us soon.", ["claims"]),
    (_SERV_A, "You can find the documents on my page.", ["documents", "my page"]),
    (_SERV_A, "I have sent a new invoice to your email.", ["invoice", "email"]),
    (_SERV_A, "Let me reset your login.", ["login"]),
]
_PREFIXES = ["", "Yes, ", "Okay, ", "Well, ", "So, "]
_TPL_CAT = np.array([c for c, _, _ in _TEMPLATES])
_CAT_START = np.array([int(np.flatnonzero(_TPL_CAT == c)[0]) for c in range(9)])
_CAT_LEN = np.bincount(_TPL_CAT, minlength=9)

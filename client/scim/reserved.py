"""The ``tlog.`` namespace of the log's own events, and who may use it.

The log appends events of its own (``rt`` = ``tlog.access``, ``tlog.erasure``, ...; actions
``tlog.access.search``, ...). A submitter must not be able to log a look-alike that a reader
takes for one of them: ``TLOG.access``, ``tlog\u2024access`` (ONE DOT LEADER),
``tlog\uff0eaccess`` (FULLWIDTH FULL STOP), ``tlog\u3002access`` (IDEOGRAPHIC FULL STOP),
``t\u200blog.access`` (a zero-width space), ``tl\u043eg.access`` (a Cyrillic o), ...

:func:`is_reserved` says whether a name *normalises* into the namespace:

1. NFKC (compatibility forms: fullwidth letters, ONE DOT LEADER, SMALL FULL STOP, ...);
2. drop default-ignorable and format characters (zero-width space/joiners, soft hyphen,
   bidi controls, variation selectors) and combining marks;
3. map dot look-alikes that NFKC keeps apart (ideographic full stops, middle dots, ...)
   and letter look-alikes of ``t``, ``l``, ``o``, ``g`` (Cyrillic, Greek, digits) to ASCII;
4. casefold, then NFKC again.

The log refuses such names from submitters; :func:`event_origin` lets an auditor or a
tenant's monitor classify an event it reads (offline, from the event alone): ``"log"`` for
the log's own spelling, ``"lookalike"`` for a name that normalises into the namespace without
being the exact spelling (never the log's: treat as forged), ``"tenant"`` otherwise.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = ["RESERVED_PREFIX", "event_origin", "is_reserved", "normalise_name", "reserved_names"]

RESERVED_PREFIX = "tlog."

# Characters that look like a full stop but that NFKC leaves alone (or maps to U+3002).
_DOTS = (
    "\u3002"  # IDEOGRAPHIC FULL STOP (also the NFKC image of U+FF61)
    "\uff61"  # HALFWIDTH IDEOGRAPHIC FULL STOP
    "\u00b7"  # MIDDLE DOT
    "\u0387"  # GREEK ANO TELEIA
    "\u2219"  # BULLET OPERATOR
    "\u22c5"  # DOT OPERATOR
    "\u30fb"  # KATAKANA MIDDLE DOT
    "\uff65"  # HALFWIDTH KATAKANA MIDDLE DOT
    "\u0701"  # SYRIAC SUPRALINEAR FULL STOP
    "\u0702"  # SYRIAC SUBLINEAR FULL STOP
    "\u06d4"  # ARABIC FULL STOP
    "\u0589"  # ARMENIAN FULL STOP
    "\u1362"  # ETHIOPIC FULL STOP
    "\ua4f8"  # LISU LETTER TONE MYA TI
    "\ua60e"  # VAI FULL STOP
    "\u2e3c"  # STENOGRAPHIC FULL STOP
    "\u2e33"  # RAISED DOT
    "\u16eb"  # RUNIC SINGLE PUNCTUATION
    "\U00010a50"  # KHAROSHTHI PUNCTUATION DOT
    "\U0001d16d"  # MUSICAL SYMBOL COMBINING AUGMENTATION DOT
)
# Look-alikes of the letters of "tlog" (after NFKC and casefolding most are already ASCII).
_LETTERS = {
    "t": "\u0442\u03c4\u1d1b\u0163\u01ab\u0167",  # Cyrillic te, Greek tau, small cap T, ...
    "l": (
        "1|i\u01c0\u0131\u0399\u03b9\u0406\u0456\u04c0\u04cf\u05c0\u05d5\u07ca"
        "\u2223\u2502\u23fd\u0269\u026a\u1fbe\u2160\u217c\uffe8"
    ),
    "o": (
        "0\u043e\u03bf\u03c3\u0585\u05e1\u0ed0\u101d\u1d0f\u1d11\u2c9f\u0d20"
        "\u0966\u0be6\u0c66\u0ce6\u0d66\u0e50\u06f5\u0665"
    ),
    "g": "\u0261\u0581\u1d83\u018d\u0262\u050d\u0123\u01e5\u01e7",
}
_MAP: dict[int, str] = {ord(c): "." for c in _DOTS}
for _ascii, _alikes in _LETTERS.items():
    for _c in _alikes:
        _MAP[ord(_c)] = _ascii


def _dropped(ch: str) -> bool:
    cat = unicodedata.category(ch)
    if cat in ("Cf", "Mn", "Me", "Cc"):
        return True
    cp = ord(ch)
    # Default-ignorable code points that are not Cf (Hangul fillers, variation selectors...).
    return cp in (0x115F, 0x1160, 0x3164, 0xFFA0, 0x034F) or 0xFE00 <= cp <= 0xFE0F


def normalise_name(name: str) -> str:
    """The skeleton of ``name`` used to decide whether it is in the reserved namespace."""
    s = unicodedata.normalize("NFKC", name)
    s = unicodedata.normalize("NFD", s)
    s = "".join(ch for ch in s if not _dropped(ch))
    s = s.translate(_MAP).casefold()
    s = unicodedata.normalize("NFKC", s)
    return s.translate(_MAP).strip()


def is_reserved(name: str) -> bool:
    """Whether ``name`` normalises to ``tlog`` or into the ``tlog.`` namespace."""
    if type(name) is str and len(name) <= _MEMO_LEN:
        # The answer depends on the text alone and a batch repeats a few short names (its
        # resource types and actions): each is normalised once (bounded memory).
        return _is_reserved_memo(name)
    return _is_reserved(name)


def _is_reserved(name: str) -> bool:
    n = normalise_name(name)
    return n == "tlog" or n.startswith(RESERVED_PREFIX)


_MEMO_LEN = 256
_is_reserved_memo = functools.lru_cache(maxsize=4096)(_is_reserved)


def reserved_names(ev: Mapping[str, Any]) -> list[str]:
    """The names of ``ev`` (resource type, actions) that fall into the reserved namespace."""
    names = [ev.get("rt")]
    names += [a.get("a") for a in ev.get("acts", ()) if isinstance(a, Mapping)]
    return [n for n in names if isinstance(n, str) and is_reserved(n)]


def event_origin(ev: Mapping[str, Any]) -> str:
    """``"log"``, ``"lookalike"`` or ``"tenant"`` (module docstring)."""
    names = reserved_names(ev)
    if not names:
        return "tenant"
    exact = [ev.get("rt")] + [a.get("a") for a in ev.get("acts", ()) if isinstance(a, Mapping)]
    if all(isinstance(n, str) and n.startswith(RESERVED_PREFIX) for n in exact):
        return "log"
    return "lookalike"

"""How drivers write a plate and a mobile number: read by the conversation's parsers (wechat.parsing), which accept
them, and by the log's masking (logs), which must hide every one the parsers would accept.

Written twice, the two drifted: the parsers learnt full-width characters, zero-width characters and separators
inside a value (粤A·1·2345, 1380 013 8000) that the log's own patterns did not know, and a value written so reached
log lines unmasked (acceptance pass). This module imports nothing of the service's, so that logs, which every
module imports, may import it.
"""

from __future__ import annotations

import re
import unicodedata

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
#: What a special plate ends with in place of its last serial character (粤A1234学).
PLATE_SUFFIXES = "学警挂港澳"
# GA 36: serial letters never use I or O (they read as 1 and 0).
_SERIAL = "[A-HJ-NP-Z0-9]"
_P = f"[{PROVINCES}][A-Z]"  # province + issuing-authority letter
#: A plate as the parsers accept it once folded, upper-cased and rid of separators.
PLATE = re.compile(
    "|".join(
        (
            f"{_P}{_SERIAL}{{5}}",  # ordinary: 粤A12345, 粤AB123C
            f"{_P}{_SERIAL}{{4}}[{PLATE_SUFFIXES}]",  # special: 粤A1234学, 粤Z1234港
            # Small new-energy: energy letter (A-E pure electric, F-K other),
            # one letter-or-digit, four digits: 粤AD12345, 粤ADE1234.
            f"{_P}[A-HJK]{_SERIAL}[0-9]{{4}}",
            f"{_P}[0-9]{{5}}[DF]",  # large new-energy: 粤A12345D
        )
    )
)
#: A mainland mobile as the parsers accept it once folded and rid of separators; group 1 is the bare 11 digits.
PHONE = re.compile(r"(?:\+86|0086|86)?(1[3-9][0-9]{9})")
#: Separators people put inside plates, besides any whitespace: the middle dot printed on the plate itself (and
#: look-alikes input methods produce), dots, dashes, underscores.
PLATE_SEPARATORS = "·•・‧.-‐‑–—_"
#: Separators people put between a mobile number's groups, besides any whitespace: dashes.
PHONE_SEPARATORS = "-‐‑–—"
#: Zero-width characters survive NFKC and are invisible to the driver, but
#: would make "1\u200b" fail to match; they are dropped.
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
_INVISIBLE_RUNS = re.compile(f"[{INVISIBLE}]+")


def fold(text: str) -> str:
    """``text`` NFKC-folded (full-width digits, letters, spaces and punctuation become ASCII; Chinese characters are
    kept), zero-width characters dropped."""
    folded = unicodedata.normalize("NFKC", text)
    # The log folds every line: a pattern is quicker than str.translate, and ASCII holds none.
    return folded if folded.isascii() else _INVISIBLE_RUNS.sub("", folded)


def separator_runs(separators: str) -> re.Pattern[str]:
    """Runs of whitespace and ``separators`` (``PLATE_SEPARATORS``, ``PHONE_SEPARATORS``)."""
    return re.compile(rf"[\s{re.escape(separators)}]+")

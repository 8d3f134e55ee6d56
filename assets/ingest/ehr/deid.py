"""Note de-identification: identifiers in note text become fixed placeholders (docs/privacy.md).

Presidio (presidio-analyzer finds, presidio-anonymizer replaces) with no NLP model: its default
engine needs a spaCy model download, and nothing may download at run time. `NoOpNlpEngine`
gives the recognizers empty NLP artifacts, so every recognizer here is self-contained:

- PERSON -> [NAME]: `NameRecognizer`, rules on the shape clinicians write names in (after a title
  or a label, before a credential, on a signature line), then every other occurrence of the
  found name words in the same note.
- PHONE_NUMBER -> [PHONE]: Presidio's PhoneRecognizer (libphonenumber) and digit-group patterns.
- EMAIL_ADDRESS -> [EMAIL]: Presidio's e-mail pattern, without its TLD check (see `_Email`).
- DATE_TIME -> [DATE]: Presidio's DateRecognizer without its month/year-only patterns ("5/10"
  is a pain score), plus dates written with month names.
- RECORD_ID -> [ID]: numbers after MRN / MR# / Unit No / Acct / SSN-like labels, SSN-shaped
  numbers, and bare runs of 7+ digits (no lab value or dose is written that long).

MIMIC's own placeholders ("___") match none of these and pass unchanged, as do clinical values
("38.5", "120/80", "12.3"). Plain code: no Dagster. Nothing here logs note text.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import pandas as pd
import regex
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts, NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    DateRecognizer,
    EmailRecognizer,
    PhoneRecognizer,
)
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

LANGUAGE = "en"
PLACEHOLDERS = {
    "PERSON": "[NAME]",
    "PHONE_NUMBER": "[PHONE]",
    "EMAIL_ADDRESS": "[EMAIL]",
    "DATE_TIME": "[DATE]",
    "RECORD_ID": "[ID]",
}
# Below this a match is a guess (Presidio's month/year-only date patterns score 0.1-0.2).
SCORE_THRESHOLD = 0.3
# libphonenumber's regions to try; the digit-group patterns catch other layouts.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "IL", "BR")


# -- names ---------------------------------------------------------------------------------------

# Words, not their case-insensitive forms: "MR" is mitral regurgitation, "MS" multiple sclerosis.
# Possessive (*+), then a look back at the last letter: no backtracking inside a word, which
# made the credential rule alone cost 1.3 ms of a 3.5 KB note.
_CAP = r"\b[A-Z][A-Za-z'\-]*+(?<=[a-z])"  # Smith, McDonald, O'Neil, Smith-Jones
_UPPER = r"\b[A-Z][A-Z'\-]*+(?<=[A-Z])\b"  # SMITH (only right after a title)
_INITIAL = r"[A-Z]\."
# Never a newline: "Dr. Smith\nPlan:" must not take "Plan". Between the words of one name a
# single blank: "Name: John Smith  Unit No: ___" (MIMIC's layout) must not take "Unit".
_SP = r"[ \t]+"
_SEP = r"[ \t]"
# First [M.] Last, or Last, First [M.]
_FULL = rf"{_CAP}(?:{_SEP}(?:{_INITIAL}|{_CAP}))?(?:{_SEP}{_CAP})?"
_LAST_FIRST = rf"{_CAP},[ \t]?{_CAP}(?:{_SEP}{_INITIAL})?"
_NAMES = rf"(?:{_LAST_FIRST}|{_FULL})"
_TITLE = r"\b(?:Dr|DR|Doctor|Mr|Mrs|Ms|Miss|Mx|Prof)\.?"
# Labels a name follows (with a colon). Not "CC:", the chief complaint far more often than a
# copy's recipient; not the name of a drug, a test or a place.
_LABEL = (
    r"\b(?i:(?<!(?:drug|medication|brand|generic|product|test|study|facility|hospital)[ \t])name|"
    r"patient(?:[ \t]+name)?|pt|attending|resident|fellow|intern|pcp|nurse|rn|"
    r"signed(?:[ \t]+electronically)?[ \t]+by|electronically[ \t]+signed[ \t]+by|"
    r"dictated[ \t]+by|transcribed[ \t]+by|reviewed[ \t]+by|seen[ \t]+by)"
)
_CREDENTIAL = r",?[ \t]+(?:MD|M\.D\.|DO|RN|NP|PA-C|MBBS|PhD|APRN|CRNA|FNP|DNP)\b"
NAME_PATTERNS = tuple(
    regex.compile(p, regex.MULTILINE)
    for p in (
        rf"{_TITLE}{_SP}\K(?:{_NAMES}|{_UPPER}(?:{_SEP}{_UPPER})?)",
        rf"{_LABEL}[ \t]*:[ \t]*(?:{_TITLE}{_SP})?\K{_NAMES}",
        rf"\b(?:Patient|Pt){_SP}\K{_CAP}{_SEP}{_CAP}",
        rf"{_NAMES}(?={_CREDENTIAL})",
        rf"^[ \t]*-{{1,2}}[ \t]*\K{_FULL}(?=[ \t]*$)",  # a signature line: "- Alice Zyxwood"
        rf"^[ \t]*\K{_LAST_FIRST}(?=[ \t]*$)",
    )
)
_WORD = regex.compile(r"[A-Za-z][A-Za-z'\-]+")
# Parts of a matched span that are no name of anyone (a title inside "Last, First").
_NOT_NAMES = frozenset({"dr", "doctor", "mr", "mrs", "ms", "miss", "prof", "md"})


class NameRecognizer(EntityRecognizer):
    """PERSON from the context clinicians write names in; then the same words elsewhere.

    The second pass is what removes "Zyxwood" in "discussed with Zyxwood" once "Dr. Alice
    Zyxwood" signed the note. It matches the word as found and in capitals (case-sensitive:
    a name that is also a word, "Brown", stays a word where it is written in lower case).
    """

    SCORE = 0.85

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="ClinfuseNameRecognizer")

    def load(self) -> None:  # rules only: nothing to load
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        spans = {m.span() for p in NAME_PATTERNS for m in p.finditer(text)}
        words = {w for s, e in spans for w in _WORD.findall(text[s:e])}
        words = {w for w in words if len(w) > 2 and w.lower() not in _NOT_NAMES}
        if words:
            variants = sorted(words | {w.upper() for w in words}, key=len, reverse=True)
            again = regex.compile(r"\b(?:" + "|".join(map(regex.escape, variants)) + r")\b")
            spans |= {m.span() for m in again.finditer(text)}
        return [RecognizerResult("PERSON", s, e, self.SCORE) for s, e in sorted(spans)]


# -- numbers, addresses, dates -------------------------------------------------------------------

_ID_LABEL = (
    r"\b(?:MRN|MR[ \t]?(?:#|No\.?|Number)|Medical[ \t]+Record(?:[ \t]+(?:Number|No\.?|#))?|"
    r"Unit[ \t]+(?:No\.?|Number|#)|Acct|Account(?:[ \t]+(?:Number|No\.?|#))?|"
    r"Record[ \t]+(?:Number|No\.?|#)|Patient[ \t]+ID|ID|SSN|Accession(?:[ \t]+(?:Number|No\.?|#))?)"
)
_ID_VALUE = r"[ \t]*[:#]?[ \t]*\K[A-Z]{0,3}\d[\d\-]{2,}\w*"  # \K: the label itself stays
ID_PATTERNS = [
    Pattern("labelled record number", _ID_LABEL + _ID_VALUE, 0.9),
    Pattern("SSN-shaped", r"(?<![\w\-])\d{3}-\d{2}-\d{4}(?![\w]|-\d)", 0.6),
    Pattern("long digit run", r"(?<![\w.,/\-])\d{7,}(?!\w|[.,/\-]\d)", 0.5),
]  # fmt: skip
PHONE_PATTERNS = [
    Pattern(
        "digit groups",
        r"(?<![\w.\-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{4}"
        r"(?!\d|[.\-]\d)",
        0.6,
    ),
    Pattern("local number", r"(?<![\w.\-/])\d{3}[.\-]\d{4}(?!\w|[.\-/]\d)", 0.5),
]
_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
MONTH_NAME_PATTERNS = [
    Pattern("Month d, yyyy", rf"\b{_MONTH}\.?[ \t]+{_DAY},?[ \t]+\d{{4}}\b", 0.7),
    Pattern("d Month yyyy", rf"\b{_DAY}[ \t]+(?:of[ \t]+)?{_MONTH}\.?,?[ \t]+\d{{4}}\b", 0.7),
    Pattern("Month yyyy", rf"\b{_MONTH}\.?[ \t]+\d{{4}}\b", 0.6),
]


# Where libphonenumber is worth asking: 7+ digits in one run of digits and separators. It tries
# every digit group of a text in every region otherwise, and clinical text is full of numbers
# (measured: 22 ms of a 24 ms 3 KB note, benchmarks/deid.py).
_PHONE_CANDIDATE = regex.compile(r"(?<!\w)[+(]?\d[\d ().\-]{5,24}\d(?!\d)")
_DIGIT = regex.compile(r"\d")


class _Phone(PhoneRecognizer):
    """Presidio's PhoneRecognizer, run only on the candidate windows of a text."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for window in _PHONE_CANDIDATE.finditer(text):
            if len(_DIGIT.findall(window.group())) < 7:
                continue
            artifacts = cast(NlpArtifacts, nlp_artifacts)  # Presidio's hint omits its None
            for found in super().analyze(window.group(), entities, artifacts):
                found.start += window.start()
                found.end += window.start()
                results.append(found)
        return results


class _Email(EmailRecognizer):
    """Presidio's e-mail pattern without its validation: that asks tldextract for the public
    suffix list, which downloads it, and a hospital's internal domain (x@lab.local) is an
    address all the same."""

    def validate_result(self, pattern_text: str) -> bool:
        return True

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        # No "@", no address: skips a pattern that costs ~0.3 ms on a 3.5 KB note.
        if "@" not in text:
            return []
        return super().analyze(text, entities, nlp_artifacts, regex_flags)


def _recognizers() -> list[EntityRecognizer]:
    dates = [p for p in DateRecognizer.PATTERNS if p.score >= SCORE_THRESHOLD]
    return [
        NameRecognizer(),
        _Phone(supported_regions=PHONE_REGIONS),
        PatternRecognizer("PHONE_NUMBER", name="ClinfusePhonePatterns", patterns=PHONE_PATTERNS),
        _Email(),
        DateRecognizer(patterns=dates + MONTH_NAME_PATTERNS),
        PatternRecognizer("RECORD_ID", name="ClinfuseRecordIds", patterns=ID_PATTERNS),
    ]


@functools.cache
def _engines() -> tuple[AnalyzerEngine, AnonymizerEngine]:
    """Built once per process (about a second: Presidio imports spaCy for its types)."""
    nlp = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    registry = RecognizerRegistry(recognizers=_recognizers(), supported_languages=[LANGUAGE])
    analyzer = AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=[LANGUAGE],
        default_score_threshold=SCORE_THRESHOLD,
    )
    return analyzer, AnonymizerEngine()


_OPERATORS = {k: OperatorConfig("replace", {"new_value": v}) for k, v in PLACEHOLDERS.items()}


# -- the de-identifier ---------------------------------------------------------------------------

# A column this long is split over a process pool (one engine per worker, ~2 s to start):
# measured ~1.4 ms per 3 KB note on one core, so a MIMIC-sized table (2.6 M notes) is an hour
# on one core and minutes on sixteen.
POOL_MIN_NOTES = 10_000
CHUNK_NOTES = 2_000


@dataclass
class Deidentified:
    """De-identified texts (same index) and what was replaced: counts only, never text."""

    texts: pd.Series
    notes_changed: int = 0
    entities: Counter = field(default_factory=Counter)  # placeholder -> replacements

    def metadata(self) -> dict[str, int]:
        """Flat counts for Dagster metadata and logs: "deidentified_notes", "deid_name", ..."""
        counts = {_key(p): int(self.entities.get(p, 0)) for p in PLACEHOLDERS.values()}
        return {"deidentified_notes": self.notes_changed, **counts}


def _key(placeholder: str) -> str:
    return "deid_" + placeholder.strip("[]").lower()


class NoteDeidentifier:
    """Replaces identifiers in note texts by `PLACEHOLDERS`; None / NA pass through."""

    def __init__(self) -> None:
        self._analyzer, self._anonymizer = _engines()

    def text(self, text: str) -> tuple[str, Counter]:
        """One text de-identified, and the count of each placeholder put in."""
        found = self._analyzer.analyze(text=text, language=LANGUAGE)
        if not found:  # most notes: skip the anonymizer's bookkeeping
            return text, Counter()
        # The anonymizer takes the analyzer's results as they are (Presidio's documented use);
        # its hint names its own, field-for-field identical, result class.
        result = self._anonymizer.anonymize(
            text=text,
            analyzer_results=found,  # type: ignore[arg-type]
            operators=_OPERATORS,
        )
        return result.text, Counter(PLACEHOLDERS[item.entity_type] for item in result.items)

    def texts(self, texts: Iterable[str | None]) -> list[str | None]:
        """Each text de-identified (the served model's request notes); None stays None."""
        return [None if _missing(t) else self.text(str(t))[0] for t in texts]

    def series(self, texts: pd.Series, workers: int = 1) -> Deidentified:
        """A text column de-identified, with counts; index, name and dtype kept.

        workers > 1 spreads a column of POOL_MIN_NOTES or more over that many processes.
        """
        values = texts.tolist()
        chunks = [values[i : i + CHUNK_NOTES] for i in range(0, len(values), CHUNK_NOTES)]
        if workers > 1 and len(values) >= POOL_MIN_NOTES:
            from clinfuse.assets.ingest.pool import process_pool

            with process_pool(min(workers, len(chunks))) as pool:
                done = list(pool.map(_chunk, chunks))
        else:
            done = [_chunk(chunk) for chunk in chunks]
        report = Deidentified(texts)
        out: list[object] = []
        for clean, changed, counts in done:
            out += clean
            report.notes_changed += changed
            report.entities.update(counts)
        report.texts = pd.Series(out, index=texts.index, dtype=texts.dtype, name=texts.name)
        return report


def _chunk(values: list[object]) -> tuple[list[object], int, Counter]:
    """(texts, how many changed, placeholder counts) of one chunk; run in a pool worker too."""
    deid = NoteDeidentifier()
    out: list[object] = []
    changed, total = 0, Counter[str]()
    for value in values:
        if _missing(value):
            out.append(value)
            continue
        clean, counts = deid.text(str(value))
        out.append(clean)
        changed += bool(counts)
        total.update(counts)
    return out, changed, total


def _missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def deidentify_texts(texts: Sequence[str | None]) -> list[str | None]:
    """The served model's request notes, de-identified before they are embedded."""
    return NoteDeidentifier().texts(texts)

"""Unlabelled text of other domains for distillation: WordNet glosses and the Python documentation.

Both come from Debian packages (``apt-get install wordnet-base python3.11-doc``), so the recipe
needs no download beyond the package registry:

* ``wordnet-base`` (WordNet 3.0, Princeton's WordNet licence: use, copy, modify and distribute
  with the notice kept): each synset's definition and its example sentences, one group per synset;
* ``python3.11-doc`` (the Python 3.11 documentation, PSF licence): prose paragraphs of the
  ``.rst.txt`` sources with reStructuredText markup stripped, one group per section.

Groups are lists of related texts that the trainer keeps in one batch. Sampling is seeded; every
text equal to a banned (evaluation) text is dropped. Debian package descriptions are never read
here: they are an evaluation set (``benchmarks/data/debian_desc``).
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
PYDOC_DIR = Path("/usr/share/doc/python3.11/html/_sources")

_ROLE = re.compile(r":[a-z:+-]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``")
_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_+")
_EMPH = re.compile(r"\*\*?([^*]+)\*\*?")
_WS = re.compile(r"\s+")


def _clean_rst(text: str) -> str:
    text = _ROLE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    text = text.replace("`", "").replace("::", ":")
    return _WS.sub(" ", text).strip()


def wordnet_groups(directory: Path = WORDNET_DIR) -> list[list[str]]:
    """One group per synset: ``"<lemma>: <definition>"`` and its quoted example sentences."""
    groups: list[list[str]] = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (directory / f"data.{pos}").read_text(encoding="utf-8").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            lemma = fields[4].replace("_", " ")
            parts = [p.strip() for p in gloss.split(";") if p.strip()]
            definitions = [p for p in parts if not p.startswith('"')]
            examples = [p.strip('"').strip() for p in parts if p.startswith('"')]
            if not definitions:
                continue
            g = [f"{lemma}: {'; '.join(definitions)}"]
            g += [e for e in examples if len(e.split()) >= 4]
            groups.append(g)
    return groups


def pydoc_groups(directory: Path = PYDOC_DIR, min_words: int = 8, max_words: int = 120) -> list[list[str]]:
    """One group per section of each ``.rst.txt`` file: its prose paragraphs (no code, no directives)."""
    groups: list[list[str]] = []
    for path in sorted(directory.rglob("*.rst.txt")):
        if path.parts[-2] == "whatsnew" and path.name.startswith("changelog"):
            continue
        section: list[str] = []
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            lines = block.splitlines()
            if not lines:
                continue
            if len(lines) >= 2 and set(lines[-1].strip()) <= set("=-~^*#+\"'") and lines[-1].strip():
                if section:
                    groups.append(section)
                section = []
                continue  # a heading
            first = lines[0]
            if first.startswith((" ", "\t", "..", ">>>", "|", "+", "*", "-", "#")) or first[:1].isdigit():
                continue  # code, directives, tables, lists
            text = _clean_rst(block)
            n = len(text.split())
            if min_words <= n <= max_words and text[-1:] in ".:?!)":
                section.append(text)
        if section:
            groups.append(section)
    return groups


def unique_texts(texts: list[str], banned: set[str], seen: set[str]) -> list[str]:
    """``texts`` less empty, banned and already ``seen`` ones (stripped, lower-cased); updates ``seen``."""
    out = []
    for s in texts:
        k = s.strip().lower()
        if k and k not in banned and k not in seen:
            seen.add(k)
            out.append(s)
    return out


def sample_groups(groups: list[list[str]], max_texts: int, seed: int, banned: set[str]) -> list[list[str]]:
    """Whole groups in a seeded order, up to ``max_texts`` texts; duplicates and banned texts dropped."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    seen: set[str] = set()
    out: list[list[str]] = []
    total = 0
    for i in order:
        if total >= max_texts:
            break
        g = unique_texts(groups[i], banned, seen)
        if g:
            out.append(g)
            total += len(g)
    return out


def fingerprint(directory: Path, pattern: str) -> str:
    """sha256 over the sorted files a source reads (recorded in train_log.json)."""
    h = hashlib.sha256()
    for p in sorted(directory.rglob(pattern)):
        h.update(p.relative_to(directory).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()

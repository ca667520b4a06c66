"""The assistant's knowledge corpus: real text that ships with CPython, published onto ``documents``.

Two sources, both offline and real:

* ``pydoc_data.topics`` — the language-reference topics ``help()`` shows
  (statements, expressions, the data model, built-in types);
* the docstrings of standard-library modules that have substantial ones.

    sluice produce corpus            # onto $SLUICE_DOCUMENTS_TOPIC at $SLUICE_BROKERS
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import re
import sys
import warnings
from pathlib import Path

import orjson

from models.document import DocumentEvent
from operators.kafka.sink import CheckedProducer
from sluice.settings import AssistantSettings

QUESTIONS_PATH = Path(__file__).resolve().parents[2] / "perf" / "rag_questions.json"
MIN_DOCSTRING_CHARS = 800
_UNSAFE_MODULES = frozenset(
    {"this", "antigravity", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "ensurepip", "venv", "lib2to3",
     "pydoc_data", "curses", "readline", "tty", "pty", "crypt", "nis", "spwd", "ossaudiodev", "msilib", "winreg",
     "winsound", "msvcrt", "nt"}
)  # fmt: skip


def _title(text: str) -> str:
    return text.strip().splitlines()[0].strip()


def pydoc_topics() -> list[DocumentEvent]:
    """The language-reference topics (duplicates, such as ``else`` = ``if``, kept once)."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    docs = []
    for key in sorted(topics):
        text = topics[key].strip()
        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        docs.append(
            DocumentEvent(f"pydoc:{key}", 1, _title(text), text, f"pydoc_data.topics (Python {sys.version.split()[0]})")
        )
    return docs


def module_docstrings(min_chars: int = MIN_DOCSTRING_CHARS) -> list[DocumentEvent]:
    """Standard-library modules whose docstring has at least ``min_chars`` characters."""
    docs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name.startswith("_") or name in _UNSAFE_MODULES:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - platform-specific modules simply are not in the corpus
                continue
            text = (module.__doc__ or "").strip()
            if len(text) >= min_chars:
                docs.append(DocumentEvent(f"stdlib:{name}", 1, f"The {name} module", text, f"{name}.__doc__"))
    return docs


def load_corpus() -> list[DocumentEvent]:
    """Every document of the corpus, in a stable order."""
    return pydoc_topics() + module_docstrings()


def publish(settings: AssistantSettings, docs: list[DocumentEvent], topic: str | None = None) -> int:
    """Produce ``docs`` (keyed by document id) onto the documents topic; returns how many."""
    producer = CheckedProducer(settings.connection().producer_config())
    for doc in docs:
        producer.produce(topic or settings.documents_topic, key=doc.doc_id.encode(), value=doc.to_json())
        producer.poll(0)
    producer.flush_or_raise(30, "document events")
    return len(docs)


def _clean_title(title: str) -> str:
    return re.sub(r"\s+", " ", title.replace('"', "").replace("—", "-")).strip()


# Hand-written questions a user would ask, with the topic that answers them.
HAND_WRITTEN = [
    ("What does the with statement do?", ["pydoc:with", "pydoc:context-managers"]),
    ("How do I catch an exception and run cleanup code?", ["pydoc:try"]),
    ("What is the difference between a list and a tuple?", ["pydoc:typesseq", "pydoc:typesseq-mutable"]),
    ("How do I change a variable in an enclosing function from a nested function?", ["pydoc:nonlocal"]),
    ("How can a module-level variable be assigned inside a function?", ["pydoc:global"]),
    ("What does yield do inside a function?", ["pydoc:yield"]),
    ("How do I check that a condition holds while debugging?", ["pydoc:assert"]),
    ("Which operators bind more tightly than others?", ["pydoc:operator-summary"]),
    ("How does Python decide whether an object is true or false?", ["pydoc:truth", "pydoc:booleans"]),
    ("How do I format numbers with a fixed number of decimals in a format string?", ["pydoc:formatstrings"]),
    ("What happens when I write x += 1?", ["pydoc:augassign"]),
    ("How do I make my class support len() and indexing?", ["pydoc:sequence-types", "pydoc:specialnames"]),
    ("How do I make objects of my class callable like functions?", ["pydoc:callable-types"]),
    ("What is the None object?", ["pydoc:bltin-null-object"]),
    ("How does a for loop's else clause work?", ["pydoc:for"]),
    ("How do I exit a loop early?", ["pydoc:break"]),
    ("How do I write an anonymous function?", ["pydoc:lambda"]),
    ("What does await do?", ["pydoc:await", "pydoc:async"]),
    ("How do I import a module?", ["pydoc:import"]),
    ("How do I remove an item from a dictionary or delete a name?", ["pydoc:del", "pydoc:typesmapping"]),
    ("How do I parse command-line arguments?", ["stdlib:argparse"]),
    ("How do I read and write JSON?", ["stdlib:json"]),
    ("How do I use regular expressions?", ["stdlib:re"]),
    ("How can I time small snippets of code?", ["stdlib:timeit"]),
    ("How do I run a child process and capture its output?", ["stdlib:subprocess"]),
    ("How do I compute the mean and standard deviation of data?", ["stdlib:statistics"]),
    ("How do I read configuration from an INI file?", ["stdlib:configparser"]),
    ("How do I generate a unique identifier?", ["stdlib:uuid"]),
    ("How do I keep a priority queue?", ["stdlib:heapq"]),
    ("How do I make a shallow or deep copy of an object?", ["stdlib:copy"]),
]


def build_questions(docs: list[DocumentEvent]) -> list[dict[str, object]]:
    """The retrieval question set: one generated from each title, plus the hand-written ones."""
    out: list[dict[str, object]] = []
    for doc in docs:
        title = _clean_title(doc.title)
        question = (
            f"What is the {doc.doc_id[7:]} module for?" if doc.doc_id.startswith("stdlib:") else f"Explain {title}."
        )
        out.append({"question": question, "relevant": [doc.doc_id], "kind": "title"})
    out += [{"question": q, "relevant": r, "kind": "hand-written"} for q, r in HAND_WRITTEN]
    return out


def run(args: argparse.Namespace) -> int:
    """``sluice produce corpus [--topic T] [--stats] [--write-questions]``."""
    docs = load_corpus()
    if args.write_questions:
        QUESTIONS_PATH.write_bytes(orjson.dumps(build_questions(docs), option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {QUESTIONS_PATH}")
    elif args.stats:
        chars = sum(len(d.text) for d in docs)
        print(f"{len(docs)} documents, {chars} characters, sources: pydoc topics + stdlib docstrings")
    else:
        settings = AssistantSettings.from_env()
        n = publish(settings, docs, args.topic)
        print(f"published {n} documents to {args.topic or settings.documents_topic} at {settings.brokers}")
    return 0

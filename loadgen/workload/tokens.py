"""Counting prompt tokens: a local tokenizer, the server's ``/tokenize``, or an honest approximation.

A :class:`TokenCounter` answers ``count(texts) -> list[int]`` and says whether its counts are exact.
Synthetic prompts are built from a pool of words that are each one token for the counter in use, so a
prompt of N pool words is N tokens plus the counter's fixed overhead (a BOS token, for instance).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from loadgen.errors import ConfigError

#: The synthetic word pool when nothing better is known: ``w0000``…``w3999``. Each is one token for
#: the built-in simulated server and for the tiny WordLevel tokenizer the vLLM tests generate.
SYNTHETIC_WORDS = tuple(f"w{i:04d}" for i in range(4000))

# Common English words; with a real BPE tokenizer, most are one token when preceded by a space.
_ENGLISH = (
    "the of and to in is was for on are with as at be by this had not but from or have an they which one "
    "you were all her she there would their we him been has when who will more no if out so said what up "
    "its about into than them can only other new some could time these two may then do first any my now "
    "such like our over man me even most made after also did many before must through back years where "
    "much your way well down should because each just those people how too little state good very make "
    "world still own see men work long get here between both life being under never day same another know "
    "while last might us great old year off come since against go came right used take three states "
    "himself few house use during without again place around however home small found thought went say "
    "part once general high upon school every does got united left number course war until always away "
    "something fact though water less public put think almost hand enough far took head yet government "
    "system better set told nothing night end why called didn eyes find going look asked later knew point "
    "next program city business give group toward young days let room president side social given present "
    "several order national possible rather second face per among form important often things looked early "
    "white case john become large big need four within felt along children saw best church ever least power "
    "development light thing seemed family interest want members mind country area others done turned "
    "although open problem service certain kind different thus began door help means sense whole matter "
    "perhaps itself york times law human line above name example action company hands local show whether "
    "five history gave either today act feet across taken past quite anything having seen death experience"
).split()


class TokenCounter(Protocol):
    name: str
    exact: bool

    def count(self, texts: Sequence[str]) -> list[int]: ...


class WordCounter:
    """Counts whitespace-separated words: exact for the simulated server and the tiny test model only."""

    name = "words"

    def __init__(self, exact: bool = False) -> None:
        self.exact = exact

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


class LocalTokenizer:
    """A Hugging Face ``tokenizer.json`` read with the ``tokenizers`` library (exact counts)."""

    exact = True

    def __init__(self, directory: str) -> None:
        path = Path(directory)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(
                f"--tokenizer {directory}: no tokenizer.json there. Give a model directory that holds "
                "tokenizer.json (a Hugging Face tokenizer), or leave --tokenizer out to use the server's "
                "/tokenize."
            )
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError(
                "--tokenizer needs the `tokenizers` package, a dependency of loadgen that this Python "
                f"environment lacks ({exc}): `pip install tokenizers`, or reinstall loadgen."
            ) from exc
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception for a bad file
            raise ConfigError(f"--tokenizer {directory}: cannot load {file}: {exc}") from exc
        self._add_special = _adds_bos(path)
        self.name = f"tokenizer:{path.name}"

    def count(self, texts: Sequence[str]) -> list[int]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=self._add_special)
        return [len(e.ids) for e in encs]


def _adds_bos(path: Path) -> bool:
    cfg = path / "tokenizer_config.json"
    if not cfg.is_file():
        return True
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return True
    return bool(data.get("add_bos_token", True))


class ServerTokenizer:
    """The endpoint's ``POST /tokenize`` (vLLM and the simulated server have it): exact counts.

    Used only while preparing a run, before the clock starts, so it may block: plain ``urllib`` calls,
    eight at a time, each text counted once.
    """

    exact = True
    name = "server:/tokenize"

    def __init__(self, base_url: str, model: str, headers: dict[str, str], timeout_s: float = 10.0) -> None:
        self._url = f"{base_url}/tokenize"
        self._model = model
        self._headers = {"Content-Type": "application/json", **headers}
        self._timeout = timeout_s
        self._cache: dict[str, int] = {}

    def _one(self, text: str) -> int:
        body = json.dumps({"model": self._model, "prompt": text}).encode()
        req = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        with urllib.request.urlopen(req, timeout=self._timeout) as resp:
            data = json.loads(resp.read())
        count = data.get("count") if isinstance(data, dict) else None
        if not isinstance(count, int):
            raise ValueError("no integer `count` in the /tokenize answer")
        return count

    def available(self) -> bool:
        try:
            self.count(["hello"])
        except (OSError, ValueError):
            return False
        return True

    def count(self, texts: Sequence[str]) -> list[int]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            with ThreadPoolExecutor(max_workers=8) as pool:
                for text, n in zip(todo, pool.map(self._one, todo), strict=True):
                    self._cache[text] = n
        return [self._cache[t] for t in texts]


def single_token_words(counter: TokenCounter) -> tuple[list[str], int]:
    """Words that are exactly one token after a space, and the counter's fixed overhead (e.g. BOS).

    Returns ``(pool, overhead)`` so that a prompt of N pool words joined by spaces is ``N + overhead``
    tokens. The check is done on the counter itself, so it holds for that tokenizer.
    """
    if isinstance(counter, WordCounter):
        return list(SYNTHETIC_WORDS), 0
    # The synthetic words first: a word-level tokenizer that knows them (the test models, the GPU
    # kit's model) would map English words to one shared <unk> id, and prompts of identical ids would
    # all hit the server's prefix cache. A BPE tokenizer splits them, and the English words are used.
    sample = SYNTHETIC_WORDS[::40]
    counts = counter.count([sample[0], *(f"{sample[0]} {w}" for w in sample)])
    if all(c == counts[0] + 1 for c in counts[1:]):
        return list(SYNTHETIC_WORDS), counts[0] - 1
    probe = ["hello", *(f"hello {w}" for w in _ENGLISH)]
    counts = counter.count(probe)
    base = counts[0]
    pool = [w for w, c in zip(_ENGLISH, counts[1:], strict=True) if c == base + 1]
    if len(pool) < 50:
        raise ConfigError(
            f"the tokenizer ({counter.name}) splits common words into pieces; cannot build exact-length "
            "synthetic prompts. Use a prompts file (--prompts-file) instead."
        )
    overhead = counter.count(["hello"])[0] - 1
    return pool, overhead

"""What a pooling request carries besides its prompt: more embeddings inputs, or rerank/score documents.

``pooling: {inputs: N, document_len: ...}`` (``--inputs-per-request``, ``--document-len``):

* ``embeddings``: the request's ``input`` is a list of N texts: the prompt and ``N - 1`` more, each of
  ``input_len`` tokens (a traffic class's own, when it has one); its input tokens are the sum of the N.
* ``rerank`` (``{query, documents}``) and ``score`` (``{text_1, text_2}``): the prompt is the query and N
  documents of ``document_len`` tokens (default ``input_len``) are paired with it. A cross-encoder reads
  each pair as one sequence, so the request's input tokens are ``N × query + Σ documents``.

The extra texts are pool words (one token each for the counter in use, see
:mod:`loadgen.workload.tokens`), drawn from their own child of the run seed, so the prompts themselves are
those the run would send without ``pooling:``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from loadgen.settings import Settings
from loadgen.specs import LengthDist
from loadgen.workload.samples import Dataset, draw_lengths, word_prompt
from loadgen.workload.tokens import TokenCounter, single_token_words

_STREAM = 0x706F6F6C  # "pool": the seed child the extra texts are drawn from


def with_inputs(dataset: Dataset, settings: Settings, counter: TokenCounter) -> Dataset:
    """``dataset`` with each pooling sample's extra texts (``Sample.inputs``) and its input tokens
    summed; a sample's endpoint is its traffic class's, else the run's (generating ones are kept)."""
    spec = settings.pooling
    n = spec.inputs if spec is not None else 1
    pool, overhead = single_token_words(counter)
    words = np.array(pool)
    rng = np.random.default_rng([settings.seed, _STREAM])
    own_len: dict[str | None, LengthDist] = {c.name: c.input_len for c in settings.classes or ()
                                              if c.input_len is not None}
    samples = []
    for s in dataset.samples:
        endpoint = s.endpoint or settings.endpoint
        embeddings = endpoint == "embeddings"
        extra = n - 1 if embeddings else n
        if endpoint not in ("embeddings", "rerank", "score") or extra == 0:
            samples.append(s)
            continue
        docs_len = spec.document_len if spec is not None else None
        dist = docs_len if docs_len is not None and not embeddings else own_len.get(s.cls, settings.input_len)
        lens = draw_lengths(dist, extra, rng)
        n_words = [max(1, int(x) - overhead) for x in lens]
        texts = tuple(word_prompt(words, k, rng) for k in n_words)
        tokens = sum(k + overhead for k in n_words)
        total = s.input_tokens + tokens if embeddings else extra * s.input_tokens + tokens
        samples.append(dataclasses.replace(s, inputs=texts, input_tokens=total))
    described: dict[str, Any] = {"inputs_per_request": n}
    docs = [t.count(" ") + 1 + overhead for s in samples if (s.endpoint or settings.endpoint) != "embeddings"
            for t in s.inputs or ()]
    if docs:
        described["document_tokens_mean"] = float(np.mean(docs))
    return dataclasses.replace(dataset, samples=samples, pooling=described)

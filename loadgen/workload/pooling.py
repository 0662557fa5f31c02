"""What a pooling request carries besides its prompt: more embeddings inputs, or rerank/score documents.

``pooling: {inputs: N, document_len: ...}`` (``--inputs-per-request``, ``--document-len``):

* ``embeddings``: the request's ``input`` is a list of N texts: the prompt and ``N - 1`` more, each of
  ``input_len`` tokens; its input tokens are the sum of the N.
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
from loadgen.workload.samples import Dataset, draw_lengths, word_prompt
from loadgen.workload.tokens import TokenCounter, single_token_words

_STREAM = 0x706F6F6C  # "pool": the seed child the extra texts are drawn from


def with_inputs(dataset: Dataset, settings: Settings, counter: TokenCounter) -> Dataset:
    """``dataset`` with each sample's extra texts (``Sample.inputs``) and its input tokens summed."""
    spec = settings.pooling
    n = spec.inputs if spec is not None else 1
    embeddings = settings.endpoint == "embeddings"
    extra = n - 1 if embeddings else n
    if extra == 0:
        return dataset
    dist = settings.input_len if embeddings or spec is None or spec.document_len is None \
        else spec.document_len
    pool, overhead = single_token_words(counter)
    words = np.array(pool)
    rng = np.random.default_rng([settings.seed, _STREAM])
    samples = []
    for s in dataset.samples:
        lens = draw_lengths(dist, extra, rng)
        n_words = [max(1, int(x) - overhead) for x in lens]
        texts = tuple(word_prompt(words, k, rng) for k in n_words)
        tokens = sum(k + overhead for k in n_words)
        total = s.input_tokens + tokens if embeddings else extra * s.input_tokens + tokens
        samples.append(dataclasses.replace(s, inputs=texts, input_tokens=total))
    described: dict[str, Any] = {"inputs_per_request": n}
    if not embeddings:
        lengths = [t.count(" ") + 1 + overhead for s in samples for t in s.inputs or ()]
        described["document_tokens_mean"] = float(np.mean(lengths)) if lengths else 0.0
    return dataclasses.replace(dataset, samples=samples, pooling=described)

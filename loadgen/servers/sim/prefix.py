"""The simulator's prefix cache: prompt tokens in fixed blocks, cached by the hash of the whole prefix.

A prompt's tokens (whitespace-separated words, as the sim counts them) are cut into blocks of
``block_tokens``; block ``i`` is keyed by the hash of blocks ``0..i`` (so a block is a hit only when
everything before it matched too, as vLLM's automatic prefix caching keys its KV blocks). A request's
cached tokens are its leading run of full blocks already in the cache, times ``block_tokens``, never the
whole prompt (at least one token is always computed, as vLLM caps it). After the look-up every full
block is inserted or refreshed; the cache holds at most ``capacity_blocks`` blocks and evicts the least
recently used. The timing model charges ``prefill_ms_per_token`` only for the uncached tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["PrefixCache"]


class PrefixCache:
    """LRU cache of prompt-prefix blocks; :meth:`lookup` returns the cached-token count and inserts."""

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        if capacity_blocks < 1 or block_tokens < 1:
            raise ValueError("prefix cache: capacity_blocks and block_tokens must be >= 1")
        self.capacity = capacity_blocks
        self.block = block_tokens
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def lookup(self, tokens: Sequence[str]) -> int:
        """Cached tokens of a prompt of ``tokens`` (then its full blocks are cached)."""
        n_full = len(tokens) // self.block
        keys: list[int] = []
        h = 0
        for i in range(n_full):
            h = hash((h, tuple(tokens[i * self.block : (i + 1) * self.block])))
            keys.append(h)
        hits = 0
        for key in keys:
            if key not in self._blocks:
                break
            hits += 1
        if hits * self.block >= len(tokens) and hits > 0:  # never the whole prompt
            hits -= 1
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hits * self.block

"""The frozen text features of each caption, computed once per training run."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from clipsr_cli.plugins.protocols import TextFeatures


class TextFeatureCache:
    """`encode(captions)` of a text encoder, kept per caption.

    TextFeatures are frozen by contract (`plugins/protocols.py`), so a caption
    seen again (every epoch, and the empty caption of caption dropout) costs a
    lookup instead of BPE tokenisation and a text-tower pass: 10% of a
    tiny-preset training step on the CPU (BENCHMARKS.md).  An entry keeps only
    its own tokens; a batch is padded to its longest caption with masked zeros,
    as the encoder masks its own padding.  The least recently used entries go
    once the cache holds `max_bytes`, so a data set of a million captions costs
    memory no larger than that (and finds few of its captions again)."""

    def __init__(self, encode: Callable[[list[str]], TextFeatures], max_bytes: int = 256 << 20):
        self.encode = encode
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __call__(self, captions: list[str]) -> TextFeatures:
        new = [c for c in dict.fromkeys(captions) if c not in self.entries]
        if new:
            self._add(new, self.encode(new))
        rows = []
        for caption in captions:
            self.entries.move_to_end(caption)
            rows.append(self.entries[caption])
        self._evict(keep=set(captions))
        return _batch(rows)

    def _add(self, captions: list[str], feats: TextFeatures) -> None:
        lengths = (~feats.pad_mask).sum(dim=1).tolist()
        for i, (caption, n) in enumerate(zip(captions, lengths)):
            entry = (feats.sentence[i].clone(), feats.tokens[i, :n].clone())
            self.entries[caption] = entry
            self.bytes += sum(t.numel() * t.element_size() for t in entry)

    def _evict(self, keep: set[str]) -> None:
        while self.bytes > self.max_bytes and len(self.entries) > len(keep):
            caption, entry = next(iter(self.entries.items()))
            if caption in keep:  # only this batch's captions are left at the front
                break
            del self.entries[caption]
            self.bytes -= sum(t.numel() * t.element_size() for t in entry)


def _batch(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> TextFeatures:
    sentence = torch.stack([s for s, _ in rows])
    lengths = [t.shape[0] for _, t in rows]
    longest = max(lengths)
    first = rows[0][1]
    tokens = first.new_zeros(len(rows), longest, *first.shape[1:])
    for i, (_, t) in enumerate(rows):
        tokens[i, : t.shape[0]] = t
    positions = torch.arange(longest, device=first.device)
    pad_mask = positions[None, :] >= torch.tensor(lengths, device=first.device)[:, None]
    return TextFeatures(sentence, tokens, pad_mask)

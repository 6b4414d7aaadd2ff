"""The frozen text features of every caption training can draw, computed once."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from clipsr_cli.plugins.protocols import TextFeatures


class TextFeatureCache:
    """`encode(captions)` of a text encoder, kept per caption.

    TextFeatures are frozen by contract (`plugins/protocols.py`), so a caption
    drawn again (every epoch, and the empty caption of caption dropout) costs a
    lookup instead of BPE tokenisation and a text-tower pass: 10% of a
    tiny-preset training step on the CPU (BENCHMARKS.md).  `fill` encodes them
    all up front, in a fixed order, so that a caption's features never depend
    on the batch it was first drawn in: a resumed run computes with the same
    bits as an uninterrupted one.  An entry keeps only its own tokens; a batch
    is padded to its longest caption with masked zeros, as the encoder masks its
    own padding.  Until `fill` succeeds, every call is passed to the encoder."""

    def __init__(self, encode: Callable[[list[str]], TextFeatures], max_bytes: int = 256 << 20):
        self.encode = encode
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.filled = False

    def fill(self, captions: Iterable[str], chunk: int = 64) -> bool:
        """Encode every caption now, sorted, in batches of `chunk`.  False, keeping
        nothing, where they would not fit in `max_bytes` (judged as the batches
        come, from the bytes per caption so far): training then encodes each
        batch as it is drawn, as without a cache."""
        unique = sorted(set(captions))
        for start in range(0, len(unique), chunk):
            part = unique[start : start + chunk]
            self._add(part, self.encode(part))
            if self.bytes / (start + len(part)) * len(unique) > self.max_bytes:
                self.entries.clear()
                self.bytes = 0
                return False
        self.filled = True
        return True

    def __call__(self, captions: list[str]) -> TextFeatures:
        if not self.filled:
            return self.encode(captions)
        for caption in dict.fromkeys(captions):
            if caption not in self.entries:  # not listed by the data set: alone, so its bits do not depend on its batch
                self._add([caption], self.encode([caption]))
        return _batch([self.entries[c] for c in captions])

    def _add(self, captions: list[str], feats: TextFeatures) -> None:
        lengths = (~feats.pad_mask).sum(dim=1).tolist()
        for i, (caption, n) in enumerate(zip(captions, lengths)):
            entry = (feats.sentence[i].clone(), feats.tokens[i, :n].clone())
            self.entries[caption] = entry
            self.bytes += sum(t.numel() * t.element_size() for t in entry)


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

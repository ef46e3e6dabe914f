"""Generated ids as text, released as soon as it is whole: characters never broken, spacing as
decoding the whole line gives, and text that may begin a stop string held back."""

from __future__ import annotations

from typing import Sequence

from lmrnn.tokenizer import Tokenizer

CONTEXT_TOKENS = 8  # prompt tokens decoded with the first new ones, so spacing comes out right


class TextStream:
    """One sequence's ids turned into text as they arrive: a piece is released once it decodes to
    whole characters (byte-fallback pieces wait for the rest of their UTF-8 sequence), decoded
    together with the ids before it so word spacing is right. End-of-sequence becomes a newline.
    Text that could be the start of a stop string is held back until it is known not to be."""

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = (), stops: Sequence[str] = (),
                 strip_space: bool = False):
        self.decode, self.eos, self.piece_texts = tokenizer.decode, tokenizer.eos_id, tokenizer.piece_texts
        self.ids = list(context)[-CONTEXT_TOKENS:]  # tokens of the current line, decoded together
        self.prefix, self.read = 0, len(self.ids)  # ids[prefix:read] are released already
        self.anchored = False  # ids[prefix] is a piece with visible text
        self._move_anchor()
        self.stops = list(stops)
        self.strip_space = strip_space  # the prompt ended in a space: drop the first piece's own
        self.text = ""  # the continuation so far
        self.shown = 0  # characters of it released
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one id; return the text it releases (often '', never a broken character)."""
        if token == self.eos:
            self.ids, self.prefix, self.read, self.anchored = [], 0, 0, False
            return self._add("\n")
        self.ids.append(token)
        piece = self.piece_texts[token]
        if piece is not None and self.anchored and self.read == len(self.ids) - 1:
            chunk = piece  # after visible text, with nothing waiting, decoding appends the piece
        else:
            before = self.decode(self.ids[self.prefix:self.read])
            after = self.decode(self.ids[self.prefix:])
            if len(after) <= len(before) or after.endswith("\ufffd"):
                return ""  # an incomplete UTF-8 sequence, or a piece that adds nothing yet
            chunk = after[len(before):]
        self.read = len(self.ids)
        self._move_anchor()
        if self.prefix > 4 * CONTEXT_TOKENS:  # keep the list short on long lines
            del self.ids[:self.prefix]
            self.read -= self.prefix
            self.prefix = 0
        return self._add(chunk)

    def _move_anchor(self) -> None:
        """Decode from the last released piece with visible text. SentencePiece drops whitespace
        at the start of what it decodes, so a window must not start with a space piece; at the
        start of a line it may, since decoding the whole text drops it too."""
        for j in range(self.read - 1, self.prefix - 1, -1):
            piece = self.piece_texts[self.ids[j]]
            if piece is not None and piece.strip():
                self.prefix, self.anchored = j, True
                return

    def finish(self) -> str:
        """The rest: held-back text and any incomplete character (as U+FFFD)."""
        released = ""
        if not self.stopped:
            before = self.decode(self.ids[self.prefix:self.read])
            after = self.decode(self.ids[self.prefix:])
            self.prefix = self.read = len(self.ids)
            if len(after) > len(before):
                released = self._add(after[len(before):])
        return released + self._release(len(self.text))

    def _add(self, chunk: str) -> str:
        if self.strip_space and chunk:
            chunk, self.strip_space = chunk.removeprefix(" "), False
        old = len(self.text)
        self.text += chunk
        if not self.stops:
            return self._release(len(self.text))
        # a new occurrence ends inside the chunk, so it starts at most len(stop) - 1 before it
        hits = [i for i in (self.text.find(s, max(0, old - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            return self._release(len(self.text))
        held = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text) - held)

    def _release(self, upto: int) -> str:
        out = self.text[self.shown:upto]
        self.shown = max(self.shown, upto)
        return out

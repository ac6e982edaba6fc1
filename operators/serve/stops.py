"""Stop sequences over streamed text: the answer ends where one first appears, and no piece of it is
sent. Text pieces arrive in any cut (a stop may span two tokens), so the tail that could still be the
start of a stop sequence is held back until the next piece says whether it is one."""

from __future__ import annotations


class StopText:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.held = ""
        self.hit = False  # a stop sequence appeared: the answer has ended

    def add(self, piece: str) -> str:
        """What of the text so far can be sent now that ``piece`` has arrived."""
        if self.hit:
            return ""
        text = self.held + piece
        found = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if found:
            self.hit, self.held = True, ""
            return text[:min(found)]
        keep = max((k for stop in self.stops for k in range(1, min(len(stop), len(text) + 1))
                    if text.endswith(stop[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The held tail, once the answer has ended without completing a stop sequence."""
        held, self.held = self.held, ""
        return held

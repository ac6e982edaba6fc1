"""Who may rate: one secret token per annotator, made by the admin command (`llama2 annotate
--add-annotator NAME`), which prints it once inside a login link.

The file beside the ratings keeps only each token's SHA-256 (a leaked file lets nobody in), is
readable by its owner only, and is replaced whole (write, fsync, rename), so a server reading it
never sees half of it. Asking again for a name gives it a new token; the old one stops working
with the next request (the server reads the file on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


class AnnotatorError(ValueError):
    """An annotator name that cannot be used, or an annotators file that cannot be read."""


def annotators_file(ratings: Path) -> Path:
    return ratings.with_name(ratings.name + ".annotators.json")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_annotator(path: Path, name: str) -> str:
    """A new token for ``name`` (replacing any it had), recorded by its digest; the token itself is returned only."""
    if not NAME.match(name):
        raise AnnotatorError(f"annotator name {name!r}: use 1-40 letters, digits, '_', '.' or '-', starting with a "
                             "letter or digit")
    known = read_annotators(path)
    token = secrets.token_urlsafe(24)
    known[name] = digest(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(known, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    return token


def read_annotators(path: Path) -> dict[str, str]:
    """name -> token digest ({} before the first annotator is added)."""
    if not path.exists():
        return {}
    try:
        known = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AnnotatorError(f"{path}: not an annotators file ({err})") from None
    if not isinstance(known, dict) or not all(isinstance(v, str) for v in known.values()):
        raise AnnotatorError(f"{path}: not an annotators file (expected {{name: sha256}})")
    return known


def annotator_of(path: Path, token: str | None) -> str | None:
    """The annotator whose token this is, or None; every digest is compared, in constant time."""
    if not token:
        return None
    given = digest(token)
    found = None
    for name, expected in read_annotators(path).items():
        if hmac.compare_digest(given, expected):
            found = name
    return found


def form_key(token: str) -> str:
    """The anti-CSRF value of an annotator's forms: derived from their token, which another site cannot read."""
    return hmac.new(token.encode(), b"llama2-annotate form", hashlib.sha256).hexdigest()

"""Personal information: drop PII-heavy sites, redact emails, phone numbers and IP addresses.

Llama 2 §2.1: "We made an effort to remove data from certain sites known to contain a high
volume of personal information about private individuals." Meta did not publish the list; the
default below names well-known people-search sites, whose pages are exactly that. Redaction
follows Dolma's PII step (Soldaini et al. 2024): each match is replaced by a placeholder naming
its kind, and the matches are counted per kind.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

PII_KINDS = ("email", "ipv4", "ipv6", "phone")

# People-search / background-check sites: pages built from personal records of private people.
DEFAULT_PII_DOMAINS = [
    "spokeo.com",
    "whitepages.com",
    "mylife.com",
    "intelius.com",
    "beenverified.com",
    "peoplefinders.com",
    "truepeoplesearch.com",
    "fastpeoplesearch.com",
    "radaris.com",
    "instantcheckmate.com",
    "truthfinder.com",
    "peekyou.com",
    "zabasearch.com",
    "411.com",
]


class PiiConfig(BaseModel):
    """Which personal information to remove, and how."""

    model_config = ConfigDict(extra="forbid")

    remove_domains: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PII_DOMAINS),
        description="Drop documents whose URL host is one of these domains or a subdomain of one.",
    )  # §2.1
    redact_emails: bool = Field(True, description="Replace email addresses.")
    redact_phone_numbers: bool = Field(True, description="Replace phone numbers.")
    redact_ip_addresses: bool = Field(True, description="Replace IPv4 and IPv6 addresses.")
    email_placeholder: str = Field("|||EMAIL_ADDRESS|||", description="Replacement for an email.")  # Dolma
    phone_placeholder: str = Field("|||PHONE_NUMBER|||", description="Replacement for a phone number.")  # Dolma
    ip_placeholder: str = Field("|||IP_ADDRESS|||", description="Replacement for an IP address.")  # Dolma
    redact_non_global_ips: bool = Field(
        False,
        description="Also redact private, loopback, link-local and documentation addresses "
        "(they identify no one on the Internet, and technical text is full of them).",
    )


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Candidates only: `ipaddress` validates them, so "999.1.1.1" or a slice "a[1::2]" is left alone.
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
# North-American style with separators ((555) 123-4567, 555.123.4567, +1 555-123-4567) and
# international numbers written with a leading '+'; a bare run of digits is not a phone number.
_PHONE = re.compile(
    r"(?<![\w+.-])(?<!\d[ .-])(?:"
    r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"|\+\d{1,3}(?:[ .-]\(?\d{1,4}\)?){2,5}"
    r")(?![\w-]|[ .]\d)"  # not inside a longer run of numbers such as "377 610 987 1597 2584"
)


def _valid_ip(s: str, version: int, cfg: PiiConfig) -> bool:
    try:
        addr = ipaddress.IPv4Address(s) if version == 4 else ipaddress.IPv6Address(s)
    except ValueError:
        return False
    if version == 6:
        groups = [g for g in s.split(":") if g]
        # "1::2" (a slice) or "2004::" (a year before a reST '::') are rarely addresses.
        if len(groups) < 2 or (len(groups) < 3 and not any(len(g) == 4 for g in groups)):
            return False
    return cfg.redact_non_global_ips or addr.is_global


def _valid_phone(s: str) -> bool:
    return 10 <= sum(c.isdigit() for c in s) <= 15  # E.164 allows at most 15 digits


def redact_pii(text: str, cfg: PiiConfig) -> tuple[str, Counter[str]]:
    """`text` with PII replaced by placeholders, and how many of each kind were replaced."""
    counts: Counter[str] = Counter()

    def sub(pattern: re.Pattern, kind: str, placeholder: str, valid, s: str) -> str:
        def replace(m: re.Match) -> str:
            if not valid(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return placeholder

        return pattern.sub(replace, s)

    if cfg.redact_emails and "@" in text:
        text = sub(_EMAIL, "email", cfg.email_placeholder, lambda _: True, text)
    if cfg.redact_ip_addresses:
        text = sub(_IPV4, "ipv4", cfg.ip_placeholder, lambda m: _valid_ip(m, 4, cfg), text)
        if "::" in text or text.count(":") >= 7:
            text = sub(_IPV6, "ipv6", cfg.ip_placeholder, lambda m: _valid_ip(m, 6, cfg), text)
    if cfg.redact_phone_numbers:
        text = sub(_PHONE, "phone", cfg.phone_placeholder, _valid_phone, text)
    return text, counts


def url_host(url: str | None) -> str | None:
    """Lower-case host name of `url` (scheme optional), or None when there is none."""
    if not url:
        return None
    host = urlsplit(url if "//" in url else f"//{url}").hostname
    return host.rstrip(".") if host else None


def matching_domain(url: str | None, domains: list[str]) -> str | None:
    """The configured domain that `url`'s host is, or is a subdomain of; None if none."""
    host = url_host(url)
    if host is None:
        return None
    for domain in domains:
        d = domain.lower().strip(".")
        if host == d or host.endswith("." + d):
            return domain
    return None

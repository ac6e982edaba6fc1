"""PII: redaction with counts per kind, and PII-heavy domains."""

from __future__ import annotations

from operators.data.pii import PiiConfig, matching_domain, redact_pii


def test_emails_are_replaced_and_counted():
    text, counts = redact_pii("Write to jane.doe+list@mail.example.org or to bob@corp.io.", PiiConfig())
    assert text == "Write to |||EMAIL_ADDRESS||| or to |||EMAIL_ADDRESS|||."
    assert counts == {"email": 2}


def test_phone_numbers_are_replaced_but_runs_of_numbers_are_not():
    text, counts = redact_pii(
        "Call (555) 123-4567 or +44 20 7946 0958. Fibonacci: 233 377 610 987 1597 2584.", PiiConfig()
    )
    assert text == "Call |||PHONE_NUMBER||| or |||PHONE_NUMBER|||. Fibonacci: 233 377 610 987 1597 2584."
    assert counts == {"phone": 2}


def test_public_ip_addresses_are_replaced_and_non_addresses_kept():
    text, counts = redact_pii(
        "Resolver 8.8.8.8 and 2606:4700:4700::1111; 999.1.1.1 and Python 3.11.2 are not addresses, nor is x[1::2].",
        PiiConfig(),
    )
    assert text == (
        "Resolver |||IP_ADDRESS||| and |||IP_ADDRESS|||; 999.1.1.1 and Python 3.11.2 are not addresses, "
        "nor is x[1::2]."
    )
    assert counts == {"ipv4": 1, "ipv6": 1}


def test_private_and_documentation_addresses_are_kept_unless_configured():
    text = "Bind to 127.0.0.1, 192.168.0.10 or 2001:db8::1."
    assert redact_pii(text, PiiConfig())[1] == {}
    _, counts = redact_pii(text, PiiConfig(redact_non_global_ips=True))
    assert counts == {"ipv4": 2, "ipv6": 1}


def test_redaction_kinds_can_be_switched_off():
    text = "Mail a@b.com from 8.8.8.8."
    out, counts = redact_pii(text, PiiConfig(redact_emails=False, redact_ip_addresses=False))
    assert (out, counts) == (text, {})


def test_domain_list_matches_the_host_and_its_subdomains_only():
    domains = ["spokeo.com"]
    assert matching_domain("https://www.spokeo.com/John-Smith", domains) == "spokeo.com"
    assert matching_domain("spokeo.com/people", domains) == "spokeo.com"
    assert matching_domain("https://spokeo.com.example.net/", domains) is None
    assert matching_domain("https://notspokeo.com/", domains) is None
    assert matching_domain(None, domains) is None

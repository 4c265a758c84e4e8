"""cloud-init core without I/O: per-boot tokens and the NoCloud documents."""

from __future__ import annotations

import base64
import email

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bootd.boot.citoken import TokenIssuer, Verdict, issued_at_ms
from bootd.boot.cloudinit import GroupData, NodeSeed, dump_yaml, parse_defaults, parse_group
from bootd.boot.node import Node

MAC = "52:54:00:00:00:01"
OTHER = "52:54:00:00:00:02"
T0 = 1_800_000_000.0


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(b"k" * 32)


def test_token_accepts_its_node_within_ttl(issuer: TokenIssuer) -> None:
    tok = issuer.issue(MAC, T0)
    assert issued_at_ms(tok) == int(T0 * 1000)
    assert issuer.verify(tok, MAC, T0 + 100, 1800, None) is Verdict.OK


def test_token_refusals(issuer: TokenIssuer) -> None:
    tok = issuer.issue(MAC, T0)
    assert issuer.verify(tok, OTHER, T0 + 1, 1800, None) is Verdict.WRONG_NODE
    assert issuer.verify(tok, MAC, T0 + 1801, 1800, None) is Verdict.EXPIRED
    assert issuer.verify(tok, MAC, T0 - 60, 1800, None) is Verdict.EXPIRED  # from the future
    assert issuer.verify(tok, MAC, T0 + 5, 1800, T0 + 2) is Verdict.REPLAYED
    # A token issued after the last phone-home (the next boot) is fine.
    assert issuer.verify(issuer.issue(MAC, T0 + 3), MAC, T0 + 5, 1800, T0 + 2) is Verdict.OK
    assert issuer.verify(None, MAC, T0, 1800, None) is Verdict.MISSING
    for bad in ("x", "..", "a.b.c", "!!.abc", "z" * 200, tok.split(".")[0] + "."):
        assert issuer.verify(bad, MAC, T0, 1800, None) is Verdict.MALFORMED, bad
    # Tampering with the stamp (to extend the lifetime) breaks the HMAC.
    _, sig = tok.split(".")
    later = TokenIssuer(b"k" * 32).issue(MAC, T0 + 1000).split(".")[0]
    assert issuer.verify(f"{later}.{sig}", MAC, T0 + 1000, 1800, None) is Verdict.WRONG_NODE
    # Another server key does not verify.
    assert TokenIssuer(b"j" * 32).verify(tok, MAC, T0, 1800, None) is Verdict.WRONG_NODE


def _seed(**kw: object) -> NodeSeed:
    groups = {
        "compute": GroupData(
            "compute", "compute nodes", {"syslog": "10.0.0.1"}, b"#cloud-config\n"
        ),
        "empty": GroupData("empty", "", {}, b"  \n"),
        "secret": GroupData("secret", "", {}, b"", "", b"#cloud-config\nmunge: s3cr3t\n"),
    }
    args: dict[str, object] = {
        "node": Node(MAC, "10.0.0.11", "nid0001", 1, "x1c0s0b0n0", ("compute", "empty", "gone")),
        "ip": "10.0.0.11",
        "groups": groups,
        "defaults": {"cluster-name": "demo", "public-keys": ["ssh-ed25519 AAA a@b"]},
        "info": {},
        "cluster_name": "cfg",
        "base_url": "http://10.0.0.1:8080",
    }
    args.update(kw)
    return NodeSeed(**args)  # type: ignore[arg-type]


def test_meta_data_shape() -> None:
    s = _seed()
    text = dump_yaml(s.meta_data())
    assert "&id" not in text and "*id" not in text  # no YAML aliases for operators to decode
    md = yaml.safe_load(text)
    assert md["instance-id"] == s.instance_id and md["instance-id"].startswith("i-")
    assert md["local-hostname"] == md["hostname"] == "nid0001"
    assert md["cluster-name"] == "demo"
    assert md["public-keys"] == ["ssh-ed25519 AAA a@b"]
    v1 = md["instance_data"]["v1"]
    assert v1["local_ipv4"] == "10.0.0.11"
    assert v1["vendor_data"]["groups"]["compute"] == {
        "Description": "compute nodes",
        "syslog": "10.0.0.1",
    }
    assert set(v1["vendor_data"]["groups"]) == {"compute", "empty"}  # 'gone' is not stored
    # Overrides from instance info win; the instance-id is stable without one.
    s2 = _seed(info={"local-hostname": "n1", "instance-id": "i-fixed"})
    assert s2.meta_data()["local-hostname"] == "n1" and s2.instance_id == "i-fixed"
    assert _seed().instance_id == s.instance_id
    assert _seed(defaults={}).meta_data()["cluster-name"] == "cfg"


def test_vendor_data_skips_empty_and_unknown_groups() -> None:
    assert _seed().vendor_data() == "#include\nhttp://10.0.0.1:8080/cloud-init/compute.yaml\n"
    s = _seed(defaults={"base-url": "http://proxy/ci/"})
    assert s.include_urls() == ["http://proxy/ci/compute.yaml"]


def test_user_data_default_and_own() -> None:
    assert _seed().user_data() == "#cloud-config\n"
    assert _seed(info={"user-data": {"runcmd": ["true"]}}).user_data().startswith("#cloud-config\n")
    assert _seed(info={"user-data": "#!/bin/sh\ntrue"}).user_data() == "#!/bin/sh\ntrue\n"


def test_secure_vendor_data_carries_secrets_of_member_groups_only() -> None:
    node = Node(MAC, "10.0.0.11", "nid0001", groups=("compute", "secret"))
    msg = email.message_from_bytes(_seed(node=node).secure_vendor_data())
    parts = [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.walk()][1:]
    assert parts[0][0] == "text/x-include-url" and b"compute.yaml" in parts[0][1]
    assert parts[1] == ("text/cloud-config", b"#cloud-config\nmunge: s3cr3t\n")
    outsider = email.message_from_bytes(_seed().secure_vendor_data())
    assert b"s3cr3t" not in b"".join(
        p.get_payload(decode=True) or b"" for p in outsider.walk() if not p.is_multipart()
    )


def test_parse_group_validates() -> None:
    g = parse_group(
        {
            "name": "compute",
            "file": {
                "content": base64.b64encode(b"## template: jinja\n").decode(),
                "encoding": "base64",
            },
        }
    )
    assert g.content == b"## template: jinja\n"
    assert parse_group({"file": {"content": "x", "encoding": "plain"}}, "fromurl").name == "fromurl"
    for bad, msg in [
        ({"name": "../etc"}, "not a valid group name"),
        ({"name": "a", "file": {"content": "%%", "encoding": "base64"}}, "base64"),
        ({"name": "a", "file": {"content": "x", "encoding": "rot13"}}, "encoding"),
        ({"name": "a", "bogus": 1}, "bogus: unknown key"),
        ([], "expected a JSON object"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_group(bad)
    with pytest.raises(ValueError, match="nid-length"):
        parse_defaults({"nid-length": "3"})
    with pytest.raises(ValueError, match="unknown key"):
        parse_defaults({"clustername": "x"})


@given(
    st.text(max_size=300) | st.from_regex(r"[0-9a-z]{1,12}\.[A-Za-z0-9_\-]{0,60}", fullmatch=True)
)
@settings(max_examples=100, deadline=None)
def test_any_presented_token_gets_a_verdict(token: str) -> None:
    v = TokenIssuer(b"k" * 32).verify(token, MAC, T0, 1800, None)
    assert v is not Verdict.OK

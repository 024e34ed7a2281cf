"""SSRF protection: refused destinations are refused before any connection.

Every test stubs the resolver, and a socket spy fails the test if anything
tries to connect to a refused address: no test here ever reaches beyond
loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import httpcore
import pytest

from chimeway_core.channels import DestinationPolicy, WebhookChannel
from chimeway_core.channels._destinations import address_category
from chimeway_core.errors import UnsafeDestinationError
from chimeway_core.outcomes import PermanentFailure, Sent

from .conftest import ANY_PORT, HTTPTestServer, Reply, make_delivery

REFUSED = [
    ("10.1.2.3", "private"),
    ("192.168.0.10", "private"),
    ("172.16.5.4", "private"),
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("169.254.169.254", "cloud-metadata"),
    ("169.254.1.1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("100.64.0.1", "non-global"),
    ("::1", "loopback"),
    ("fd00::1", "private"),
    ("fd00:ec2::254", "cloud-metadata"),
    ("fe80::1", "link-local"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "cloud-metadata"),
    ("2002:a00:1::", "private"),
    ("64:ff9b::a00:1", "private"),
]


@pytest.fixture
def connect_spy(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and block) every outgoing TCP connection attempt."""
    attempts: list[object] = []

    def refuse(address: object, *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        raise AssertionError(f"a connection was attempted to {address!r}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def resolving_to(*addresses: str) -> Callable[[str, int], list[str]]:
    """A resolver stub answering every name with ``addresses``."""
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(("address", "category"), REFUSED)
def test_refused_addresses_fail_permanently_without_connecting(
    connect_spy: list[object], address: str, category: str
) -> None:
    """A name resolving to a non-public address is refused before connecting."""
    webhook = WebhookChannel("https://hooks.example.test/x", resolver=resolving_to(address))
    result = webhook.send(make_delivery(), "key-1")
    expected_address = str(ipaddress.ip_address(address))
    assert (
        PermanentFailure(
            f"refused destination: address {expected_address} is {category}",
            provider_response={"refused": category},
        )
        == result
    )
    assert [] == connect_spy


@pytest.mark.parametrize("url", ["http://10.0.0.1/x", "http://[::1]:8080/x", "http://127.0.0.1/"])
def test_literal_ip_urls_are_checked_too(connect_spy: list[object], url: str) -> None:
    """A URL whose host is an IP literal is checked without resolving."""
    webhook = WebhookChannel(url, resolver=resolving_to("8.8.8.8"), allow_ports=ANY_PORT)
    result = webhook.send(make_delivery(), "k")
    assert isinstance(result, PermanentFailure)
    assert [] == connect_spy


def test_any_bad_address_refuses_the_whole_name(connect_spy: list[object]) -> None:
    """A name resolving to a public and a private address is refused."""
    webhook = WebhookChannel(
        "https://h.example.test/", resolver=resolving_to("8.8.8.8", "10.0.0.1")
    )
    result = webhook.send(make_delivery(), "key-1")
    assert isinstance(result, PermanentFailure)
    assert [] == connect_spy


def test_metadata_stays_refused_with_allow_private(connect_spy: list[object]) -> None:
    """allow_private opens private ranges but never the cloud metadata endpoint."""
    webhook = WebhookChannel(
        "http://h.example.test/", allow_private=True, resolver=resolving_to("169.254.169.254")
    )
    result = webhook.send(make_delivery(), "key-1")
    assert isinstance(result, PermanentFailure)
    assert {"refused": "cloud-metadata"} == dict(result.provider_response)


def test_redirect_to_private_address_is_refused(http_server: HTTPTestServer) -> None:
    """A redirect from an allowed host to a private address is refused before connecting."""
    names = {"public.example.test": ["127.0.0.1"], "internal.example.test": ["10.0.0.1"]}
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return names[host]

    http_server.replies["/hook"] = Reply(307, {"Location": "http://internal.example.test/admin"})
    webhook = WebhookChannel(
        f"http://public.example.test:{http_server.port}/hook",
        allow_networks=["127.0.0.1/32"],
        allow_ports=ANY_PORT,
        resolver=resolver,
    )
    result = webhook.send(make_delivery(), "key-1")
    assert (
        PermanentFailure(
            "refused destination: address 10.0.0.1 is private",
            provider_response={"refused": "private"},
        )
        == result
    )
    assert ["public.example.test", "internal.example.test"] == resolved
    assert ["/hook"] == [r.path for r in http_server.received]


def test_redirect_to_literal_private_ip_is_refused(
    http_server: HTTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redirect straight to http://10.0.0.1/ never reaches the connection layer."""
    opened: list[object] = []
    original = httpcore.ConnectionPool.handle_request

    def spy(self: httpcore.ConnectionPool, request: httpcore.Request) -> httpcore.Response:
        opened.append(request.url.host)
        return original(self, request)

    monkeypatch.setattr(httpcore.ConnectionPool, "handle_request", spy)
    http_server.replies["/hook"] = Reply(302, {"Location": "http://10.0.0.1/"})
    webhook = WebhookChannel(
        http_server.url(), allow_networks=["127.0.0.1/32"], allow_ports=ANY_PORT
    )
    result = webhook.send(make_delivery(), "key-1")
    assert isinstance(result, PermanentFailure)
    assert [b"127.0.0.1"] == opened


def test_allowlist_opens_only_its_network() -> None:
    """An allowlisted network passes; a neighbouring private address does not."""
    policy = DestinationPolicy(allow_networks=["127.0.0.1/32"])
    assert ipaddress.ip_address("127.0.0.1") == policy.check("h", "127.0.0.1")
    assert ipaddress.ip_address("::ffff:127.0.0.1") == policy.check("h", "::ffff:127.0.0.1")
    with pytest.raises(UnsafeDestinationError) as caught:
        policy.check("h", "127.0.0.2")
    assert ("h", "127.0.0.2", "loopback") == (
        caught.value.host,
        caught.value.address,
        caught.value.category,
    )


def test_public_addresses_pass() -> None:
    """Globally routable addresses are not refused."""
    expected = [None, None, None]
    actual = [
        address_category(ipaddress.ip_address(a))
        for a in ("93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8")
    ]
    assert expected == actual


def test_public_name_goes_through(http_server: HTTPTestServer) -> None:
    """A permitted destination is actually reached (the spy-free control case)."""
    webhook = WebhookChannel(
        f"http://hooks.example.test:{http_server.port}/hook",
        allow_networks=["127.0.0.0/8"],
        allow_ports=ANY_PORT,
        resolver=resolving_to("127.0.0.1"),
    )
    assert Sent(provider_response={"status": 200}) == webhook.send(make_delivery(), "key-1")


#: Special-purpose addresses some supported Python calls global (3.11 does,
#: for each of these): refused all the same, whatever the Python.
LATE_SPECIAL = [
    "192.0.0.9",
    "192.0.0.170",
    "192.88.99.1",
    "fec0::1",
    "3fff::1",
    "3fff:fff::1",
    "5f00::1",
    "64:ff9b:1::1",
]


@pytest.mark.parametrize("address", LATE_SPECIAL)
def test_special_ranges_are_refused(connect_spy: list[object], address: str) -> None:
    """IANA special-purpose ranges are never public destinations."""
    webhook = WebhookChannel("https://hooks.example.test/", resolver=resolving_to(address))
    result = webhook.send(make_delivery(), "key-1")
    assert isinstance(result, PermanentFailure)
    assert address_category(ipaddress.ip_address(address)) is not None
    assert [] == connect_spy


def test_special_ranges_are_refused_where_python_calls_them_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The verdict does not rest on CPython's flags: with all of them saying public, refused."""
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        monkeypatch.setattr(cls, "is_private", property(lambda _self: False))
        monkeypatch.setattr(cls, "is_reserved", property(lambda _self: False))
        monkeypatch.setattr(cls, "is_global", property(lambda _self: True))
    expected = dict.fromkeys(LATE_SPECIAL, "non-global")
    actual = {a: address_category(ipaddress.ip_address(a)) for a in LATE_SPECIAL}
    assert expected == actual


METADATA = [
    "169.254.170.23",  # EKS Pod Identity
    "fd00:ec2::23",  # its IPv6 twin
    "192.0.0.192",  # Oracle Cloud's IMDS
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 /96 -> 169.254.169.254
    "64:ff9b:1::a9:fea9:fe00:0",  # the same, at prefix length /64
    "64:ff9b:1:a9fe:a9:fe00::",  # the same, at prefix length /48
    "64:ff9b:1:0:a9:fea9:fe00:0",  # 169.254.169.254 at /64 with a zero subnet
]


@pytest.mark.parametrize("address", METADATA)
def test_metadata_addresses_stay_refused_with_allow_private(
    connect_spy: list[object], address: str
) -> None:
    """Every cloud metadata address, however embedded, is refused even with allow_private."""
    webhook = WebhookChannel(
        "http://h.example.test/", allow_private=True, resolver=resolving_to(address)
    )
    result = webhook.send(make_delivery(), "key-1")
    assert {"refused": "cloud-metadata"} == dict(result.provider_response)
    assert [] == connect_spy


def test_local_nat64_of_a_private_host_passes_only_with_allow_private() -> None:
    """A local-use NAT64 address of an ordinary private host is private, not metadata."""
    address = "64:ff9b:1::a00:1"  # 10.0.0.1 at /96
    with pytest.raises(UnsafeDestinationError):
        DestinationPolicy().check("h", address)
    assert ipaddress.ip_address(address) == DestinationPolicy(allow_private=True).check(
        "h", address
    )


@pytest.mark.parametrize("url", ["https://hooks.example.test:8443/", "http://10.0.0.1:22/"])
def test_ports_outside_the_policy_are_refused_before_resolving(
    connect_spy: list[object], url: str
) -> None:
    """A port other than 80 and 443 is refused by default, before DNS or any connection."""
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["93.184.216.34"]

    webhook = WebhookChannel(url, allow_private=True, resolver=resolver)
    result = webhook.send(make_delivery(), "key-1")
    port = url.rsplit(":", 1)[1].rstrip("/")
    assert (
        PermanentFailure(
            f"refused destination: port {port} is not allowed",
            provider_response={"refused": "port"},
        )
        == result
    )
    assert ([], []) == (resolved, connect_spy)


def test_a_redirect_to_another_port_is_refused(http_server: HTTPTestServer) -> None:
    """Each hop's port is checked: a redirect may not leave the allowed ports."""
    http_server.replies["/hook"] = Reply(307, {"Location": "http://127.0.0.1:6379/"})
    webhook = WebhookChannel(
        http_server.url(), allow_networks=["127.0.0.1/32"], allow_ports=[http_server.port]
    )
    result = webhook.send(make_delivery(), "key-1")
    assert {"refused": "port"} == dict(result.provider_response)
    assert ["/hook"] == [r.path for r in http_server.received]


def test_allowed_ports_are_reached(http_server: HTTPTestServer) -> None:
    """A port named in allow_ports is connected to (the control case)."""
    webhook = WebhookChannel(
        http_server.url(), allow_networks=["127.0.0.1/32"], allow_ports=[http_server.port]
    )
    assert Sent(provider_response={"status": 200}) == webhook.send(make_delivery(), "key-1")


@pytest.mark.parametrize("ports", [[0], [65536], [True], ["443"]])
def test_allow_ports_must_be_tcp_ports(ports: list[object]) -> None:
    """allow_ports holds whole numbers from 1 to 65535, checked at construction."""
    with pytest.raises(ValueError, match="allow_ports must hold TCP ports from 1 to 65535"):
        WebhookChannel("https://example.com/", allow_ports=ports)  # type: ignore[arg-type]

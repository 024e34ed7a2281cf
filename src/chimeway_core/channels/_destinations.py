"""Which network addresses a channel may connect to (SSRF protection).

A webhook URL frequently comes from a user, and a user who can make a server
POST to ``http://169.254.169.254/`` or ``http://10.0.0.5/admin`` owns the
network behind it. :class:`DestinationPolicy` is checked against the
*resolved* addresses of a host — never the name — and the caller connects to
the very address that was checked, so a DNS answer cannot change between the
check and the connection.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeAlias

import attrs

from chimeway_core.errors import UnsafeDestinationError

__all__ = [
    "CLOUD_METADATA_ADDRESSES",
    "DEFAULT_PORTS",
    "DestinationPolicy",
    "Resolver",
    "address_category",
    "system_resolver",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``resolver(host, port) -> IP address strings``; injectable so tests never touch DNS.
Resolver: TypeAlias = Callable[[str, int], Sequence[str]]

#: Instance-metadata endpoints of the major clouds (AWS IMDS and its IPv6
#: twin, ECS task and EKS Pod Identity credentials, Oracle's IMDS, Alibaba's).
#: Refused even with ``allow_private=True``: they hand out credentials, and no
#: webhook lives there. Only an explicit ``allow_networks`` entry opens one.
CLOUD_METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "fd00:ec2::254",
        "169.254.170.2",
        "169.254.170.23",
        "fd00:ec2::23",
        "192.0.0.192",
        "100.100.100.200",
    )
)

#: The ports a destination may have unless the channel is given others.
DEFAULT_PORTS: Final = frozenset({80, 443})

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
#: RFC 8215's local-use NAT64 prefix: an operator picks the length (RFC 6052),
#: so the IPv4 host it reaches is read at every length the /48 allows.
_LOCAL_NAT64: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
_LOCAL_NAT64_LENGTHS: Final = (48, 56, 64, 96)

#: Special-purpose ranges (IANA's registries) that are never a public
#: destination, written out because CPython's ``is_global``/``is_private``
#: learnt several of them only after 3.11 (192.0.0.0/24's parts, fec0::/10,
#: 3fff::/20, 5f00::/16 ...): the verdict must not depend on the Python.
_NON_PUBLIC_NETWORKS: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "64:ff9b:1::/48",
        "fc00::/7",
        "fec0::/10",
    )
)


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with :func:`socket.getaddrinfo`; unique addresses, in order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002::/16) and NAT64 (64:ff9b::/96)
    # addresses reach an IPv4 host; judge them by that host.
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _local_nat64_hosts(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 hosts a 64:ff9b:1::/48 address may reach, one per RFC 6052 prefix length."""
    if address not in _LOCAL_NAT64:
        return []
    bits = f"{int(address):0128b}"
    # RFC 6052: the IPv4 bits follow the prefix, skipping bits 64-71 ("u").
    return [
        ipaddress.IPv4Address(int((bits[length:64] + bits[72:])[:32], 2))
        if length < 96
        else ipaddress.IPv4Address(int(bits[96:], 2))
        for length in _LOCAL_NAT64_LENGTHS
    ]


def address_category(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination, or ``None`` when it is one.

    One of ``cloud-metadata``, ``unspecified``, ``loopback``, ``link-local``,
    ``multicast``, ``private``, ``reserved`` or ``non-global`` (shared,
    documentation and other special-purpose ranges).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # ::ffff:0:0/96 is itself "reserved"; a mapped address is its IPv4 host.
            return address_category(address.ipv4_mapped)
        embedded = _embedded_ipv4(address)
        if embedded is not None and (category := address_category(embedded)) is not None:
            return category
        if any(h in CLOUD_METADATA_ADDRESSES for h in _local_nat64_hosts(address)):
            return "cloud-metadata"
    checks: tuple[tuple[bool, str], ...] = (
        (address in CLOUD_METADATA_ADDRESSES, "cloud-metadata"),
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "non-global"),
        (any(address in network for network in _NON_PUBLIC_NETWORKS), "non-global"),
    )
    return next((name for refused, name in checks if refused), None)


def _to_network(value: str | IPNetwork) -> IPNetwork:
    return value if isinstance(value, IPNetwork) else ipaddress.ip_network(value, strict=False)


def _to_networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    if isinstance(values, str):
        raise TypeError("allow_networks must be an iterable of networks, not a single string")
    return tuple(_to_network(v) for v in values)


def _to_ports(values: Iterable[int]) -> frozenset[int]:
    ports = frozenset(values)
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"allow_ports must hold TCP ports from 1 to 65535, got {port!r}")
    return ports


@attrs.frozen
class DestinationPolicy:
    """Which resolved addresses may be connected to.

    Public (globally routable) addresses always pass. An address inside one of
    ``allow_networks`` passes, whatever it is. Otherwise ``allow_private=True``
    lets every non-public address pass *except* the cloud-metadata endpoints,
    which only an explicit ``allow_networks`` entry can open.

    Whatever the address, the port must be one of ``allow_ports`` (by default
    80 and 443): a webhook is a web server, and an open port list turns a
    webhook into a probe of a public host's SSH, SMTP or database ports.
    """

    allow_private: bool = False
    allow_networks: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_to_networks)
    allow_ports: frozenset[int] = attrs.field(default=DEFAULT_PORTS, converter=_to_ports)

    def check_port(self, host: str, port: int) -> None:
        """Raise :class:`UnsafeDestinationError` unless ``port`` is allowed."""
        if port not in self.allow_ports:
            raise UnsafeDestinationError(host, "", "port", port=port)

    def _allowlisted(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and (v4 := _embedded_ipv4(address)):
            candidates.append(v4)
        return any(c in net for c in candidates for net in self.allow_networks)

    def check(self, host: str, address: str) -> IPAddress:
        """Return ``address`` parsed, or raise :class:`UnsafeDestinationError`."""
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise UnsafeDestinationError(host, "<unparseable>", "not an IP address") from None
        category = address_category(parsed)
        if category is None or self._allowlisted(parsed):
            return parsed
        if self.allow_private and category != "cloud-metadata":
            return parsed
        raise UnsafeDestinationError(host, str(parsed), category)

    def resolve(self, host: str, port: int, resolver: Resolver) -> IPAddress:
        """Resolve ``host`` and check every address; return the first.

        Every address is checked, not only the one used: a name that resolves
        to a public and a private address is refused as a whole
        (:class:`~chimeway_core.errors.UnsafeDestinationError`). A literal IP
        host is checked without resolving.

        A host that resolves to no address raises :class:`OSError`, on
        purpose: it is a failed lookup like the resolver's own
        (:class:`socket.gaierror` is an :class:`OSError`), which propagates
        too, so a caller handles both with one ``except OSError`` (the
        webhook channel reports a temporary failure).
        """
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            addresses = list(resolver(host, port))
        else:
            addresses = [str(literal)]
        if not addresses:
            raise OSError("the host resolved to no address")
        checked = [self.check(host, a) for a in addresses]
        return checked[0]

"""Who is calling: the client address, honouring only trusted proxies.

``X-Forwarded-For`` is read right to left, skipping the addresses of trusted proxies; the
first untrusted address is the client. With no trusted proxies the header is ignored and
the socket peer is the client, so nobody can pick their own rate-limit bucket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["TrustedProxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed."""

    def __init__(self, networks: Sequence[str] = ()) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address for a request from ``peer`` with this ``X-Forwarded-For``.

        ``forwarded_for`` must hold *every* ``X-Forwarded-For`` line of the request, joined
        with ``", "`` in the order received: a proxy that adds its own line puts the hop
        it vouches for last, and the first line alone is what the client wrote.
        """
        peer = peer or "unknown"
        if not self._networks or not forwarded_for or not self._trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer
        return hops[0] if hops else peer

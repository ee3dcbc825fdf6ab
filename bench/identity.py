# -*- test-case-name: tests.unit.test_identity -*-
"""
Benchmark of the peer-identity layer of the TLS ports, with a CA directory of
IGTF size (one CA issuing the host, the user and the VOMS server, plus
C{--cas} more CAs, each with a CRL):

1. an in-memory TLS handshake (server and client, iosim) of a user proxy;
2. the identity of a VOMS proxy chain, not cached (once per connection):
   DN, AC checks, the VOMS server's CA path and CRL;
3. the identity asked again on the same connection (once per request);
4. the CA directory's change check (once per new connection).

Run from the repository root::

    .venv/bin/python -m bench.identity [--cas 150] [--repeat 5]

Figures are medians over the repetitions; the last line is a one-line summary
and the command.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from lbtwist.security import tls
from lbtwist.security.identity import PeerIdentity
from tests.certs import NOW, TestCA, make_ac, proxy_of, voms_extension, write_lsc

FQAN = "/testvo/Role=NULL/Capability=NULL"


def per_call(fn: Callable[[], object], n: int, repeat: int) -> float:
    """
    @return: the median seconds per call of C{fn} over C{repeat} runs of C{n}.
    """
    fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cas", type=int, default=150, help="more CAs in the CA directory")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="lbtwist-bench-id-"))
    ca = TestCA.create()
    ca_dir = base / "certificates"
    ca.install(ca_dir, ca.crl())
    for i in range(args.cas):
        other = TestCA.create(f"/DC=org/DC=bench{i}/CN=Bench CA {i}")
        other.install(ca_dir, other.crl())
    host = ca.host("localhost").write(base / "host.pem")
    user = ca.user()
    voms = ca.user("/DC=org/DC=example/OU=Services/CN=voms.example.org")
    voms_dir = base / "vomsdir"
    write_lsc(voms_dir, voms)
    ac = make_ac(user.cert, voms, [FQAN])
    chain = proxy_of(user, extra_extensions=[voms_extension(ac)]).full_chain
    proxy = proxy_of(user).write(base / "proxy.pem")

    clock = Clock()
    clock.advance(NOW.timestamp())
    source = tls.ServerContextSource(host, None, ca_dir, verify_time=NOW, clock=clock)
    creator = tls.ClientConnectionCreator(
        "localhost", tls.client_context(proxy, None, ca_dir, verify_time=NOW, crl="off")
    )
    addr = IPv4Address("TCP", "127.0.0.1", 9000)

    def handshake() -> None:
        sf = TLSMemoryBIOFactory(source, False, Factory.forProtocol(Protocol), clock)
        cf = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Protocol), clock)
        _, _, pump = iosim.connectedServerAndClient(
            lambda: sf.buildProtocol(addr), lambda: cf.buildProtocol(addr), clock=clock
        )
        pump.flush()
        pump.flush()

    identity = PeerIdentity.for_source(source, clock=clock, voms_dir=voms_dir)
    assert identity.of_chain(chain).fqans == (FQAN,)
    conn = SSL.Connection(source.getContext(), None)
    tls.verified_chain = lambda c: chain  # type: ignore[assignment]

    class Transport:
        def getHandle(self) -> SSL.Connection:
            return conn

    transport = Transport()
    figures = {
        "handshake_ms": per_call(handshake, 100, args.repeat) * 1e3,
        "identity_uncached_us": per_call(lambda: identity.of_chain(chain), 500, args.repeat) * 1e6,
        "identity_cached_us": per_call(
            lambda: identity.of_transport(transport), 100_000, args.repeat
        )
        * 1e6,
        "ca_dir_check_ms": per_call(source.ca_directory.changed, 100, args.repeat) * 1e3,
    }
    ncas = args.cas + 1
    print(f"TLS handshake, user proxy, {ncas} CAs in the directory: "
          f"{figures['handshake_ms']:.2f} ms")  # fmt: skip
    print(f"identity of a VOMS proxy, uncached: {figures['identity_uncached_us']:.0f} us")
    print(f"identity again on the same connection: {figures['identity_cached_us']:.2f} us")
    print(f"CA directory change check ({2 * ncas} files): {figures['ca_dir_check_ms']:.2f} ms")
    print(
        f"identity bench: handshake {figures['handshake_ms']:.2f} ms, identity "
        f"{figures['identity_uncached_us']:.0f} us uncached / "
        f"{figures['identity_cached_us']:.2f} us cached, CA dir check "
        f"{figures['ca_dir_check_ms']:.2f} ms ({ncas} CAs) -- "
        f".venv/bin/python -m bench.identity --cas {args.cas} --repeat {args.repeat}"
    )


if __name__ == "__main__":
    main()

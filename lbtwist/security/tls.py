# -*- test-case-name: tests.unit.test_tls -*-
"""
TLS for the query service and its clients, built directly with pyOpenSSL.

C{ssl:} endpoint strings cannot require client certificates, take a CA
directory or set store flags, so the server context is built here: TLS 1.2
minimum, client certificate required, trust anchors and CRLs loaded from a
CA directory in the IGTF hashed layout (C{<hash>.0}, C{<hash>.r0}), RFC 3820
proxies allowed, CRLs checked on every certificate of the chain. The
directory is re-read when its files change (see L{ServerContextSource}),
and L{tls_server_endpoint} wraps any listening endpoint, as tahoe-lafs's
C{_TLSEndpointWrapper} does.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from lbtwist import config
from lbtwist.config import (
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_QUERY_IDLE_TIMEOUT,
    DEFAULT_QUERY_MAX_CONNECTIONS,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT,
)
from lbtwist.security.identity import is_legacy_proxy, is_proxy, printable, slash_dn
from lbtwist.security.ratelimit import RateLimitedLog

log = Logger()

CRL_MODES = ("require", "if-present", "off")

#: Seconds between two identical TLS refusal lines (more are counted, not logged).
REFUSAL_LOG_INTERVAL = config.DEFAULT_TLS_LOG_INTERVAL
#: Most TLS refusal lines logged per interval in all (against floods of distinct ones).
REFUSAL_LOG_BURST = config.DEFAULT_TLS_LOG_BURST


def _x509_error(name: str, default: int) -> int:
    # The values come from the OpenSSL linked in; defaults are OpenSSL 3's.
    try:
        from OpenSSL._util import lib

        return int(getattr(lib, name))
    except (ImportError, AttributeError):
        return default


# OpenSSL X509_V_ERR_* codes the verify callback decides on.
_UNABLE_TO_GET_CRL = _x509_error("X509_V_ERR_UNABLE_TO_GET_CRL", 3)
_CRL_NOT_YET_VALID = _x509_error("X509_V_ERR_CRL_NOT_YET_VALID", 11)
_CRL_HAS_EXPIRED = _x509_error("X509_V_ERR_CRL_HAS_EXPIRED", 12)
_INVALID_CA = _x509_error("X509_V_ERR_INVALID_CA", 79)
_INVALID_PURPOSE = _x509_error("X509_V_ERR_INVALID_PURPOSE", 26)
_KEYUSAGE_NO_CERTSIGN = _x509_error("X509_V_ERR_KEYUSAGE_NO_CERTSIGN", 32)
_CERT_SIGNATURE_FAILURE = _x509_error("X509_V_ERR_CERT_SIGNATURE_FAILURE", 7)
#: What OpenSSL says of an end-entity certificate issuing a pre-RFC proxy.
_LEGACY_ISSUER_ERRORS = frozenset((_INVALID_CA, _INVALID_PURPOSE, _KEYUSAGE_NO_CERTSIGN))

#: Readable reasons of the X509 errors an admin meets (others: OpenSSL's text).
_REASONS = {
    _x509_error("X509_V_ERR_CERT_HAS_EXPIRED", 10): "certificate expired",
    _x509_error("X509_V_ERR_CERT_NOT_YET_VALID", 9): "certificate not yet valid",
    _x509_error("X509_V_ERR_CERT_REVOKED", 23): "certificate revoked",
    _x509_error("X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT", 2): "unknown CA",
    _x509_error("X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY", 20): "unknown CA",
    _x509_error("X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE", 21): "unknown CA",
    _x509_error("X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN", 19): "unknown CA",
    _x509_error("X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT", 18): "unknown CA",
    _CRL_HAS_EXPIRED: "CRL expired",
    _CRL_NOT_YET_VALID: "CRL not yet valid",
    _UNABLE_TO_GET_CRL: "no CRL of its CA (crl = require)",
    _x509_error("X509_V_ERR_CRL_SIGNATURE_FAILURE", 8): "bad CRL signature",
    _CERT_SIGNATURE_FAILURE: "bad signature",
    _x509_error("X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED", 38): "bad proxy chain (too long)",
    _x509_error("X509_V_ERR_PROXY_CERTIFICATES_NOT_ALLOWED", 40): (
        "bad proxy chain (proxies not allowed)"
    ),
    _x509_error("X509_V_ERR_INVALID_NON_CA", 37): "bad proxy chain (non-CA marked as CA)",
    _INVALID_CA: "bad proxy chain (issuer is not a CA)",
    _KEYUSAGE_NO_CERTSIGN: "bad proxy chain (issuer may not sign certificates)",
    _INVALID_PURPOSE: "certificate not usable for this purpose",
}

#: The TLS alert certificate_required (TLS 1.3), and OpenSSL's reason code of
#: "peer did not return a certificate" (TLS 1.2 sends handshake_failure).
_ALERT_CERTIFICATE_REQUIRED = 116
_SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE = 199

#: errnos of a passing shortage: the directory is not broken, retry later.
_TRANSIENT_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM))

_CERT_FILE = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")
_CRL_FILE = re.compile(r"^[0-9a-f]{8}\.r[0-9]+$")

#: Per-connection verification state (Twisted owns the connection's app data).
_VERIFY_STATE: WeakKeyDictionary[SSL.Connection, dict[int, x509.Certificate]] = WeakKeyDictionary()
#: The host name a client connection must find in the server's certificate.
_EXPECTED_HOST: WeakKeyDictionary[SSL.Connection, str] = WeakKeyDictionary()
#: The TLS protocol of each of our connections (weakly: it holds the connection).
_PROTOCOL: WeakKeyDictionary[SSL.Connection, weakref.ref[Any]] = WeakKeyDictionary()


class TLSConfigError(Exception):
    """
    Unusable TLS configuration (bad file, unknown mode).
    """


class TrustUnavailable(TLSConfigError):
    """
    The CA directory could not be read for a passing reason (descriptors or
    memory ran out): what was loaded before stays, the next connection retries.
    """


def _openssl_reason(code: int) -> str:
    try:
        from OpenSSL._util import ffi, lib

        text = ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
    except (ImportError, AttributeError):
        text = ""
    return f"{text} (X509 error {code})" if text else f"X509 error {code}"


def refusal_reason(code: int, cert: x509.Certificate | None = None) -> str:
    """
    @return: a readable reason for the X509 verification error C{code}
        (of C{cert}, when known).
    """
    reason = _REASONS.get(code) or _openssl_reason(code)
    if code == _CERT_SIGNATURE_FAILURE and cert is not None and is_proxy(cert):
        return "bad proxy chain (bad signature)"
    return reason


def peer_of(conn: SSL.Connection) -> tuple[str, str]:
    """
    @return: the peer address of one of our TLS connections, for a log line,
        and its host alone (C{"?"} when unknown).
    """
    ref = _PROTOCOL.get(conn)
    protocol = ref() if ref is not None else None
    try:
        # No protocol (gone) or no transport yet: the except below answers.
        address = protocol.transport.getPeer()  # type: ignore[union-attr]
    except Exception:
        return "unknown peer", "?"
    host = getattr(address, "host", None)
    if isinstance(host, str):
        host = printable(host)
        port = getattr(address, "port", "?")
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), host
    name = getattr(address, "name", None)
    if name is not None:
        text = printable(os.fsdecode(name) if name else "(unnamed)")
        return f"unix:{text}", text
    return printable(str(address)), printable(str(address))


#: Distinct refusal reasons counted per log (L{RefusalLog.count}).
MAX_REASONS = 64


class RefusalLog(RateLimitedLog):
    """
    Rate-limited log lines of refusals (a L{RateLimitedLog}): one line per key
    and C{interval} (repeats are counted and the count is given with the next
    line of the key), and at most C{burst} lines per interval in all.
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        logger: Logger | None = None,
        interval: float = REFUSAL_LOG_INTERVAL,
        burst: int = REFUSAL_LOG_BURST,
        max_keys: int = 1024,
    ) -> None:
        super().__init__(
            clock,
            lines=1,
            period=interval,
            burst=burst,
            max_keys=max_keys,
            inline=True,
            dropped="{dropped} more TLS refusal lines not logged in {interval} s",
            logger=log,
        )
        self._log = logger if logger is not None else log
        #: Refused handshakes by reason (for metrics; at most L{MAX_REASONS} reasons,
        #: the rest counted as C{"other"}).
        self.reasons: dict[str, int] = {}

    def count(self, reason: str) -> None:
        """
        Count one refusal of C{reason}.
        """
        reasons = self.reasons
        if reason not in reasons and len(reasons) >= MAX_REASONS:
            reason = "other"
        reasons[reason] = reasons.get(reason, 0) + 1

    @property
    def interval(self) -> float:
        """
        Seconds between two lines of a key (the window of the burst too).
        """
        return self.period

    def emit(self, key: Hashable, level: LogLevel, format: str, **kw: object) -> bool:
        """
        Log C{format} at C{level} unless a line of C{key} was logged within the
        interval or the interval's budget is spent.

        @return: whether the line was logged.
        """
        return self.emit_line(self._log, key, level, format, kw)


@attrs.frozen(eq=False)
class CATrust:
    """
    The trust anchors and CRLs read from a CA directory.

    @ivar broken: CA subject -> the file and reason, for each CA whose CRL
        file cannot be read or parsed (its chains are refused).
    """

    certs: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    broken: Mapping[x509.Name, str] = attrs.field(factory=dict)

    def has_crl(self, ca: x509.Name) -> bool:
        return any(c.issuer == ca for c in self.crls)


Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def _subject_hash(cert: x509.Certificate) -> str:
    return f"{crypto.X509.from_cryptography(cert).subject_name_hash():08x}"


class CADirectory:
    """
    A CA directory in the hashed layout, re-read when its files change.

    One object serves the TLS context and the VOMS checks of a port, so both
    see one trust.

    @ivar path: the directory.
    @ivar trust: what the last L{load} read (L{None} before).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._loaded: Fingerprint | None = None
        self.trust: CATrust | None = None

    def fingerprint(self) -> Fingerprint:
        """
        @return: (name, mtime_ns, ctime_ns, size, inode) of the directory and
            of every certificate and CRL file in it (-1s for a name that
            cannot be stat'ed, such as a dangling link).
        @raise TrustUnavailable: the directory cannot be listed for lack of
            descriptors or memory.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return ()
        entries = [(".", st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)]
        try:
            names = sorted(os.listdir(self.path))
        except OSError as e:
            if e.errno in _TRANSIENT_ERRNOS:
                raise TrustUnavailable(f"cannot list {self.path}: {e.strerror}") from e
            names = []
        for name in names:
            if not (_CERT_FILE.match(name) or _CRL_FILE.match(name)):
                continue
            try:
                fst = os.stat(self.path / name)
            except OSError:
                entries.append((name, -1, -1, -1, -1))
                continue
            entries.append((name, fst.st_mtime_ns, fst.st_ctime_ns, fst.st_size, fst.st_ino))
        return tuple(entries)

    def changed(self) -> bool:
        """
        @return: whether the directory changed since the last L{load} (or
            cannot be looked at now).
        """
        if self._loaded is None:
            return True
        try:
            return self.fingerprint() != self._loaded
        except TrustUnavailable:
            return True

    def load(self) -> CATrust:
        """
        Read every C{<hash>.N} certificate and C{<hash>.rN} CRL. A CRL file
        that cannot be read or parsed marks its CA broken (see
        L{CATrust.broken}); an unreadable certificate is skipped.

        @raise TrustUnavailable: a file could not be opened for lack of
            descriptors or memory (nothing is recorded: the next call retries).
        """
        fingerprint = self.fingerprint()
        certs: list[x509.Certificate] = []
        crls: list[x509.CertificateRevocationList] = []
        broken_files: dict[str, str] = {}
        for name, *_ in fingerprint[1:]:
            path = self.path / name
            is_crl = bool(_CRL_FILE.match(name))
            try:
                data = path.read_bytes()
            except OSError as e:
                if e.errno in _TRANSIENT_ERRNOS:
                    raise TrustUnavailable(f"cannot read {path}: {e.strerror}") from e
                why = e.strerror or str(e)
            else:
                try:
                    if is_crl:
                        crls.append(x509.load_pem_x509_crl(data))
                    else:
                        certs.extend(x509.load_pem_x509_certificates(data))
                    continue
                except ValueError as e:
                    why = f"not a PEM {'CRL' if is_crl else 'certificate'} ({e})"
            if is_crl:
                broken_files.setdefault(name.split(".", 1)[0], f"{path}: {why}")
            else:
                log.warn("skipping unreadable {path}: {why}", path=str(path), why=why)
        broken: dict[x509.Name, str] = {}
        if broken_files:
            for cert in certs:
                problem = broken_files.get(_subject_hash(cert))
                if problem is not None and cert.subject not in broken:
                    broken[cert.subject] = problem
                    log.critical(
                        "CRL {problem}: chains of the CA {ca} are refused until the file is "
                        "readable again (unless crl = off)",
                        problem=printable(problem),
                        ca=printable(slash_dn(cert.subject)),
                    )
        trust = CATrust(tuple(certs), tuple(crls), broken)
        # The first load of each port is in the start-up summary line; reloads are news.
        reload = self._loaded is not None
        self._loaded = fingerprint
        self.trust = trust
        if reload:
            log.info(
                "loaded {ncerts} CA certificates and {ncrls} CRLs from {path}",
                ncerts=len(certs),
                ncrls=len(crls),
                path=str(self.path),
            )
        return trust

    def current(self) -> CATrust:
        """
        @return: the trust, re-read first if the directory changed.
        @raise TrustUnavailable: it changed but cannot be read now (L{trust}
            keeps what was loaded before).
        """
        if self.trust is not None and not self.changed():
            return self.trust
        return self.load()


def _read_credentials(
    cert: str | os.PathLike[str], key: str | os.PathLike[str] | None
) -> tuple[list[x509.Certificate], Any]:
    try:
        data = Path(cert).read_bytes()
        certs = x509.load_pem_x509_certificates(data)
        key_data = Path(key).read_bytes() if key is not None else data
        private_key = serialization.load_pem_private_key(key_data, password=None)
    except (OSError, ValueError, TypeError) as e:
        raise TLSConfigError(f"cannot load certificate {cert} / key {key}: {e}") from e
    return certs, private_key


def _use_credentials(ctx: SSL.Context, certs: Sequence[x509.Certificate], key: Any) -> None:
    try:
        ctx.use_certificate(crypto.X509.from_cryptography(certs[0]))
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
        ctx.check_privatekey()
    except SSL.Error as e:
        raise TLSConfigError("private key does not match the certificate") from e


def _load_trust(ctx: SSL.Context, trust: CATrust, crl: str, verify_time: datetime | None) -> None:
    store = ctx.get_cert_store()
    assert store is not None
    if verify_time is not None:
        store.set_time(verify_time)
    for cert in trust.certs:
        try:
            store.add_cert(crypto.X509.from_cryptography(cert))
        except crypto.Error:
            pass  # duplicate
    flags = crypto.X509StoreFlags.ALLOW_PROXY_CERTS
    if crl != "off":
        for revocation_list in trust.crls:
            store.add_crl(revocation_list)
        flags |= crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL
    store.set_flags(flags)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _legacy_chain_ok(chain: Sequence[x509.Certificate]) -> bool:
    """
    Every non-CA certificate acting as an issuer must have its proxy as child.
    """
    for child, issuer in zip(chain, chain[1:], strict=False):
        if _is_ca(issuer):
            continue
        if not (is_proxy(child) or is_legacy_proxy(child)):
            return False
        if child.issuer != issuer.subject:
            return False
    return True


VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]
InfoCallback = Callable[[SSL.Connection, int, int], None]


def _refuse(
    refusals: RefusalLog,
    conn: SSL.Connection,
    role: str,
    reason: str,
    cert: x509.Certificate | None,
    depth: int,
    level: LogLevel = LogLevel.info,
) -> None:
    """
    Log a refused handshake: the peer address, the reason, and the subject
    of the failing certificate escaped and labelled unverified.
    """
    refusals.count(reason)
    peer, host = peer_of(conn)
    if cert is None:
        refusals.emit(
            (role, reason, host),
            level,
            "refusing TLS {role} {peer}: {reason}",
            role=role,
            peer=peer,
            reason=reason,
        )
        return
    subject = printable(slash_dn(cert.subject))
    refusals.emit(
        (role, reason, host, subject),
        level,
        'refusing TLS {role} {peer}: {reason} (unverified subject "{subject}", '
        'issuer "{issuer}", depth {depth})',
        role=role,
        peer=peer,
        reason=reason,
        subject=subject,
        issuer=printable(slash_dn(cert.issuer)),
        depth=depth,
    )


def _verify_callback(
    crl: str,
    allow_legacy_proxies: bool,
    *,
    check_host: bool = False,
    trust: CATrust | None = None,
    refusals: RefusalLog | None = None,
) -> VerifyCallback:
    broken = trust.broken if trust is not None and crl != "off" else {}
    limiter = refusals if refusals is not None else RefusalLog()
    role = "server" if check_host else "client"

    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        state = _VERIFY_STATE.setdefault(conn, {})
        c = cert.to_cryptography()
        if broken:
            problem = broken.get(c.issuer)
            if problem is not None:
                _refuse(limiter, conn, role, f"CRL unreadable ({problem})", c, depth,
                        LogLevel.critical)  # fmt: skip
                return False
        if not ok:
            if errno == _UNABLE_TO_GET_CRL:
                if crl == "if-present":
                    return True
                _refuse(limiter, conn, role, refusal_reason(errno), c, depth, LogLevel.warn)
                return False
            if errno in (_CRL_HAS_EXPIRED, _CRL_NOT_YET_VALID):
                reason = refusal_reason(errno) + "; is fetch-crl running?"
                _refuse(limiter, conn, role, reason, c, depth, LogLevel.critical)
                return False
            if (
                allow_legacy_proxies
                and depth > 0
                and errno in _LEGACY_ISSUER_ERRORS
                and not _is_ca(c)
            ):
                # A pre-RFC proxy's issuer is an end-entity certificate; the
                # chain's shape is checked once complete (depth 0).
                return True
            _refuse(limiter, conn, role, refusal_reason(errno, c), c, depth)
            return False
        state[depth] = c
        if depth == 0 and check_host:
            host = _EXPECTED_HOST.get(conn)
            if host is not None:
                try:
                    _verify_host(c, host)
                except VerificationError:
                    reason = f"certificate does not match host {printable(host)}"
                    _refuse(limiter, conn, role, reason, c, depth)
                    return False
        if depth == 0 and allow_legacy_proxies:
            chain = [state[d] for d in sorted(state)]
            if not _legacy_chain_ok(chain):
                reason = "bad proxy chain (a non-CA issuer's child is not its proxy)"
                _refuse(limiter, conn, role, reason, c, depth)
                return False
        return True

    return verify


def _peek_ssl_reason() -> int:
    try:
        from OpenSSL._util import lib

        return int(lib.ERR_GET_REASON(lib.ERR_peek_error()))
    except (ImportError, AttributeError):
        return 0


def _handshake_info(refusals: RefusalLog) -> InfoCallback:
    """
    An info callback logging handshakes refused for want of a client
    certificate (the verify callback never sees those).
    """

    def info(conn: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_WRITE_ALERT != SSL.SSL_CB_WRITE_ALERT or conn in _VERIFY_STATE:
            return
        try:
            if (ret & 0xFF) == _ALERT_CERTIFICATE_REQUIRED or (
                _peek_ssl_reason() == _SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
            ):
                _refuse(refusals, conn, "client", "no client certificate", None, 0)
        except Exception:
            log.failure("logging a refused TLS handshake")

    return info


def server_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str] | None,
    ca_dir: str | os.PathLike[str] | CATrust,
    *,
    crl: str = "if-present",
    allow_legacy_proxies: bool = False,
    verify_time: datetime | None = None,
    refusals: RefusalLog | None = None,
) -> SSL.Context:
    """
    Build the query server's TLS context.

    @param cert: PEM host certificate (possibly followed by its chain).
    @param key: PEM key (L{None}: in the certificate file).
    @param ca_dir: the CA directory, or an already loaded L{CATrust}.
    @param crl: C{"require"} (a CA without CRL fails), C{"if-present"} (only
        CAs with a CRL are checked) or C{"off"}. Under both first modes a CA
        whose CRL file is broken fails.
    @param allow_legacy_proxies: accept pre-RFC Globus proxies.
    @param verify_time: check validity at this time instead of OpenSSL's
        clock (for tests).
    @param refusals: where refused handshakes are logged.
    """
    if crl not in CRL_MODES:
        raise TLSConfigError(f"crl must be one of {', '.join(CRL_MODES)}, not {crl!r}")
    trust = ca_dir if isinstance(ca_dir, CATrust) else CADirectory(ca_dir).load()
    certs, private_key = _read_credentials(cert, key)
    refusals = refusals if refusals is not None else RefusalLog()
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_id(b"lbtwist-query")
    _use_credentials(ctx, certs, private_key)
    _load_trust(ctx, trust, crl, verify_time)
    if trust.certs:
        ctx.set_client_ca_list(
            [crypto.X509.from_cryptography(c).get_subject() for c in trust.certs]
        )
    ctx.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
        _verify_callback(crl, allow_legacy_proxies, trust=trust, refusals=refusals),
    )
    ctx.set_verify_depth(32)
    ctx.set_info_callback(_handshake_info(refusals))
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ServerContextSource:
    """
    Hands out server TLS connections, rebuilding the context when the CA
    directory changes (fetch-crl replaces CRLs; OpenSSL caches them).

    When the directory changed but cannot be read for lack of descriptors
    or memory, the previous context stays and the next connection retries:
    never a context without the CRLs.

    @ivar ca_directory: the port's L{CADirectory} (share it with
        L{lbtwist.security.identity.PeerIdentity} so VOMS checks see the same trust).
    @ivar refusals: the rate-limited log of refused handshakes.
    """

    def __init__(
        self,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str] | None,
        ca_dir: str | os.PathLike[str],
        *,
        crl: str = "if-present",
        allow_legacy_proxies: bool = False,
        verify_time: datetime | None = None,
        clock: IReactorTime | None = None,
        log_interval: float = REFUSAL_LOG_INTERVAL,
        log_burst: int = REFUSAL_LOG_BURST,
    ) -> None:
        self.verify_time = verify_time
        self.cert = cert
        self.key = key
        self.ca_directory = CADirectory(ca_dir)
        self.crl = crl
        self.allow_legacy_proxies = allow_legacy_proxies
        self.refusals = RefusalLog(clock, interval=log_interval, burst=log_burst)
        self._context: SSL.Context | None = None
        self._trust: CATrust | None = None
        self.getContext()  # fail early on a bad configuration

    def getContext(self) -> SSL.Context:
        """
        @return: the current context, rebuilt if the CA directory changed.
        """
        try:
            trust = self.ca_directory.current()
            if self._context is None or trust is not self._trust:
                self._context = server_context(
                    self.cert,
                    self.key,
                    trust,
                    crl=self.crl,
                    allow_legacy_proxies=self.allow_legacy_proxies,
                    verify_time=self.verify_time,
                    refusals=self.refusals,
                )
                self._trust = trust
        except TLSConfigError as e:
            if self._context is None:
                raise
            self.refusals.emit(
                ("context",),
                LogLevel.error,
                "cannot rebuild the TLS context ({why}): keeping the previous one, "
                "retrying on the next connection",
                why=printable(str(e)),
            )
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self.getContext(), None)
        try:
            _PROTOCOL[conn] = weakref.ref(tlsProtocol)
        except TypeError:
            pass
        return conn


# Bounded ports: every TLS listener has a handshake timeout, an idle timeout and
# connection limits that unauthenticated connections cannot use up for verified
# peers (docs/limits.md).


def quote_for_log(text: str | None) -> str:
    """
    A value (a DN) for a log line: in double quotes, with C{"} and C{\\}
    escaped by a backslash and unprintable characters as C{\\xNN},
    C{\\uNNNN}; C{-} (unquoted) for L{None}.
    """
    if text is None:
        return "-"
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1] if ord(ch) > 0xFF else f"\\x{ord(ch):02x}")
    return '"' + "".join(out) + '"'


@attrs.frozen
class PortLimits:
    """
    The bounds of one TLS port.

    @ivar handshake_timeout: seconds from accept to a completed TLS handshake
        (client certificate verified); then the connection is closed.
    @ivar idle_timeout: seconds an established connection may go without a
        byte in either direction (not counted while the application protocol
        says it is C{busy}).
    @ivar max_connections: established (verified) connections at once; one
        more closes the least recently active one.
    @ivar max_handshakes: connections in the TLS handshake at once; one more
        closes the oldest of them.
    @ivar max_handshakes_per_address: connections in the handshake from one
        peer address; one more closes the oldest of them.
    @ivar max_connections_per_address: connections (in the handshake or
        established) from one peer address; one more closes the oldest of
        them in the handshake, or is refused if all are established.
    """

    handshake_timeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_QUERY_IDLE_TIMEOUT
    max_connections: int = DEFAULT_QUERY_MAX_CONNECTIONS
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    max_handshakes_per_address: int = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS


@attrs.define
class PortStats:
    """
    Counters of one bounded TLS port.
    """

    accepted: int = 0
    established: int = 0
    refused_per_address: int = 0
    closed_handshakes: int = 0
    closed_established: int = 0
    handshake_timeouts: int = 0
    idle_timeouts: int = 0


def _address_key(peer: object) -> str:
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else "local"


def _peer_text(peer: object) -> str:
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if host is None:
        return "a local peer"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class BoundedTLSProtocol(BufferingTLSTransport):
    """
    A server TLS connection under its port's L{PortLimits}: closed if its
    handshake does not complete in time, counted as established once it has
    (the client certificate is verified then), closed when idle.

    @ivar peer_address: the peer's host (the key of per-address limits).
    @ivar last_activity: when a byte was last received or written.
    """

    factory: BoundedTLSFactory

    def __init__(
        self, factory: BoundedTLSFactory, wrappedProtocol: IProtocol, _connectWrapped: bool = True
    ) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self.peer: object = None
        self.peer_address = "local"
        self.established = False
        self._admitted = False
        self._timer: IDelayedCall | None = None
        self._seconds = seconds = factory.clock.seconds
        self.last_activity = seconds()
        aggregate: Callable[[bytes], None] = self.write  # Twisted's is unannotated

        def write(data: bytes) -> None:
            self.last_activity = seconds()
            aggregate(data)

        # Per connection, the write that stamps the activity (mypy forbids the assignment).
        self.write = write  # type: ignore[method-assign]

    @property
    def peer_text(self) -> str:
        """
        The peer for log lines (C{host:port}).
        """
        return _peer_text(self.peer)

    def makeConnection(self, transport: ITCPTransport) -> None:
        self.peer = transport.getPeer()
        self.peer_address = _address_key(self.peer)
        if not self.factory.admit(self):
            # Refused before any TLS: the application never sees it.
            self.transport = transport
            transport.abortConnection()
            return
        self._admitted = True
        factory = self.factory
        self._timer = factory.clock.callLater(
            factory.limits.handshake_timeout, self._handshake_timed_out
        )
        super().makeConnection(transport)  # type: ignore[no-untyped-call]  # Twisted's TLSMemoryBIOProtocol is unannotated

    def _checkHandshakeStatus(self) -> None:
        super()._checkHandshakeStatus()  # type: ignore[no-untyped-call]  # Twisted's TLSMemoryBIOProtocol is unannotated
        if self._handshakeDone and not self.established and self._admitted and not self._aborted:
            self.established = True
            self._cancel_timer()
            factory = self.factory
            self.last_activity = factory.clock.seconds()
            self._timer = factory.clock.callLater(factory.limits.idle_timeout, self._idle_check)
            factory.handshake_done(self)

    def dataReceived(self, data: bytes) -> None:
        self.last_activity = self._seconds()
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # Twisted's TLSMemoryBIOProtocol is unannotated

    def writeSequence(self, sequence: Iterable[bytes]) -> None:
        self.last_activity = self._seconds()
        super().writeSequence(sequence)

    def abortConnection(self) -> None:
        """
        Close at once (as Twisted's, with a typed signature for the callers here).
        """
        super().abortConnection()  # type: ignore[no-untyped-call]  # Twisted's TLSMemoryBIOProtocol is unannotated

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshake_timed_out(self) -> None:
        self._timer = None
        factory = self.factory
        factory.stats.handshake_timeouts += 1
        factory.refusals.emit(
            "handshake-timeout",
            LogLevel.warn,
            "{port}: closing the connection of {peer}: no TLS handshake within {timeout} s"
            " (tls-handshake-timeout)",
            port=factory.name,
            peer=_peer_text(self.peer),
            timeout=factory.limits.handshake_timeout,
        )
        self.abortConnection()

    def _idle_check(self) -> None:
        self._timer = None
        factory = self.factory
        clock, timeout = factory.clock, factory.limits.idle_timeout
        idle = clock.seconds() - self.last_activity
        if idle < timeout:
            self._timer = clock.callLater(timeout - idle, self._idle_check)
            return
        if getattr(self.wrappedProtocol, "busy", False):
            # The application is still working on a request (a long answer, a
            # stream): silence is its, not the peer's.
            self._timer = clock.callLater(timeout, self._idle_check)
            return
        factory.stats.idle_timeouts += 1
        factory.refusals.emit(
            "idle-timeout",
            LogLevel.info,
            "{port}: closing the connection of {peer}: idle for {timeout} s ({option})",
            port=factory.name,
            peer=_peer_text(self.peer),
            timeout=timeout,
            option=f"{factory.port}-idle-timeout",
        )
        self.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        if not self._admitted:
            return
        self._admitted = False
        self.factory.forget(self)
        super().connectionLost(reason)


class BoundedTLSFactory(TLSMemoryBIOFactory):
    """
    Server-side TLS around C{wrapped_factory}, under C{limits}.

    @ivar handshaking: connections in the handshake, oldest first.
    @ivar connected: established connections.
    @ivar port: C{"store"}, C{"query"}: names the port in log lines and
        its options.
    """

    protocol = BoundedTLSProtocol

    def __init__(
        self,
        context_source: IOpenSSLServerConnectionCreator,
        wrapped_factory: IProtocolFactory,
        *,
        limits: PortLimits,
        clock: IReactorTime,
        port: str = "tls",
        on_established: Callable[[BoundedTLSProtocol], object] | None = None,
    ) -> None:
        super().__init__(context_source, False, wrapped_factory, clock)
        self.limits = limits
        self.clock = clock
        self.port = port
        self.name = f"{port} port"
        self.on_established = on_established
        self.handshaking: dict[BoundedTLSProtocol, None] = {}
        self.connected: dict[BoundedTLSProtocol, None] = {}
        self._handshaking_at: dict[str, dict[BoundedTLSProtocol, None]] = {}
        self._connections_at: dict[str, int] = {}
        self.stats = PortStats()
        self.refusals = RefusalLog(clock)

    def connections_from(self, address: str) -> int:
        """
        @return: connections (in the handshake or established) from C{address}.
        """
        return self._connections_at.get(address, 0)

    def admit(self, proto: BoundedTLSProtocol) -> bool:
        """
        Count a new connection in, closing the oldest handshake in its way;
        L{False}: refused (its address has its most established connections).
        """
        limits = self.limits
        address = proto.peer_address
        at = self._handshaking_at.get(address)
        if self._connections_at.get(address, 0) >= limits.max_connections_per_address:
            if not at:
                self.stats.refused_per_address += 1
                self._warn(
                    "per-address",
                    "refusing a connection of {peer}: {limit} connections from that address"
                    " already ({option})",
                    proto,
                    limits.max_connections_per_address,
                    "max-connections-per-address",
                )
                return False
            self._close_handshake(
                next(iter(at)), limits.max_connections_per_address, "max-connections-per-address"
            )
        elif at is not None and len(at) >= limits.max_handshakes_per_address:
            self._close_handshake(
                next(iter(at)), limits.max_handshakes_per_address, "max-handshakes-per-address"
            )
        elif len(self.handshaking) >= limits.max_handshakes:
            self._close_handshake(
                next(iter(self.handshaking)), limits.max_handshakes, "max-handshakes"
            )
        self.stats.accepted += 1
        self._connections_at[address] = self._connections_at.get(address, 0) + 1
        self._handshaking_at.setdefault(address, {})[proto] = None
        self.handshaking[proto] = None
        return True

    def handshake_done(self, proto: BoundedTLSProtocol) -> None:
        """
        C{proto}'s handshake completed: it counts as established now, closing
        the least recently active established connection past the limit.
        """
        self._drop_handshake(proto)
        self.connected[proto] = None
        self.stats.established += 1
        if len(self.connected) > self.limits.max_connections:
            victim = min(
                (p for p in self.connected if p is not proto), key=lambda p: p.last_activity
            )
            self.stats.closed_established += 1
            self._warn(
                "max-connections",
                "closing the least recently active connection, of {peer}: {limit}"
                " established connections at once ({option})",
                victim,
                self.limits.max_connections,
                f"{self.port}-max-connections",
            )
            self.forget(victim)
            victim.abortConnection()
        if self.on_established is not None:
            self.on_established(proto)

    def forget(self, proto: BoundedTLSProtocol) -> None:
        """
        C{proto} is gone (or being closed): it counts no more. Idempotent.
        """
        if proto in self.connected:
            del self.connected[proto]
        elif proto in self.handshaking:
            self._drop_handshake(proto)
        else:
            return
        address = proto.peer_address
        left = self._connections_at.get(address, 0) - 1
        if left > 0:
            self._connections_at[address] = left
        else:
            self._connections_at.pop(address, None)

    def _drop_handshake(self, proto: BoundedTLSProtocol) -> None:
        self.handshaking.pop(proto, None)
        at = self._handshaking_at.get(proto.peer_address)
        if at is not None:
            at.pop(proto, None)
            if not at:
                del self._handshaking_at[proto.peer_address]

    def _close_handshake(self, victim: BoundedTLSProtocol, limit: int, option: str) -> None:
        self.stats.closed_handshakes += 1
        self._warn(
            option,
            "closing the oldest connection in the TLS handshake, of {peer}: {limit} at once"
            " ({option})",
            victim,
            limit,
            option,
        )
        self.forget(victim)
        victim.abortConnection()

    def _warn(
        self, kind: str, format: str, proto: BoundedTLSProtocol, limit: int, option: str
    ) -> None:
        self.refusals.emit(
            kind,
            LogLevel.warn,
            "{port}: " + format,
            port=self.name,
            peer=_peer_text(proto.peer),
            limit=limit,
            option=option,
        )


@implementer(IStreamServerEndpoint)
@attrs.frozen
class TLSServerEndpoint:
    """
    TLS (with our context) around any stream server endpoint, under
    C{limits} (L{PortLimits} defaults when L{None}).

    @ivar port: names the port in log lines (C{"store"}, C{"query"}).
    @ivar on_established: called with each connection whose handshake completed.
    """

    endpoint: IStreamServerEndpoint
    context_source: IOpenSSLServerConnectionCreator
    limits: PortLimits | None = None
    clock: IReactorTime | None = None
    port: str = "tls"
    on_established: Callable[[BoundedTLSProtocol], object] | None = None
    #: The factories of the listening ports (for metrics: connections, refusals).
    factories: list[BoundedTLSFactory] = attrs.field(factory=list, eq=False)

    def factory_for(self, protocolFactory: IProtocolFactory) -> BoundedTLSFactory:
        """
        @return: the TLS factory wrapping C{protocolFactory}.
        """
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        assert clock is not None
        factory = BoundedTLSFactory(
            self.context_source,
            protocolFactory,
            limits=self.limits if self.limits is not None else PortLimits(),
            clock=clock,
            port=self.port,
            on_established=self.on_established,
        )
        self.factories.append(factory)
        return factory

    def listen(self, protocolFactory: IProtocolFactory) -> Any:
        """
        @return: a Deferred firing with the L{IListeningPort}.
        """
        return self.endpoint.listen(self.factory_for(protocolFactory))


def tls_server_endpoint(
    endpoint: IStreamServerEndpoint,
    context_source: IOpenSSLServerConnectionCreator,
    *,
    limits: PortLimits | None = None,
    clock: IReactorTime | None = None,
    port: str = "tls",
    on_established: Callable[[BoundedTLSProtocol], object] | None = None,
) -> IStreamServerEndpoint:
    """
    Wrap a listening endpoint so its connections speak TLS with our context,
    bounded by C{limits} (see L{PortLimits}).
    """
    return TLSServerEndpoint(endpoint, context_source, limits, clock, port, on_established)


def verified_chain(connection: SSL.Connection) -> list[x509.Certificate]:
    """
    @return: the peer's verified chain, leaf first (empty before the
        handshake or without a peer certificate).
    """
    chain = connection.get_verified_chain(as_cryptography=True)
    return list(chain) if chain else []


def transport_chain(transport: object) -> list[x509.Certificate]:
    """
    @return: the verified chain of a TLS transport (C{getHandle()} is its
        L{SSL.Connection}), empty if it is not one.
    """
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, SSL.Connection):
        return []
    return verified_chain(handle)


# Clients.


def _verify_host(cert: x509.Certificate, host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        verify_certificate_hostname(cert, host)
        return
    from service_identity.cryptography import verify_certificate_ip_address

    verify_certificate_ip_address(cert, host)


def client_context(
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
    ca_dir: str | os.PathLike[str] | CATrust,
    *,
    chain: Sequence[x509.Certificate] = (),
    crl: str = "if-present",
    verify_time: datetime | None = None,
) -> SSL.Context:
    """
    Build a client context presenting a certificate (typically a proxy).

    @param cert: PEM file with the certificate, optionally its key and chain
        (a grid proxy file: proxy, key, user certificate); L{None}: no
        client certificate.
    @param key: PEM key file (L{None}: the key is in C{cert}).
    @param chain: more chain certificates to send.
    """
    trust = ca_dir if isinstance(ca_dir, CATrust) else CADirectory(ca_dir).load()
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    if cert is not None:
        certs, private_key = _read_credentials(cert, key)
        _use_credentials(ctx, [*certs, *chain], private_key)
    if crl not in CRL_MODES:
        raise TLSConfigError(f"crl must be one of {', '.join(CRL_MODES)}, not {crl!r}")
    _load_trust(ctx, trust, crl, verify_time)
    ctx.set_verify(SSL.VERIFY_PEER, _verify_callback(crl, False, check_host=True, trust=trust))
    return ctx


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class ClientConnectionCreator:
    """
    Client connections to C{hostname} (SNI, and the server certificate must
    match it).
    """

    hostname: str
    context: SSL.Context

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        try:
            ipaddress.ip_address(self.hostname)
        except ValueError:
            conn.set_tlsext_host_name(self.hostname.encode("idna"))
        _EXPECTED_HOST[conn] = self.hostname
        try:
            _PROTOCOL[conn] = weakref.ref(tlsProtocol)
        except TypeError:
            pass
        conn.set_connect_state()
        return conn

# -*- test-case-name: tests.unit.test_cli_fast -*-
"""
The fast lane of C{lbtwist logevent} and C{lbtwist job-reg}.

The Job Wrapper and CREAM run C{logevent} once per event, so a call should cost
little more than the interpreter's start. The full path (argparse, the event
model of L{lbtwist.core.events} with attrs, typing, re and datetime under it)
costs several times that in imports alone. This lane handles the usual calls
with builtins only: it reads the options from a table, the catalogue as plain
rows (L{lbtwist.core.catalogue}), checks the values as the event parser does,
writes the line as L&B's unparser does (L{lbtwist.core.unparse}) and logs it
with the blocking producer (L{lbtwist.client.producer}, which imports no
Twisted either).

It never answers differently from the full path: a call it does not handle
in full - help, a missing or unknown option or value, a value the parser would
refuse or the full path warns about, a sub-job registration, an odd job id - it
hands back (C{None}) before it has done anything, and the full path runs as
ever, with its messages. C{tests/unit/test_cli_fast.py} runs both paths on the
same calls and compares the lines sent and the output.
"""

from __future__ import annotations

import time

from lbtwist.cli.common import (
    DEFAULT_SOCKET,
    SOCKET_ENV,
    TIMEOUT_ENV,
    env_first,
    producer_for,
    seconds_or_none,
)
from lbtwist.cli.identity import default_user
from lbtwist.cli.jobreg import DEFAULT_SERVER, PRIO_EXCL
from lbtwist.cli.logevent import (
    JOBID_ENV,
    PRIO_PROXY,
    PRIO_SYNC,
    SEQCODE_ENV,
    field_key,
)
from lbtwist.client.producer import DEFAULT_TIMEOUT
from lbtwist.core import catalogue
from lbtwist.core.errors import LBError, UnknownJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from lbtwist.cli.common import CLIContext
    from lbtwist.core.catalogue import EventRow, FieldRow

#: An option: (destination, takes a value); destination C{None}: not for this
#: lane (help).
Option = tuple["str | None", bool]

LOGEVENT_OPTIONS: dict[str, Option] = {
    "-h": (None, False),
    "--help": (None, False),
    "-j": ("jobid", True),
    "--jobid": ("jobid", True),
    "-s": ("source", True),
    "--source": ("source", True),
    "-e": ("event", True),
    "--event": ("event", True),
    "-c": ("sequence", True),
    "--sequence": ("sequence", True),
    "-p": ("priority", False),
    "--priority": ("priority", False),
    "-x": ("proxy", False),
    "--proxy": ("proxy", False),
    "--lbproxy": ("proxy", False),
    "-I": ("dont_increment", False),
    "--dont-increment": ("dont_increment", False),
    "--strict": ("strict", False),
    "-S": ("socket", True),
    "--socket": ("socket", True),
    "--lbproxy-store-sock": ("socket", True),
    "-U": ("user", True),
    "--user": ("user", True),
    "--lbproxy-user-dn": ("user", True),
    "-H": ("host", True),
    "--host": ("host", True),
    "-i": ("instance", True),
    "--instance": ("instance", True),
    "--source-instance": ("instance", True),
    "--timeout": ("timeout", True),
}

JOB_REG_OPTIONS: dict[str, Option] = {
    "-h": (None, False),
    "--help": (None, False),
    "-m": ("server", True),
    "--server": ("server", True),
    "-j": ("jobid", True),
    "--jobid": ("jobid", True),
    "-s": ("source", True),
    "--source": ("source", True),
    "-c": ("cream", False),
    "--cream": ("cream", False),
    "-l": ("jdl_file", True),
    "--jdl-file": ("jdl_file", True),
    # Sub-jobs (-n, -C, -S) are the full path's.
    "-n": (None, True),
    "--subjobs": (None, True),
    "-C": (None, False),
    "--collection": (None, False),
    "-S": (None, False),
    "--register-subjobs": (None, False),
    "-e": ("seed", True),
    "--seed": ("seed", True),
    "-P": ("pbs", False),
    "--pbs": ("pbs", False),
    "-W": ("wms_dn", True),
    "--wms-dn": ("wms_dn", True),
    "-x": ("proxy", False),
    "--proxy": ("proxy", False),
    "-E": ("exclusive", False),
    "--exclusive": ("exclusive", False),
    "-X": ("socket", True),
    "--socket": ("socket", True),
    "-U": ("user", True),
    "--user": ("user", True),
    "--ns": ("ns", True),
    "--timeout": ("timeout", True),
}

#: Keyword parameters of L{lbtwist.core.events.make_event}: a field of that name
#: cannot be passed to it (the full path's business).
_EVENT_PARAMS = frozenset((*catalogue.EVENT_ATTRIBUTES, "extra"))

#: gLite sequence code counters and their widths (as L{lbtwist.core.seqcode}).
COUNTERS = ("UI", "NS", "WM", "BH", "JSS", "LM", "LRMS", "APP", "LBS")
WIDTHS = (6, 10, 6, 10, 6, 6, 6, 6, 6)
#: Source (lower case) -> index of its counter.
SOURCE_COUNTER = {
    "userinterface": 0,
    "networkserver": 1,
    "workloadmanager": 2,
    "bighelper": 3,
    "jobcontroller": 4,
    "logmonitor": 5,
    "lrms": 6,
    "application": 7,
    "lbserver": 8,
}

#: What an unset field of each type is written as (as L{lbtwist.core.unparse}).
_NULL_BY_TYPE = {"int": "0", "port": "0", "double": "0.000000"}

#: Characters of a host name this lane accepts (the event parser's job-id host).
_HOST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"

#: The event parser's limits, with room to spare: longer calls take the full path.
_MAX_CHARS = 512 * 1024
_MAX_FIELDS = 90

#: The largest time L&B's DATE can write (year 9999), in microseconds.
_MAX_DATE = 253402300800 * 1_000_000


def scan(
    argv: Sequence[str], options: Mapping[str, Option], free_fields: bool
) -> tuple[dict[str, str | bool], list[tuple[str, str]]] | None:
    """
    Read C{argv} as the subcommand's argparse parser would, where that is plain:
    known options (C{-o VALUE}, C{--option VALUE}, C{--option=VALUE}, flags)
    and, with C{free_fields}, C{--field=VALUE} / C{--field VALUE}.

    @return: the values by destination (C{True} for a flag; the last one given
        wins) and the free fields in order, or C{None} for anything else (help,
        positional words, clustered or attached short options, a value that
        starts with C{-}, a missing value, a C{--timeout} that is not a number
        of seconds, even if a later one is: argparse checks each).
    """
    values: dict[str, str | bool] = {}
    fields: list[tuple[str, str]] = []
    i = 0
    n = len(argv)
    while i < n:
        token = argv[i]
        i += 1
        if token[:1] != "-" or token == "-" or token == "--":
            return None
        option = options.get(token)
        if option is None and "=" in token:
            name, _, value = token.partition("=")
            option = options.get(name)
            if option is not None:
                dest, takes = option
                if dest is None or not takes:
                    return None
                if dest == "timeout" and seconds_or_none(value) is None:
                    return None
                values[dest] = value
                continue
        if option is not None:
            dest, takes = option
            if dest is None:
                return None
            if not takes:
                values[dest] = True
                continue
            if i >= n or argv[i][:1] == "-":
                return None
            if dest == "timeout" and seconds_or_none(argv[i]) is None:
                return None
            values[dest] = argv[i]
            i += 1
            continue
        if not free_fields or token[:2] != "--" or len(token) < 3:
            return None
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i >= n or argv[i][:1] == "-":
                return None
            value = argv[i]
            i += 1
        fields.append((name, value))
    return values, fields


def _text(values: Mapping[str, str | bool], name: str) -> str | None:
    value = values.get(name)
    return value if isinstance(value, str) else None


def _timeout(values: Mapping[str, str | bool], env: Mapping[str, str]) -> float | None:
    """
    The producer timeout as L{lbtwist.cli.common.producer_timeout} finds it, or
    C{None} where that would refuse it.
    """
    text = _text(values, "timeout")
    if text is not None:
        return seconds_or_none(text)
    for name in TIMEOUT_ENV:
        text = env.get(name)
        if text:
            return seconds_or_none(text)
    return DEFAULT_TIMEOUT


def plain_jobid(text: str) -> tuple[str, int, str] | None:
    """
    C{https://host[:port]/unique} with a plain host name (no IPv6 address) and
    a printable ASCII unique part: (host, port, unique). C{None} for anything
    else, valid or not (the full path decides).
    """
    if not text.startswith("https://") or not text.isascii():
        return None
    authority, slash, unique = text[8:].partition("/")
    if not slash or not unique or "/" in unique or " " in unique or not unique.isprintable():
        return None
    return _authority(authority)


def _authority(authority: str) -> tuple[str, int, str] | None:
    host, colon, port_text = authority.partition(":")
    if not host or host.strip(_HOST_CHARS):
        return None
    port = 9000
    if colon:
        if not (port_text.isdigit() and port_text.isascii() and len(port_text) <= 5):
            return None
        port = int(port_text)
        if not 0 < port <= 65535:
            return None
    return host, port, ""


def parse_glite(text: str) -> list[int] | None:
    """
    The counters of a gLite sequence code (nine, the old eight-counter form
    given LBS 0), or C{None} for any other text.
    """
    parts = text.strip().split(":")
    if len(parts) not in (8, 9):
        return None
    counters = []
    for name, part in zip(COUNTERS, parts, strict=False):
        key, eq, digits = part.partition("=")
        if key != name or not eq or not digits.isdigit() or not digits.isascii():
            return None
        counters.append(int(digits))
    if len(counters) == 8:
        counters.append(0)
    return counters


def format_glite(counters: Sequence[int]) -> str:
    """
    The nine-counter text of a gLite sequence code.
    """
    return ":".join(
        f"{name}={value:0{width}d}"
        for name, width, value in zip(COUNTERS, WIDTHS, counters, strict=True)
    )


def next_seqcode(text: str | None, source: str) -> str:
    """
    As L{lbtwist.core.seqcode.next_seqcode}: the code a producer of C{source}
    logs after C{text} (zero counters when there is none; an opaque code as is).
    """
    counters = [0] * len(COUNTERS) if not text else parse_glite(text)
    if counters is None:
        return text or ""
    index = SOURCE_COUNTER.get(source.lower())
    if index is not None:
        counters[index] += 1
    return format_glite(counters)


def format_date(us: int) -> str:
    """
    L&B's C{DATE} of a time in microseconds since the epoch (UTC).
    """
    seconds, micro = divmod(us, 1_000_000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}"
        f"{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}.{micro:06d}"
    )


def escape(value: str) -> str:
    """
    As L{lbtwist.core.ulm.escape}.
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _is_int(value: str) -> bool:
    digits = value[1:] if value[:1] in "+-" else value
    return digits.isdigit() and digits.isascii()


def _is_double(value: str) -> bool:
    # [+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?
    if not value.isascii():
        return False
    body = value[1:] if value[:1] in "+-" else value
    mantissa, e, exponent = body.replace("E", "e").partition("e")
    if e and not _is_int(exponent):
        return False
    whole, dot, fraction = mantissa.partition(".")
    if (whole and not whole.isdigit()) or (fraction and not fraction.isdigit()):
        return False
    return bool(whole) or bool(dot and fraction)


def _sources() -> dict[str, str]:
    return {name.upper(): name for name in catalogue.SOURCES}


def field_value(spec: FieldRow, value: str, sources: Mapping[str, str]) -> str | None:
    """
    An event field's value as the event parser keeps it: C{""} when it drops
    it (empty, an enumeration's C{UNDEFINED}, a C{null} job id), the code name
    or source name as spelled in the catalogue, else the value; C{None} where
    the parser would refuse it or this lane cannot tell.
    """
    if not value:
        return ""
    type_, codes = spec[2], spec[4]
    if codes:
        upper = value.upper()
        if upper in codes:
            return upper
        return "" if upper == "UNDEFINED" else None
    if type_ in ("int", "port"):
        return value if _is_int(value) else None
    if type_ == "double":
        return value if _is_double(value) else None
    if type_ == "logsrc":
        return sources.get(value.upper())
    if type_ == "jobid":
        if value == "null":
            return ""
        return value if plain_jobid(value) is not None else None
    return value


def event_values(
    etype: EventRow, given: Mapping[str, str], sources: Mapping[str, str]
) -> dict[str, str] | None:
    """
    The fields of an event of C{etype} from C{given} (catalogue name -> value),
    as the event parser keeps them, or C{None} where it would refuse them (a
    value, a missing required field) or this lane cannot tell.
    """
    by_name = {spec[0]: spec for spec in etype[3]}
    values: dict[str, str] = {}
    for name, value in given.items():
        spec = by_name.get(name)
        if spec is None or name in _EVENT_PARAMS:
            return None
        kept = field_value(spec, value, sources)
        if kept is None:
            return None
        if kept:
            values[name] = kept
    for spec in etype[3]:
        if spec[3] and spec[0] not in values:
            return None
    return values


def unparse(
    etype: EventRow,
    *,
    jobid: str,
    date: int,
    host: str,
    user: str,
    source: str,
    seqcode: str,
    priority: int,
    src_instance: str,
    values: Mapping[str, str],
) -> str:
    """
    The event as L&B's unparser writes it (as L{lbtwist.core.unparse.unparse_event}),
    without the final LF.
    """
    parts = [
        f"DATE={format_date(date)} ",
        f'HOST="{escape(host)}" ',
        "PROG=edg-wms ",
        "LVL=SYSTEM ",
        f"DG.PRIORITY={priority} ",
        f'DG.SOURCE="{escape(source)}" ',
        f'DG.SRC_INSTANCE="{escape(src_instance)}" ',
        f'DG.EVNT="{etype[0]}" ',
        f'DG.JOBID="{escape(jobid)}" ',
        f'DG.SEQCODE="{escape(seqcode)}" ',
        f'DG.USER="{escape(user)}" ',
    ]
    for name, wire_key, type_, _, codes, null_value in etype[3]:
        value = values.get(name)
        if not value:
            value = "UNDEFINED" if codes else null_value or _NULL_BY_TYPE.get(type_, "")
        parts.append(f'{wire_key}="{escape(value)}" ')
    return "".join(parts)


def _sendable(*texts: str) -> bool:
    """
    Whether the texts fit the parser's limits and encode as UTF-8.
    """
    if sum(map(len, texts)) > _MAX_CHARS:
        return False
    for text in texts:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def _event_type(name: str) -> EventRow | None:
    return catalogue.find_event(name)


def _common(
    values: Mapping[str, str | bool], ctx: CLIContext
) -> tuple[str, str, int, float, str] | None:
    """
    What both commands log and use alike: (host, user, date, timeout, socket).
    """
    timeout = _timeout(values, ctx.env)
    if timeout is None:
        return None
    host = _text(values, "host") or ctx.hostname()
    user = _text(values, "user") or default_user(ctx.env, ctx.login)
    date = ctx.now()
    if not host or not user or not 0 <= date < _MAX_DATE:
        return None
    path = _text(values, "socket") or env_first(ctx.env, SOCKET_ENV) or DEFAULT_SOCKET
    return host, user, date, timeout, path


def logevent(argv: Sequence[str], ctx: CLIContext) -> int | None:
    """
    C{lbtwist logevent ARGV}, or C{None} to hand it to the full path.
    """
    scanned = scan(argv, LOGEVENT_OPTIONS, True)
    if scanned is None:
        return None
    opts, pairs = scanned
    env = ctx.env
    event_name = _text(opts, "event")
    source_text = _text(opts, "source")
    jobid = _text(opts, "jobid") or env_first(env, *JOBID_ENV)
    if not event_name or not source_text or not jobid or plain_jobid(jobid) is None:
        return None
    etype = _event_type(event_name)
    sources = _sources()
    source = sources.get(source_text.upper())
    if etype is None or source is None:
        return None
    own = {field_key(spec[0]): spec[0] for spec in etype[3]}
    given: dict[str, str] = {}
    for name, value in pairs:
        canonical = own.get(field_key(name))
        if canonical is None:
            # Another type's field (a warning) or none at all (an error).
            return None
        given[canonical] = value
    values = event_values(etype, given, sources)
    common = _common(opts, ctx)
    if values is None or common is None or len(values) > _MAX_FIELDS:
        return None
    host, user, date, timeout, path = common
    instance = _text(opts, "instance") or ""
    dont_increment = bool(opts.get("dont_increment"))
    code = _text(opts, "sequence") or None
    if code is None:
        code = env_first(env, *SEQCODE_ENV)
    cream = jobid.rpartition("/")[2].startswith("CREAM")
    if code is not None and parse_glite(code) is None:
        # An opaque code: only a direct CREAM job's, and only a plain one.
        if not cream or code.startswith("UI=") or not code.isprintable():
            return None
        if any(c.isspace() or c == '"' for c in code):
            return None
    if not _sendable(jobid, host, user, instance, code or "", *values.values()):
        return None

    def logged(current: str | None) -> str:
        if dont_increment and current:
            return current
        return next_seqcode(current, source)

    priority = PRIO_PROXY | (PRIO_SYNC if opts.get("priority") else 0)
    with producer_for(path, timeout, ctx) as producer:
        if code is None and not cream:
            try:
                asked = producer.sequence_code(jobid)
            except UnknownJob as e:
                raise UnknownJob(f"{e.message}; give -c or set GLITE_WMS_SEQUENCE_CODE") from None
            seqcode = logged(asked)
        else:
            seqcode = logged(code)
        producer.log(
            unparse(
                etype,
                jobid=jobid,
                date=date,
                host=host,
                user=user,
                source=source,
                seqcode=seqcode,
                priority=priority,
                src_instance=instance,
                values=values,
            )
        )
    ctx.stdout.write(next_seqcode(seqcode, source) + "\n")
    return 0


def _b64_md5(data: bytes) -> str:
    # As lbtwist.core.jobid: URL-safe base64 of the MD5, without padding.
    import binascii

    try:
        from _md5 import md5
    except ImportError:  # pragma: no cover - a Python without its own MD5
        from hashlib import md5
    text = binascii.b2a_base64(md5(data).digest(), newline=False).decode("ascii")
    return text.replace("+", "-").replace("/", "_").rstrip("=")


def job_reg(argv: Sequence[str], ctx: CLIContext) -> int | None:
    """
    C{lbtwist job-reg ARGV} for one job (no sub-jobs), or C{None} to hand it
    to the full path.
    """
    scanned = scan(argv, JOB_REG_OPTIONS, False)
    if scanned is None:
        return None
    opts, _ = scanned
    cream = bool(opts.get("cream"))
    sources = _sources()
    source = sources.get((_text(opts, "source") or "").upper()) or (
        None if _text(opts, "source") else ("CREAMInterface" if cream else "NetworkServer")
    )
    etype = _event_type("RegJob")
    if source is None or etype is None:
        return None
    now = ctx.now()
    if not 0 <= now < _MAX_DATE:
        return None
    given_jobid = _text(opts, "jobid")
    if given_jobid:
        parsed = plain_jobid(given_jobid)
        if parsed is None:
            return None
        host, port, _ = parsed
        jobid = f"https://{host}:{port}/{given_jobid[8:].partition('/')[2]}"
    else:
        endpoint = _endpoint(_text(opts, "server") or DEFAULT_SERVER)
        if endpoint is None:
            return None
        host, port = endpoint
        if cream:
            digits = int.from_bytes(ctx.random_bytes(8)[:8], "big") % 10**9
            unique = f"CREAM{digits:09d}"
        else:
            seed = f"{host}\0{ctx.pid}\0{now}\0".encode() + ctx.random_bytes(16)
            unique = _b64_md5(seed)
        jobid = f"https://{host}:{port}/{unique}"
    fqdn = None if _text(opts, "ns") else ctx.fqdn()
    ns = _text(opts, "ns") or (
        f"https://{fqdn}:8443/ce-cream/services"
        if cream
        else f"https://{fqdn}:7443/glite_wms_wmproxy_server"
    )
    jdl = ""
    jdl_file = _text(opts, "jdl_file")
    if jdl_file:
        with open(jdl_file, encoding="utf-8") as f:
            jdl = f.read()
    seqcode = next_seqcode(None, source)
    jobtype = "PBS" if opts.get("pbs") else "CREAM" if cream else "SIMPLE"
    given = {"ns": ns, "jobtype": jobtype}
    if jdl:
        given["jdl"] = jdl
    wms_dn = _text(opts, "wms_dn")
    if wms_dn:
        given["wms_dn"] = wms_dn
    values = event_values(etype, given, sources)
    common = _common(opts, ctx)
    if values is None or common is None or not _sendable(jobid, *values.values()):
        return None
    host_name, user, _, timeout, path = common
    if not _sendable(host_name, user):
        return None
    line = unparse(
        etype,
        jobid=jobid,
        date=now,
        host=host_name,
        user=user,
        source=source,
        seqcode=seqcode,
        priority=PRIO_PROXY | (PRIO_EXCL if opts.get("exclusive") else 0),
        src_instance="",
        values=values,
    )
    with producer_for(path, timeout, ctx) as producer:
        [result] = producer.log_many([line])
    if isinstance(result, LBError):
        ctx.stderr.write(f"lbtwist job-reg: {jobid}: ERR {result.code} {result.message}\n")
        return 1
    lines = [] if given_jobid else [f"new jobid: {jobid}"]
    lines += ["", f'EDG_JOBID="{jobid}"', f'EDG_WL_SEQUENCE="{seqcode}"']
    lines += [f'GLITE_WMS_JOBID="{jobid}"', f'GLITE_WMS_SEQUENCE_CODE="{seqcode}"']
    ctx.stdout.write("\n".join(lines) + "\n")
    return 0


def _endpoint(text: str) -> tuple[str, int] | None:
    """
    As L{lbtwist.core.jobid.parse_endpoint} for a plain host name, else C{None}.
    """
    body = text.strip()
    if body.startswith("https://"):
        body = body[8:]
        if body.endswith("/"):
            body = body[:-1]
    if not body or "/" in body or not body.isascii():
        return None
    found = _authority(body)
    return None if found is None else found[:2]

# -*- test-case-name: tests.unit.test_cli -*-
"""
C{lbtwist job-reg}: register a job, option-compatible with C{glite-lb-job_reg}.

Output, as C{glite-lb-job_reg} prints it (shell-assignable), followed by the
C{GLITE_WMS_*} names that C{lbtwist logevent} reads::

    new jobid: https://lb.example.org:9000/...   (only when the id was generated)
    (empty line)
    EDG_JOBID="https://lb.example.org:9000/..."
    EDG_WL_SEQUENCE="UI=...:NS=0000000001:..."
    GLITE_WMS_JOBID="https://lb.example.org:9000/..."
    GLITE_WMS_SEQUENCE_CODE="UI=...:NS=0000000001:..."

With C{-n} the first name is C{EDG_WL_DAG_JOBID} (C{-C}: C{EDG_WL_COLLECTION_JOBID})
and the sub-job ids follow as C{EDG_WL_SUB_JOBID[<i>]="..."}; C{-S} registers the
sub-jobs too. The events are written as L&B's unparser writes them, C{DG.PRIORITY} 8
(the proxy flag, plus 64 with C{-E}), C{HOST} this machine's C{gethostname()}.
"""

from __future__ import annotations

from lbtwist.cli.common import (
    CLIContext,
    add_timeout_option,
    default_socket,
    producer_for,
    producer_timeout,
)
from lbtwist.cli.identity import default_user
from lbtwist.client.producer import DEFAULT_TIMEOUT
from lbtwist.core.errors import InvalidValue, LBError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from lbtwist.core.events import Event
    from lbtwist.core.jobid import JobId

#: The L&B server job ids are made on when C{-m} is not given.
DEFAULT_SERVER = "localhost:9000"

#: DG.PRIORITY bit: the registration must be new (C{-E}).
PRIO_EXCL = 64

#: DG.PRIORITY bit of events logged to the proxy.
PRIO_PROXY = 8


class Registration:
    """
    The events of one C{job-reg} run and what to print about them.

    (A plain class, not attrs: the fast lane imports this module.)
    """

    def __init__(
        self,
        jobid: JobId | str,
        generated: bool,
        collection: bool,
        seqcode: str,
        subjobs: tuple[JobId | str, ...],
        events: tuple[Event, ...],
    ) -> None:
        self.jobid = jobid
        self.generated = generated
        self.collection = collection
        self.seqcode = seqcode
        self.subjobs = subjobs
        self.events = events


def cream_jobid(host: str, port: int, rnd: bytes) -> JobId:
    """
    A CREAM-style job id C{https://host:port/CREAM<9 digits>}.
    """
    from lbtwist.core.jobid import JobId

    digits = int.from_bytes(rnd[:8], "big") % 10**9
    return JobId(host, port, f"CREAM{digits:09d}")


def build_registration(args: argparse.Namespace, ctx: CLIContext) -> Registration:
    """
    The RegJob events described by the options.

    @raise LBError: invalid options.
    """
    from lbtwist.core.events import make_event, source_name
    from lbtwist.core.jobid import JobId, generate, parse_endpoint, subjob
    from lbtwist.core.seqcode import next_seqcode

    if args.subjobs < 0:
        raise InvalidValue("-n must not be negative")
    if (args.register_subjobs or args.collection) and args.subjobs <= 0:
        raise InvalidValue("-S and -C need -n with a positive number of sub-jobs")
    now = ctx.now()
    if args.jobid:
        jobid = JobId.parse(args.jobid)
    else:
        host, port = parse_endpoint(args.server)
        if args.cream:
            jobid = cream_jobid(host, port, ctx.random_bytes(8))
        else:
            jobid = generate(host, port, now=now, pid=ctx.pid, rnd=ctx.random_bytes(16))
    source = source_name(args.source or ("CREAMInterface" if args.cream else "NetworkServer"))
    fqdn = ctx.fqdn()
    host = ctx.hostname()
    user = args.user or default_user(ctx.env, ctx.login)
    ns = args.ns or (
        f"https://{fqdn}:8443/ce-cream/services"
        if args.cream
        else f"https://{fqdn}:7443/glite_wms_wmproxy_server"
    )
    jdl = ""
    if args.jdl_file:
        with open(args.jdl_file, encoding="utf-8") as f:
            jdl = f.read()
    seqcode = next_seqcode(None, source)
    if args.pbs:
        jobtype = "PBS"
    elif args.cream:
        jobtype = "CREAM"
    elif args.subjobs:
        jobtype = "COLLECTION" if args.collection else "DAG"
    else:
        jobtype = "SIMPLE"
    fields: dict[str, Any] = {"ns": ns, "jobtype": jobtype}
    if jdl:
        fields["jdl"] = jdl
    if args.wms_dn:
        fields["wms_dn"] = args.wms_dn
    if args.subjobs:
        fields["nsubjobs"] = str(args.subjobs)
        fields["seed"] = args.seed
    common: dict[str, Any] = {"date": now, "host": host, "user": user, "source": source}
    parent = make_event(
        "RegJob",
        jobid=str(jobid),
        seqcode=seqcode,
        priority=PRIO_PROXY | (PRIO_EXCL if args.exclusive else 0),
        **common,
        **fields,
    )
    events = [parent]
    subjobs = tuple(subjob(jobid, args.seed, i) for i in range(args.subjobs))
    for sub in subjobs if args.register_subjobs else ():
        events.append(
            make_event(
                "RegJob",
                jobid=str(sub),
                seqcode=next_seqcode(None, source),
                ns=ns,
                jobtype="SIMPLE",
                parent=str(jobid),
                priority=PRIO_PROXY,
                **common,
            )
        )
    return Registration(
        jobid, not args.jobid, bool(args.collection), seqcode, subjobs, tuple(events)
    )


def format_output(reg: Registration) -> str:
    """
    What C{job-reg} prints for C{reg}.
    """
    if not reg.subjobs:
        name = "EDG_JOBID"
    else:
        name = "EDG_WL_COLLECTION_JOBID" if reg.collection else "EDG_WL_DAG_JOBID"
    lines = [f"new jobid: {reg.jobid}"] if reg.generated else []
    lines += ["", f'{name}="{reg.jobid}"', f'EDG_WL_SEQUENCE="{reg.seqcode}"']
    lines += [f'EDG_WL_SUB_JOBID[{i}]="{sub}"' for i, sub in enumerate(reg.subjobs)]
    lines += [f'GLITE_WMS_JOBID="{reg.jobid}"', f'GLITE_WMS_SEQUENCE_CODE="{reg.seqcode}"']
    return "\n".join(lines) + "\n"


def handle(args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.core.unparse import unparse_event

    reg = build_registration(args, ctx)
    path = args.socket or default_socket(ctx.env)
    with producer_for(path, producer_timeout(args, ctx.env), ctx) as producer:
        results = producer.log_many([unparse_event(e) for e in reg.events])
    for event, result in zip(reg.events, results, strict=True):
        if isinstance(result, LBError):
            ctx.stderr.write(
                f"lbtwist job-reg: {event.jobid}: ERR {result.code} {result.message}\n"
            )
            return 1
    ctx.stdout.write(format_output(reg))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "job-reg",
        allow_abbrev=False,
        help="register a job (glite-lb-job_reg)",
        description=(
            "Register a job with a RegJob event through the intake socket and print "
            "its job id and sequence code in shell-assignable form."
        ),
    )
    p.add_argument(
        "-m",
        "--server",
        default=DEFAULT_SERVER,
        help=f"L&B server host[:port] the job id is made on (default {DEFAULT_SERVER})",
    )
    p.add_argument("-j", "--jobid", help="register this job id instead of a new one")
    p.add_argument(
        "-s", "--source", help="event source (default NetworkServer; CREAMInterface with -c)"
    )
    p.add_argument(
        "-c", "--cream", action="store_true", help="a CREAM job: jobtype CREAM, id CREAM<digits>"
    )
    p.add_argument("-l", "--jdl-file", metavar="FILE", help="file with the job's JDL")
    p.add_argument(
        "-n", "--subjobs", type=int, default=0, metavar="N", help="a collection of N sub-jobs"
    )
    p.add_argument(
        "-e", "--seed", default="lbtwist", help="seed of the sub-job ids (default lbtwist)"
    )
    p.add_argument(
        "-C", "--collection", action="store_true", help="with -n: a collection (default a DAG)"
    )
    p.add_argument(
        "-S",
        "--register-subjobs",
        action="store_true",
        help="with -n: register the sub-jobs too",
    )
    p.add_argument("-P", "--pbs", action="store_true", help="a PBS job (jobtype PBS)")
    p.add_argument("-W", "--wms-dn", metavar="DN", help="the WMS's DN (DG.REGJOB.WMS_DN)")
    p.add_argument(
        "-x", "--proxy", action="store_true", help="register through the proxy (always so)"
    )
    p.add_argument(
        "-E", "--exclusive", action="store_true", help="the registration must be new (EXCL)"
    )
    p.add_argument(
        "-X",
        "--socket",
        metavar="SOCK",
        help="intake socket (default $GLITE_WMS_LBPROXY_STORE_SOCK, ./lbtwist-state/events.sock)",
    )
    p.add_argument("-U", "--user", metavar="DN", help="user DN to register as")
    p.add_argument("--ns", help="network server address logged in the RegJob")
    add_timeout_option(p, DEFAULT_TIMEOUT)
    p.set_defaults(handler=handle)

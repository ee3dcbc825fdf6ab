# -*- test-case-name: tests.e2e.test_devvoms -*-
"""
End-to-end: the development credentials with the real grid tools. C{lbtwist certs dev}
in a temporary directory, C{lbtwist certs proxy --voms testvo:/testvo/Role=admin},
then C{voms-proxy-info} shows the VO and the FQAN, C{grid-proxy-info} accepts the proxy,
and a C{twistd lbproxy} on the development defaults (no C{--voms-dir}) trusts the FQAN:
a policy rule on it lets the proxy read another user's job. Proxies that
C{grid-proxy-init} and C{voms-proxy-init} make from the development user's credential
get in too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest

from lbtwist.security.devcerts import USER2_NAME, USER_NAME
from lbtwist.security.identity import slash_dn
from tests.e2e import harness
from tests.e2e.harness import E2ECase, LBService, free_port

#: The grid tools these tests run.
TOOLS = ("voms-proxy-info", "grid-proxy-info", "grid-proxy-init", "voms-proxy-init")
#: Seconds a grid tool may take.
TOOL_TIMEOUT = 60.0

USER = slash_dn(USER_NAME)
USER2 = slash_dn(USER2_NAME)

POLICY = """\
resource "LB" {
    action "READ_ALL" {
        rule permit { fqan = "/testvo/Role=admin" }
    }
}
"""


class DevVomsTests(E2ECase):
    def setUp(self) -> None:
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise SkipTest(f"not installed: {', '.join(missing)}")
        self.base = Path(tempfile.mkdtemp(prefix="lbtwist-devvoms-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        # The service must find no VOMS directory in its environment: the development
        # default is under test.
        saved = os.environ.pop("X509_VOMS_DIR", None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, "X509_VOMS_DIR", saved)
        self.port = free_port()
        policy = self.base / "policy.conf"
        policy.write_text(POLICY)
        self.svc = LBService(
            str(self.base / "svc"),
            ["--query", f"tcp:{self.port}:interface=127.0.0.1", "--policy", str(policy)],
        )
        self.addCleanup(self.svc.cleanup)
        self.pki = Path(self.svc.state_dir) / "devcerts"
        self.proxy = self.pki / "user" / "x509up"
        self.ca_dir = self.pki / "certificates"
        # HOME: the grid tools write their random seed file there.
        self.env = {"X509_CERT_DIR": str(self.ca_dir), "HOME": str(self.base)}

    def lbtwist(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return harness.run_lbtwist(list(args), env={**self.env, **env})

    def tool(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            env={**os.environ, **self.env, **env},
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, result: subprocess.CompletedProcess[str]) -> str:
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def start(self) -> None:
        self.svc.start()
        harness.wait_for_port(self.port, self.svc)

    def register(self, n: int, owner: str) -> str:
        jobid = f"https://localhost:{self.port}/CREAM{n:09d}"
        self.ok(self.lbtwist("job-reg", "-c", "-j", jobid, "-U", owner, "-X", self.svc.socket_path))
        return jobid

    def status(self, jobid: str, *credential: str) -> subprocess.CompletedProcess[str]:
        return self.lbtwist("status", "--json", *credential, jobid)

    def test_voms_proxy(self) -> None:
        """
        C{certs dev}, C{certs proxy --voms}: the grid tools read the proxy and its AC, and
        the service on its development defaults trusts the FQAN (a READ_ALL rule on it
        lets the development user read the second user's job); the same user without
        the FQAN, or with another role, may not.
        """
        self.ok(self.lbtwist("certs", "dev", str(self.pki)))
        made = self.ok(
            self.lbtwist("certs", "proxy", str(self.pki), "--voms", "testvo:/testvo/Role=admin")
        )
        self.assertIn(f"VOMS directory (X509_VOMS_DIR): {self.pki / 'vomsdir'}", made)
        voms_env = {"X509_VOMS_DIR": str(self.pki / "vomsdir")}
        info = self.ok(self.tool("voms-proxy-info", "--all", "--file", str(self.proxy), **voms_env))
        lines = [" ".join(line.split()) for line in info.splitlines()]
        self.assertIn("=== VO testvo extension information ===", lines)
        self.assertIn("VO : testvo", lines)
        self.assertIn("attribute : /testvo/Role=admin/Capability=NULL", lines)
        self.assertIn("issuer : /DC=org/DC=lbtwist/OU=Hosts/CN=voms.localhost", lines)
        self.assertIn("uri : voms.localhost:15000", lines)
        self.ok(
            self.tool(
                "voms-proxy-info", "-acexists", "testvo", "-file", str(self.proxy), **voms_env
            )
        )
        grid = self.ok(self.tool("grid-proxy-info", "-file", str(self.proxy)))
        self.assertIn(f"identity : {USER}", [" ".join(line.split()) for line in grid.splitlines()])
        self.ok(self.tool("grid-proxy-info", "-exists", "-file", str(self.proxy)))

        self.start()
        jobid = self.register(1, USER2)
        seen = self.status(jobid, "--cert", str(self.proxy))
        self.assertEqual(seen.returncode, 0, seen.stderr + self.svc.log_text()[-3000:])
        (job,) = harness.parse_json_objects(seen.stdout)
        self.assertEqual(job["owner"], USER2)
        self.assertNotIn("ignoring VOMS attributes", self.svc.log_text())

        user = self.pki / "user"
        plain = self.status(
            jobid, "--cert", str(user / "usercert.pem"), "--key", str(user / "userkey.pem")
        )
        self.assertNotEqual(plain.returncode, 0, plain.stdout)
        self.assertIn("403", plain.stderr)
        self.ok(self.lbtwist("certs", "proxy", str(self.pki), "--voms", "testvo:/testvo/Role=user"))
        other = self.status(jobid, "--cert", str(self.proxy))
        self.assertNotEqual(other.returncode, 0, other.stdout)
        self.assertIn("403", other.stderr)

    def test_grid_tools_proxies(self) -> None:
        """
        C{grid-proxy-init} and C{voms-proxy-init} (no VOMS server: a plain proxy) take
        the development user's RSA credential, and the service accepts their proxies
        as the development user.
        """
        self.start()
        jobid = self.register(2, USER)
        user = self.pki / "user"
        for tool in ("grid-proxy-init", "voms-proxy-init"):
            out = self.base / f"{tool}.pem"
            result = self.tool(
                tool,
                "-cert",
                str(user / "usercert.pem"),
                "-key",
                str(user / "userkey.pem"),
                "-certdir",
                str(self.ca_dir),
                "-out",
                str(out),
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            # voms-proxy-init says so, but exits 0, when it cannot verify what it made.
            self.assertNotIn("Error", result.stdout + result.stderr)
            seen = self.status(jobid, "--cert", str(out))
            self.assertEqual(seen.returncode, 0, f"{tool}: {seen.stderr}")
            (job,) = harness.parse_json_objects(seen.stdout)
            self.assertEqual(job["owner"], USER, tool)

"""The real OpenID Provider (demo/idp/server.mjs, on oidc-provider) for tests."""
import json
import subprocess
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "demo" / "idp" / "server.mjs"
LOGIN = ROOT / "demo" / "idp" / "login.mjs"


def _require_node_modules():
    if not (ROOT / "node_modules" / "oidc-provider").exists():
        raise RuntimeError("node_modules is missing: run `npm ci` (make does)")


class OpenIdProvider:
    """Runs the OP on a free port until `stop()`."""

    def __init__(self, env=None, port=0):
        _require_node_modules()
        self.process = subprocess.Popen(["node", str(SERVER), "--port", str(port)], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if not line.startswith("ready "):
            self.process.kill()
            raise RuntimeError(f"IdP did not start: {line!r} {self.process.stderr.read()}")
        self.issuer = line.split(" ", 1)[1]
        self.upstream = self.issuer.split("://", 1)[1]

    def token(self, user="alice", groups=None, password="demo") -> str:
        """An access token from a full PKCE login as `user`."""
        cmd = ["node", str(LOGIN), "--issuer", self.issuer, "--user", user, "--password", password]
        if groups is not None:
            cmd += ["--groups", ",".join(groups)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return out.stdout.strip()

    def logins(self) -> int:
        with urllib.request.urlopen(f"{self.issuer}/__demo/logins") as r:
            return json.load(r)["logins"]

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()

"""Real Claude Code (`claude -p`) with an isolated HOME pointed at a gateway."""
import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLAUDE = ROOT / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float


def run_claude(home: Path, gateway_port: int, token: str | None = None, prompt="say hi", args=(), timeout=120,
               helper: str | None = None, settings_env: dict | None = None) -> Run:
    """Runs `claude -p` with an apiKeyHelper that prints `token`, or with the given `helper`
    command (and extra settings `env`, which Claude Code passes to the helper)."""
    if not CLAUDE.exists():
        raise RuntimeError(f"{CLAUDE} is missing: run `npm ci` (make does)")
    claude_dir = home / ".claude"
    claude_dir.mkdir(parents=True, exist_ok=True)
    if helper is None:
        token_file = home / "token"
        token_file.write_text(token or "")
        script = home / "helper.sh"
        script.write_text(f"#!/bin/sh\ncat '{token_file}'\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        helper = str(script)
    settings = {
        "apiKeyHelper": helper,
        "env": {
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{gateway_port}",
            "ANTHROPIC_MODEL": "claude-sonnet-4-6",
            "ANTHROPIC_DEFAULT_SONNET_MODEL": "claude-sonnet-4-6",
            "ANTHROPIC_DEFAULT_OPUS_MODEL": "claude-opus-4-7",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": "claude-haiku-4-5",
            "ANTHROPIC_SMALL_FAST_MODEL": "claude-haiku-4-5",
            "CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS": "1",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            **(settings_env or {}),
        },
    }
    (claude_dir / "settings.json").write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env["HOME"] = str(home)
    start = time.monotonic()
    out = subprocess.run([str(CLAUDE), "-p", *args, prompt], cwd=home, env=env, capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(out.returncode, out.stdout, out.stderr, time.monotonic() - start)

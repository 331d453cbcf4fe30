#!/usr/bin/env python3
"""Check the committed OpenAPI spec against the running server with schemathesis (run by .ci/run).

    python3 .ci/schemathesis.py [--poold target/release/poold] [--max-examples N] [--seed N]

Starts `poold serve` with a bearer token on a free port and a temporary database, runs
schemathesis (pinned below, installed into a virtual environment under target/) with every
check against the spec the server serves, and fails on any finding that is not in
openapi/schemathesis-allow.txt. Each allowed finding there names the check, the operation, the
status and problem code it answered with, a text its problem detail contains, and the reason
it is how poold should behave.
Allowed entries that did not occur are listed too (they may be stale).
"""

import argparse
import glob
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCHEMATHESIS = "schemathesis==4.32.5"
VENV = os.path.join(ROOT, "target", "schemathesis-venv")
ALLOW = os.path.join(ROOT, "openapi", "schemathesis-allow.txt")


def venv_schemathesis():
    exe = os.path.join(VENV, "bin", "schemathesis")
    if not os.path.exists(exe):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        pip = os.path.join(VENV, "bin", "pip")
        subprocess.run([pip, "install", "--quiet", "--disable-pip-version-check", SCHEMATHESIS], check=True)
    return exe


def start_server(poold, workdir, token):
    log = open(os.path.join(workdir, "poold.log"), "wb")
    proc = subprocess.Popen(
        [poold, "serve", "--bind", "127.0.0.1:0", "--workers", "2",
         "--database", os.path.join(workdir, "poold.db"), "--task-timeout", "5"],
        env={**os.environ, "POOLD_API_TOKEN": token},
        stdout=subprocess.PIPE, stderr=log,
    )
    line = proc.stdout.readline().decode()
    prefix = "poold listening on "
    if not line.startswith(prefix):
        proc.kill()
        raise SystemExit(f"poold did not start: {line!r}")
    return proc, line[len(prefix):].strip()


def load_allow_list():
    """[(check, operation, status, code, detail substring, reason)] from the allow-list."""
    allowed = []
    with open(ALLOW, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = [field.strip() for field in line.split(" | ")]
            if len(fields) != 6:
                raise SystemExit(f"{ALLOW}:{number}: want CHECK | OPERATION | STATUS | CODE | DETAIL | REASON")
            allowed.append(tuple(fields))
    return allowed


def allowed_by(allowed, key, detail):
    """The allow-list entry that covers a finding, or None."""
    for entry in allowed:
        if entry[:4] == key and entry[4] in detail:
            return entry
    return None


def findings(report_dir):
    """(check, operation, status, problem code) -> one example request, for every failed check."""
    found = {}
    for path in glob.glob(os.path.join(report_dir, "*.ndjson")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                event = json.loads(line)
                finished = event.get("ScenarioFinished")
                if not finished or finished.get("status") in ("success", "skip"):
                    continue
                recorder = finished.get("recorder", {})
                interactions = recorder.get("interactions", {})
                for case_id, checks in recorder.get("checks", {}).items():
                    for check in checks:
                        if check.get("status") != "failure":
                            continue
                        failure = check.get("failure_info", {}).get("failure", {})
                        operation = failure.get("operation") or recorder.get("label", "?")
                        response = (interactions.get(case_id) or {}).get("response") or {}
                        status = str(response.get("status_code", "-"))
                        problem = problem_of(response)
                        code = problem.get("code") or "-"
                        case = recorder.get("cases", {}).get(case_id, {}).get("value", {})
                        body = json.dumps(case.get("body"))[:200] if "body" in case else ""
                        example = (f"{failure.get('title')}: {problem.get('detail', '')} <- "
                                   f"{case.get('method')} {case.get('path')} query={case.get('query')} {body}")
                        key = (check["name"], operation, status, code)
                        found.setdefault((key, problem.get("detail", "")), example)
    return found


def problem_of(response):
    """The problem document of a response, or {}."""
    import base64
    raw = (response.get("content") or {}).get("$base64")
    try:
        problem = json.loads(base64.b64decode(raw)) if raw else {}
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poold", default=os.path.join(ROOT, "target", "release", "poold"))
    parser.add_argument("--max-examples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=20261202, help="fixed so that CI runs are repeatable")
    args = parser.parse_args()

    schemathesis = venv_schemathesis()
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="poold-schemathesis-") as workdir:
        proc, url = start_server(args.poold, workdir, token)
        try:
            started = time.monotonic()
            run = subprocess.run(
                [schemathesis, "run", f"{url}/openapi.json", "--checks", "all",
                 "--header", f"Authorization: Bearer {token}",
                 "--max-examples", str(args.max_examples), "--seed", str(args.seed),
                 "--workers", "2", "--request-timeout", "30",
                 "--report", "ndjson", "--report-dir", os.path.join(workdir, "report")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                cwd=workdir,  # it keeps a cache in the working directory
            )
            took = time.monotonic() - started
            found = findings(os.path.join(workdir, "report"))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        with open(os.path.join(workdir, "poold.log"), encoding="utf-8", errors="replace") as f:
            server_log = f.read()

    summary = [l for l in run.stdout.splitlines() if "generated" in l or "failures" in l or "passed" in l]
    print(f"schemathesis ({SCHEMATHESIS}, seed {args.seed}) ran for {took:.0f}s: {' / '.join(summary[-2:])}")
    if "panicked" in server_log:
        print(server_log[-4000:])
        raise SystemExit("the server panicked during the run")
    allowed = load_allow_list()
    used = set()
    unexpected = 0
    for (key, detail), example in sorted(found.items()):
        entry = allowed_by(allowed, key, detail)
        if entry:
            used.add(entry)
        else:
            unexpected += 1
        print(f"  {'allowed' if entry else 'NEW':8} {' '.join(key)}  ({example})")
    for entry in allowed:
        if entry not in used:
            print(f"  not seen {' '.join(entry[:5])}")
    if not found and run.returncode != 0:
        print(run.stdout[-6000:])
        raise SystemExit(f"schemathesis failed (exit {run.returncode}) without a finding")
    if unexpected:
        print(run.stdout[-6000:])
        raise SystemExit(f"{unexpected} finding(s) not in {os.path.relpath(ALLOW, ROOT)}")
    print("no finding outside the allow-list")


if __name__ == "__main__":
    main()

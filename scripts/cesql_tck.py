#!/usr/bin/env python3
"""Runs the CloudEvents SQL TCK (cesql/cesql_tck/*.yaml in the CloudEvents
spec repository) against `pilotlight cesql` and prints every case whose
result or error differs from the TCK's.

    python3 scripts/cesql_tck.py PATH/TO/spec/cesql/cesql_tck [PILOTLIGHT]

The TCK is not vendored here: it is the spec's text, read from a checkout.
Exit status 1 when a case fails. Needs PyYAML.
"""

import json
import pathlib
import subprocess
import sys

import yaml

DEFAULT_EVENT = {
    "specversion": "1.0",
    "id": "tck",
    "source": "/tck",
    "type": "dev.pilotlight.tck",
}


def event_of(case):
    if "event" in case:
        event = dict(case["event"])
    else:
        event = dict(DEFAULT_EVENT)
        event.update(case.get("eventOverrides") or {})
    # YAML reads an unquoted timestamp as a datetime; the TCK means its text.
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in event.items()}


def run_case(binary, case):
    process = subprocess.run(
        [binary, "cesql", "--event", "-", "--", str(case["expression"])],
        input=json.dumps(event_of(case)).encode(),
        capture_output=True,
        check=False,
    )
    if process.returncode not in (0, 2):
        return None, None, process.stderr.decode().strip()
    output = json.loads(process.stdout)
    error = output["error"]["kind"] if output["error"] else None
    return output["result"], error, None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    folder = pathlib.Path(sys.argv[1])
    binary = sys.argv[2] if len(sys.argv) > 2 else "pilotlight"
    failed = total = 0
    for path in sorted(folder.glob("*.yaml")):
        suite = yaml.safe_load(path.read_text())
        for case in suite["tests"]:
            total += 1
            result, error, crash = run_case(binary, case)
            want_error = case.get("error")
            want_result = case.get("result")
            if hasattr(want_result, "isoformat"):
                want_result = want_result.isoformat()
            ok = crash is None and error == want_error
            # A parse error has no result; otherwise the result must match,
            # and `True == 1` must not pass for a Boolean against an Integer.
            if ok and want_error != "parse" and "result" in case:
                ok = result == want_result and type(result) is type(want_result)
            if not ok:
                failed += 1
                print(f"FAIL {path.name}: {case['name']}")
                print(f"     {case['expression']!r}")
                print(f"     want {want_result!r} error {want_error}, got {result!r} error {error} {crash or ''}")
    print(f"{total - failed}/{total} TCK cases pass")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

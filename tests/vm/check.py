#!/usr/bin/env python3
"""Checks one VM boot's console log (called by tests/vm/run.sh).

Usage: check.py hidden|clean CONSOLE-LOG

  hidden  the guest loaded qtest_hider.ko (which unlinked itself from the
          module list): the JSON report must hold a `module.hidden` finding
          whose subject.name is qtest_hider, with evidence naming the views
          that saw it.
  clean   no test module: the JSON report must hold no `module.*` finding.

The guest's /init (tests/vm/init) prints `QTEST-FACT key=value` lines, a
diagnostics section, and quarry's JSON between QUARRY-JSON-BEGIN/END.
Always prints the diagnostics; on failure also the text report and the end
of the console. Exits 0 on pass, 1 on failure.
"""

import json
import re
import sys

# Words by which evidence can name the kernel views that still show a module.
VIEW_WORDS = re.compile(
    r"sys/module|initstate|kallsyms|available_filter_functions|tracefs|ftrace"
    r"|vmallocinfo|vmalloc|taint|kmsg|dmesg",
    re.IGNORECASE,
)


def section(lines, begin, end):
    """Lines strictly between the first `begin` line and the next `end` line."""
    try:
        i = lines.index(begin)
    except ValueError:
        return None
    try:
        j = lines.index(end, i + 1)
    except ValueError:
        return None
    return lines[i + 1 : j]


def show(title, lines):
    print(f"---- {title} ----")
    for line in lines:
        print(f"  | {line}")


def main():
    expect, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [l.rstrip("\r\n").replace("\r", "") for l in f]

    facts = {}
    for line in lines:
        if line.startswith("QTEST-FACT "):
            key, _, value = line[len("QTEST-FACT ") :].partition("=")
            facts[key] = value

    diag = section(lines, "QTEST-DIAG-BEGIN", "QTEST-DIAG-END")
    if diag is not None:
        show(f"guest diagnostics ({expect} boot)", diag)

    problems = []

    def fail(msg):
        problems.append(msg)

    # Preconditions: the guest really is in the state the case is about.
    if diag is None:
        fail("the guest never printed its diagnostics (did it boot?)")
    elif expect == "hidden":
        if facts.get("insmod") != "ok":
            fail(f"insmod /qtest_hider.ko did not succeed: {facts.get('insmod')}")
        elif facts.get("proc_modules") != "0" or facts.get("sys_module") != "1":
            fail(
                "the module is not hidden the expected way: "
                f"/proc/modules count {facts.get('proc_modules')}, "
                f"/sys/module/qtest_hider present {facts.get('sys_module')}"
            )
    elif facts.get("sys_module") != "0":
        fail("the clean boot has /sys/module/qtest_hider")

    # Quarry's JSON report.
    report = None
    js = section(lines, "QUARRY-JSON-BEGIN", "QUARRY-JSON-END")
    exit_line = next((l for l in lines if l.startswith("QUARRY-EXIT ")), None)
    if js is None:
        fail("no QUARRY-JSON-BEGIN/END section in the console")
    else:
        try:
            report = json.loads("\n".join(js))
        except json.JSONDecodeError as e:
            fail(f"quarry's JSON does not parse: {e}")
            show("JSON as received (first 40 lines)", js[:40])
    if exit_line is not None and exit_line.split()[1] not in ("0", "1"):
        fail(f"quarry failed: {exit_line}")

    if report is not None:
        findings = report.get("findings", [])
        print(
            f"quarry findings ({expect} boot): "
            + (", ".join(f["rule"] for f in findings) or "none")
        )
        if expect == "hidden":
            hits = [
                f
                for f in findings
                if f.get("rule") == "module.hidden"
                and f.get("subject", {}).get("name") == "qtest_hider"
            ]
            if not hits:
                fail("no module.hidden finding with subject.name qtest_hider")
            for f in hits:
                print("---- the module.hidden finding ----")
                print(json.dumps(f, indent=2))
                ev = f.get("evidence") or []
                if not ev:
                    fail("the module.hidden finding has no evidence")
                elif not any(
                    VIEW_WORDS.search(e.get("key", "") + " " + e.get("value", ""))
                    for e in ev
                ):
                    fail("the module.hidden evidence names none of the kernel views")
        else:
            bad = [f for f in findings if f.get("rule", "").startswith("module.")]
            for f in bad:
                print("---- unexpected finding ----")
                print(json.dumps(f, indent=2))
            if bad:
                fail(f"{len(bad)} module.* finding(s) on a clean boot")
        # Nothing in either guest hides a process: any hidden.* finding is a
        # false alarm (a race the census must absorb).
        false_hidden = [f for f in findings if f.get("rule", "").startswith("hidden.")]
        for f in false_hidden:
            print("---- false hidden-process finding ----")
            print(json.dumps(f, indent=2))
        if false_hidden:
            fail(f"{len(false_hidden)} hidden.* finding(s) where nothing hides a process")

    if not problems:
        return 0
    for p in problems:
        print(f"FAIL ({expect} boot): {p}")
    text = section(lines, "QUARRY-TEXT-BEGIN", "QUARRY-TEXT-END")
    if text is not None:
        show("quarry text report", text)
    err = section(lines, "--- quarry stderr", "QUARRY-TEXT-BEGIN")
    if err:
        show("quarry stderr", err)
    if diag is None or js is None:
        show("end of the console log (last 60 lines)", lines[-60:])
    return 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Checks one VM boot's console log (called by tests/vm/run.sh).

Usage: check.py hidden|clean|ftrace1|ftrace2|bpf CONSOLE-LOG
       check.py --extract-files CONSOLE-LOG DIR

  hidden  the guest loaded qtest_hider.ko (which unlinked itself from the
          module list): the JSON report must hold a `module.hidden` finding
          whose subject.name is qtest_hider, with evidence naming the views
          that saw it.
  clean   no test module, but a harmless BPF program loaded (a tracer's):
          the JSON report must hold no `module.*`, no `kernel.hook*` and no
          `hidden.*` finding.
  bpf     /tmp/.x/loader holds a BPF program calling bpf_probe_write_user:
          a critical `kernel.hook` finding whose title names the helper and
          whose subject.pid is the loader's PID; quarry exits with 1.
  ftrace1 the guest started /burner (PID above 1000) and loaded
          qtest_ftrace.ko mode=1 (ftrace hooks on the kill, getpgid, getsid,
          sched_getaffinity, pidfd_open and getdents64 syscalls, the /proc
          lookup, cgroup.procs and vmallocinfo hide the burner; the module
          unlinks itself, deletes its /sys/module entry, clears the taint).
  ftrace2 the guest started /burner (PID below 300) and loaded
          qtest_ftrace.ko mode=2 (find_pid_ns and the other PID lookups of
          kernel/pid.c hide the burner and the module's kernel thread
          qtest_kworker: listed in /proc, but /proc/PID, kill and getpgid
          fail; same self-hiding).
          For both, the JSON report must hold: a `hidden.process` finding
          whose subject.pid is the burner's PID (ftrace2: also one for the
          kernel thread's PID); a `kernel.hook` finding whose title, subject
          or evidence names __x64_sys_kill (ftrace1) or find_pid_ns
          (ftrace2); a `module.hidden` finding (any subject) whose evidence
          mentions load_module or vmalloc; a `hidden.cpu` finding; and
          quarry must exit with 1.

--extract-files writes each `QTEST-FILE-BEGIN <name>` ... `QTEST-FILE-END`
section of a console log (base64, printed by the guest's /init with
qtest_dump=1) to DIR/<name>; run.sh's VM_FIXTURES mode uses it.

The guest's /init (tests/vm/init) prints `QTEST-FACT key=value` lines, a
diagnostics section, and quarry's JSON between QUARRY-JSON-BEGIN/END.
Always prints the diagnostics; on failure also the text report and the end
of the console. Exits 0 on pass, 1 on failure.
"""

import base64
import json
import os
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


# What each ftrace case is about: the kernel function a kernel.hook finding
# must name, the module's hook count, and the state the guest must be in
# (from /pidprobe: listed in /proc, /proc/PID/stat, kill(pid, 0), getpgid).
FTRACE_CASES = {
    "ftrace1": {
        "hook": "__x64_sys_kill",
        "hooks": "10/10",
        "probe": {"listed": "0", "stat": "ENOENT", "kill0": "ESRCH", "getpgid": "ESRCH"},
    },
    "ftrace2": {
        "hook": "find_pid_ns",
        "hooks": "5/5",
        "probe": {"listed": "1", "stat": "ENOENT", "kill0": "ESRCH", "getpgid": "ESRCH"},
    },
}


def parse_probe(value):
    """'listed=0 stat=ENOENT ...' -> {'listed': '0', 'stat': 'ENOENT', ...}"""
    return dict(w.split("=", 1) for w in (value or "").split() if "=" in w)


def finding_text(f):
    """A finding's title, subject and evidence as one string to search."""
    parts = [f.get("title", "")]
    parts += [str(v) for v in (f.get("subject") or {}).values()]
    for e in f.get("evidence") or []:
        parts += [e.get("key", ""), e.get("value", "")]
    return "\n".join(parts)


def extract_files(path, outdir):
    """Writes the QTEST-FILE sections of a console log to outdir."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [l.rstrip("\r\n").replace("\r", "") for l in f]
    os.makedirs(outdir, exist_ok=True)
    name, chunks, written = None, [], []
    for line in lines:
        if line.startswith("QTEST-FILE-BEGIN "):
            name, chunks = line.split(" ", 1)[1].strip(), []
        elif line == "QTEST-FILE-END" and name is not None:
            if "/" in name or name.startswith("."):
                print(f"skipping a file with a bad name: {name!r}")
            else:
                data = base64.b64decode("".join(chunks))
                with open(os.path.join(outdir, name), "wb") as out:
                    out.write(data)
                written.append(f"{name} ({len(data)} bytes)")
            name = None
        elif line.startswith("QTEST-FILE-MISSING "):
            print(f"the guest had no {line.split(' ', 1)[1]}")
        elif name is not None:
            chunks.append(line.strip())
    for w in written:
        print(f"wrote {outdir}/{w}")
    return 0 if written and "QTEST-DUMP-DONE" in lines else 1


def check_wording(report, fail):
    """Issue 24: report lines agree with their own evidence. The verdict
    repeats the hidden.cpu title's share; a hidden process's notes name only
    the lookups that denied it."""
    findings = report.get("findings", [])
    verdict = (report.get("summary") or {}).get("verdict", "")
    for f in findings:
        if f.get("rule") == "hidden.cpu":
            m = re.search(r"(\d+)% of all CPU time|hides (\d+)% of all CPU", f.get("title", ""))
            share = next((g for g in (m.groups() if m else ()) if g), None)
            if share is None:
                fail(f"hidden.cpu title states no share: {f.get('title')}")
            elif f"{share}% of the CPU" not in verdict:
                fail(f"the verdict ({verdict!r}) does not repeat the hidden.cpu share {share}%")
        if f.get("rule") == "hidden.process":
            ev = {e.get("key"): e.get("value", "") for e in f.get("evidence") or []}
            denied = ev.get("denied by", "").split(" (")[0]
            denied = {d.strip() for d in denied.split(",") if d.strip()}
            for key in ("not recovered", "PID allocator"):
                v = ev.get(key, "")
                if "every lookup" in v:
                    fail(f"{key} claims every lookup denied it: {v}")
                m = re.search(r"(?:and|while) ([\w/, ]+) deny it", v)
                if m:
                    named = {d.strip() for d in m.group(1).split(",") if d.strip()}
                    if not named <= denied:
                        fail(f"{key} names lookups that did not deny it: {named - denied} ({v})")


def check_ftrace(expect, facts, findings, fail):
    """The findings an ftrace case must hold (see the module docstring)."""
    case = FTRACE_CASES[expect]
    by_rule = {}
    for f in findings:
        by_rule.setdefault(f.get("rule", ""), []).append(f)

    def dump(title, fs):
        for f in fs:
            print(f"---- {title} ----")
            print(json.dumps(f, indent=2))

    # hidden.process for each hidden PID.
    procs = by_rule.get("hidden.process", [])
    want = {"burner": facts.get("burner_pid")}
    if expect == "ftrace2":
        want["kthread"] = facts.get("kthread_pid")
    seen = {str((f.get("subject") or {}).get("pid")) for f in procs}
    for what, pid in want.items():
        if pid and pid not in seen:
            fail(
                f"no hidden.process finding with subject.pid {pid} (the {what}); "
                f"hidden.process subjects: {', '.join(sorted(seen)) or 'none'}"
            )
    dump("a hidden.process finding", procs)
    extra = sorted(seen - {p for p in want.values() if p})
    if extra:
        print(f"note: hidden.process findings for PIDs nothing hides: {', '.join(extra)}")

    # kernel.hook naming the hooked function.
    hooks = by_rule.get("kernel.hook", [])
    named = [f for f in hooks if case["hook"] in finding_text(f)]
    if not named:
        fail(
            f"no kernel.hook finding names {case['hook']} "
            f"({len(hooks)} kernel.hook finding(s) in all)"
        )
        dump("a kernel.hook finding (not naming it)", hooks)
    else:
        dump(f"the kernel.hook finding naming {case['hook']}", named[:1])

    # module.hidden with load_module / vmalloc evidence.
    mods = by_rule.get("module.hidden", [])
    vm = [
        f
        for f in mods
        if any(
            re.search(r"load_module|vmalloc", e.get("key", "") + " " + e.get("value", ""), re.I)
            for e in f.get("evidence") or []
        )
    ]
    if not mods:
        fail("no module.hidden finding")
    elif not vm:
        fail("no module.hidden finding whose evidence mentions load_module or vmalloc")
        dump("a module.hidden finding (evidence without load_module/vmalloc)", mods)
    else:
        dump("the module.hidden finding", vm[:1])

    # hidden.cpu.
    cpu = by_rule.get("hidden.cpu", [])
    if not cpu:
        fail("no hidden.cpu finding")
    dump("the hidden.cpu finding", cpu[:1])


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--extract-files":
        return extract_files(sys.argv[2], sys.argv[3])
    if len(sys.argv) != 3 or sys.argv[1] not in ("hidden", "clean", "bpf", *FTRACE_CASES):
        print(__doc__)
        return 2
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
    times = [l.split()[1:3] for l in lines if l.startswith("QTEST-TIME ") and len(l.split()) >= 3]
    if times:
        print(f"guest uptime ({expect} boot): " + ", ".join(f"{k} {v} s" for k, v in times))

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
    elif expect in FTRACE_CASES:
        case = FTRACE_CASES[expect]
        if facts.get("insmod") != "ok":
            fail(f"insmod /qtest_ftrace.ko did not succeed: {facts.get('insmod')}")
        elif facts.get("hooks") != case["hooks"]:
            fail(f"qtest_ftrace installed {facts.get('hooks')} hooks, not {case['hooks']}")
        if facts.get("proc_modules") != "0" or facts.get("sys_module") != "0":
            fail(
                "qtest_ftrace is not hidden the expected way: "
                f"/proc/modules count {facts.get('proc_modules')}, "
                f"/sys/module/qtest_ftrace present {facts.get('sys_module')}"
            )
        hidden = [("burner", facts.get("burner_pid"), facts.get("burner_probe"))]
        if expect == "ftrace2":
            hidden.append(("kthread", facts.get("kthread_pid"), facts.get("kthread_probe")))
        for what, pid, probe in hidden:
            if not (pid or "").isdigit():
                fail(f"the guest reported no {what} PID ({what}_pid={pid})")
                continue
            got = parse_probe(probe)
            wrong = {k: got.get(k) for k, v in case["probe"].items() if got.get(k) != v}
            if wrong:
                fail(
                    f"the {what} (PID {pid}) is not hidden the expected way: "
                    + ", ".join(f"{k}={v} (want {case['probe'][k]})" for k, v in wrong.items())
                )
        bp = facts.get("burner_pid") or ""
        if bp.isdigit():
            if expect == "ftrace1" and int(bp) <= 1000:
                fail(f"the burner's PID {bp} is not above 1000")
            if expect == "ftrace2" and int(bp) >= 300:
                fail(f"the burner's PID {bp} is not below 300")
    elif expect == "bpf":
        if not (facts.get("bpf_pid") or "").isdigit():
            fail("the guest reported no loader PID (bpf_pid)")
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
    if expect in FTRACE_CASES and (exit_line is None or exit_line.split()[1] != "1"):
        fail(f"quarry must exit with 1 (findings): {exit_line or 'no QUARRY-EXIT line'}")

    if report is not None:
        findings = report.get("findings", [])
        print(
            f"quarry findings ({expect} boot): "
            + (", ".join(f["rule"] for f in findings) or "none")
        )
        census = report.get("census") or {}
        alloc = census.get("allocator") or {}
        print(
            f"census ({expect} boot): pid_max {census.get('pid_max')}, "
            f"in use up to {(census.get('pid_space') or {}).get('upto')}, "
            f"swept up to {census.get('swept_upto')} ({census.get('sweep')}), "
            f"census {census.get('census_ms', 0):.0f} ms, sweep {census.get('probe_ms', 0):.0f} ms, "
            f"allocator {alloc.get('probed', '-')} PIDs in {alloc.get('ms', 0):.0f} ms"
        )
        # The guest runs at the pid_max it was given (run.sh: 4,194,304), and
        # Quarry judged that PID space.
        want_max = facts.get("pid_max")
        if want_max and str(census.get("pid_max")) != want_max:
            fail(f"the census saw pid_max {census.get('pid_max')}, the guest has {want_max}")
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
        elif expect in FTRACE_CASES:
            check_ftrace(expect, facts, findings, fail)
            check_wording(report, fail)
        elif expect == "bpf":
            hits = [
                f
                for f in findings
                if f.get("rule") == "kernel.hook"
                and "bpf_probe_write_user" in f.get("title", "")
            ]
            if not hits:
                fail("no kernel.hook finding naming bpf_probe_write_user")
            for f in hits:
                print("---- the kernel.hook finding ----")
                print(json.dumps(f, indent=2))
                if f.get("severity") != "critical":
                    fail(f"the BPF finding is {f.get('severity')}, not critical")
                if str(f.get("subject", {}).get("pid")) != facts.get("bpf_pid"):
                    fail(f"the BPF finding does not name the loader PID {facts.get('bpf_pid')}")
            if exit_line is None or exit_line.split()[1] != "1":
                fail(f"quarry must exit with 1 (findings): {exit_line or 'no QUARRY-EXIT line'}")
        else:
            bad = [
                f
                for f in findings
                if f.get("rule", "").startswith("module.")
                or f.get("rule", "").startswith("kernel.hook")
            ]
            for f in bad:
                print("---- unexpected finding ----")
                print(json.dumps(f, indent=2))
            if bad:
                fail(
                    f"{len(bad)} module.* / kernel.hook* finding(s) on a clean boot: "
                    + ", ".join(sorted({f["rule"] for f in bad}))
                )
        if expect not in FTRACE_CASES:
            # Nothing in these guests hides a process: any hidden.* finding
            # is a false alarm (a race the census must absorb).
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

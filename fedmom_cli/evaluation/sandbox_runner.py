"""The harness inside the sandbox: runs one program and proves to the evaluator that it ran to the end.

Not imported by fedmom: sandbox.py passes this file's text to `python -I -S -c` inside the sandbox,
with the arguments PROGRAM PROOF RESULT_FD DONE_LINE.

The proof of a completed run is a per-run secret (32 random bytes, hex) in the file PROOF, which the
evaluator wrote and which nothing in this process reads until the end. An audit hook (PEP 578; it
cannot be removed once added) lets the file be opened only while this module's own frame stands on
line DONE_LINE, the line after `exec(program)` returned normally; there, on the event
"fedmom.done", the hook copies the secret to RESULT_FD and exits 0. The evaluator counts a pass
only if RESULT_FD carried the secret and the exit status is 0. So an early exit of any kind
(sys.exit, SystemExit, os._exit, exec, atexit or excepthook hooks, signals, a crash) cannot pass:
none of them reaches DONE_LINE, and the secret was never in this process's memory to steal.

The hook also refuses what could read the file without it, or change the hook: opening any path with
a part named like the file, or a path-like object (whose __fspath__ could answer differently the
second time); running another program (exec, spawn, subprocess, and the modules that bypass their
audit events: ctypes, _posixsubprocess); symbolic and hard links; trace functions (which can move a
frame to another line); gc's object-graph functions (the only way to reach the hook function);
replacing a function's __code__. The hook itself calls only C functions captured before the
program ran, and holds no function whose closure a program could rewrite. See docs/sandbox.md for what a
deliberate program can still do.
"""

import os
import sys

me = sys._getframe()  # this module's frame, taken before any program code exists
program, proof, result_fd, done_line = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.closerange(3, result_fd)  # nothing inherited but stdio and the result pipe
os.closerange(result_fd + 1, 1 << 16)


def _guard(me, proof, result_fd, done_line):
    # Only C functions and plain values from here on: a program can rewrite any Python function the
    # hook would call (its __code__, its module's globals, builtins.type) and any closure cell it
    # can reach, so the hook calls none and holds no function with cells of its own.
    o_open, o_read, o_write, o_exit, rdonly = os.open, os.read, os.write, os._exit, os.O_RDONLY
    str_, bytes_, int_, type_, len_ = str, bytes, int, type, len
    refuse, refuse_import = PermissionError, ImportError
    name = proof.rsplit("/", 1)[1]
    name_bytes = name.encode()
    refused = frozenset(
        {
            "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
            "os.symlink", "os.link", "sys.settrace", "sys.setprofile",
            "gc.get_objects", "gc.get_referrers", "gc.get_referents",
            "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
        }
    )  # fmt: skip
    refused_modules = frozenset(
        {"ctypes", "_ctypes", "_posixsubprocess", "_testcapi", "_testinternalcapi", "_xxsubinterpreters"}
    )

    def hook(event, args):
        if type_(event) is not str_:
            raise refuse("fedmom sandbox: odd audit event")
        if event == "fedmom.done":
            if len_(args) == 1 and args[0] is me and me.f_lineno == done_line:
                fd = o_open(proof, rdonly)
                o_write(result_fd, o_read(fd, 4096))
                o_exit(0)
            raise refuse("fedmom sandbox: only the harness may report completion")
        if event in refused:
            raise refuse("fedmom sandbox: " + event + " is not allowed")
        if event == "import" and args and type_(args[0]) is str_:
            if args[0].partition(".")[0] in refused_modules:
                raise refuse_import("fedmom sandbox: module " + args[0] + " is not allowed")
        elif event == "object.__setattr__" and len_(args) > 1 and type_(args[1]) is str_:
            if args[1] == "__code__":
                raise refuse("fedmom sandbox: replacing a function's code is not allowed")
        elif event == "open" and args:
            path = args[0]
            if type_(path) is int_:
                return
            if type_(path) is str_:
                hit = name in path.split("/")
            elif type_(path) is bytes_:
                hit = name_bytes in path.split(b"/")
            else:  # a path-like object could name another file when it is asked again
                raise refuse("fedmom sandbox: open a str or bytes path")
            if hit and me.f_lineno != done_line:
                raise refuse("fedmom sandbox: not readable")

    return hook


def _no_signal_handlers(*args):
    raise PermissionError("fedmom sandbox: signal handlers are not allowed")


# A signal handler receives the running frame, which may be the hook's; from Python 3.13 on, its
# f_locals write through to the hook's closure. (A program can still rebuild _signal with _imp.)
import _signal  # noqa: E402  (loaded at start-up already)

_signal.signal = _no_signal_handlers
sys.addaudithook(_guard(me, proof, result_fd, done_line))
del _guard
module = type(sys)("__main__")
sys.modules["__main__"] = module
exit_ = os._exit
try:
    with open(program, encoding="utf-8") as f:
        source = f.read()
    exec(compile(source, "program.py", "exec"), module.__dict__)
except BaseException as e:  # noqa: BLE001  the program failed; tell the evaluator how
    mro = type.__dict__["__mro__"].__get__(type(e))  # no code of the program runs here
    status = 3 if SystemExit in mro else 4 if AssertionError in mro else 5
    try:
        import traceback

        traceback.print_exception(e, limit=-3)
        sys.stderr.flush()
    finally:
        exit_(status)
else:
    sys.audit("fedmom.done", me)  # DONE_LINE: the hook writes the proof and exits 0
exit_(6)  # the hook refused: never a pass

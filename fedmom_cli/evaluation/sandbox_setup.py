"""fedmom's own namespaces: the fallback isolation where bubblewrap is missing or does not work.

Not imported by fedmom: sandbox.py runs this file's text as
    unshare --fork --pid --kill-child --mount --net --ipc --uts [--user --map-root-user] \
        python -I -S -c <this> WORKDIR MODE BINDS -- INTERPRETER ARGS...
so it starts as PID 1 of a new PID namespace (when it dies the kernel kills every process left in
the namespace), in new mount, network, IPC and UTS namespaces. It builds a new root like bubblewrap's:
a small tmpfs holding read-only binds of the system folders (BINDS, colon-separated), /dev/null and
friends, fresh size-limited tmpfs on /tmp, /var/tmp, /dev/shm and /sandbox (the working folder), and
the program and the proof file read-only; no /proc, /home, /root, /run or /work. It enters it with
pivot_root and detaches the old root, so nothing outside is left in the mount namespace to escape
to (chroot where pivot_root's number is not known), then gives up every privilege (MODE a uid:
become that uid, with no capabilities; MODE "userns": enter a further user namespace, which holds
no capability over these mounts), sets no_new_privs, and execs the harness (sandbox_runner.py) as
INTERPRETER ARGS in a child, passing on its exit status.
"""

import ctypes
import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
LOCKED = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
          "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}  # fmt: skip
WRITABLE = {"/tmp": "64m", "/var/tmp": "16m", "/dev/shm": "64m", "/sandbox": "64m"}
CLONE_NEWUSER, PR_SET_NO_NEW_PRIVS, MNT_DETACH = 0x10000000, 38, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
libc = ctypes.CDLL(None, use_errno=True)


def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "a").close()


def mounts_under(root):
    """(mount point, per-mount options) of every mount at or below root, from mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                out.append((point, fields[5].split(",")))
    return out


def build_root(workdir, binds):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = os.path.join(workdir, "root")
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for src in binds:
        dst = root + src
        if os.path.islink(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
            mount(src, dst, None, MS_BIND | MS_REC)
    for name in ("null", "zero", "full", "random", "urandom"):
        touch(f"{root}/dev/{name}")
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for path, size in WRITABLE.items():
        os.makedirs(root + path, exist_ok=True)
        mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
    proof = "fedmom-completion-proof"  # sandbox_modes.PROOF_PATH (this script imports nothing of fedmom)
    for src, dst in (("program.py", "/sandbox/program.py"), (proof, f"/run/fedmom/{proof}")):
        touch(root + dst)
        mount(os.path.join(workdir, src), root + dst, None, MS_BIND)
    for point, options in mounts_under(root):
        if point[len(root) :] in WRITABLE:
            continue
        keep = sum(LOCKED.get(o, 0) for o in options)
        mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is not None:  # pivot_root(".", "."): the old root ends up on top, then goes
        if libc.syscall(number, b".", b".") != 0 or libc.umount2(b".", MNT_DETACH) != 0:
            raise OSError(ctypes.get_errno(), "pivot_root")
    else:
        os.chroot(".")
    os.chdir("/sandbox")


def give_up_privileges(mode):
    if mode.isdigit():
        os.setgroups([])
        os.setgid(int(mode))
        os.setuid(int(mode))
    elif libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


workdir, mode, binds = sys.argv[1], sys.argv[2], [b for b in sys.argv[3].split(":") if b]
command = sys.argv[sys.argv.index("--") + 1 :]
build_root(workdir, binds)
give_up_privileges(mode)
child = os.fork()  # the harness is not PID 1, whose signals work differently
if child == 0:
    os.execv(command[0], command)
status = os.waitpid(child, 0)[1]
os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))

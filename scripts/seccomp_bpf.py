"""Which host syscalls a running process may make, read from the kernel rather than from our
sources: each thread's seccomp filters are fetched with PTRACE_SECCOMP_GET_FILTER and run over
every x86_64 syscall number. A number counts as allowed when, for some arguments, every filter
of the thread can return ALLOW (or LOG): argument checks are followed both ways, so the count
is an upper bound, as a count of an allowlist should be."""

import ctypes
import errno
import os
import re
import struct
from pathlib import Path

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
AUDIT_ARCH_X86_64 = 0xC000003E

# struct seccomp_data: the fields a filter can load; anything else is an argument (unknown).
NR_OFFSET, ARCH_OFFSET = 0, 4

RET_ACTION_FULL = 0xFFFF0000
RET_ALLOW, RET_LOG = 0x7FFF0000, 0x7FFC0000

PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
PTRACE_SECCOMP_GET_FILTER = 0x420C
WALL = 0x40000000


class BpfError(Exception):
    pass


def decode(raw):
    """A filter's bytes (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k) as tuples."""
    if len(raw) % 8:
        raise BpfError(f"a BPF program of {len(raw)} bytes is not whole instructions")
    return [struct.unpack_from("<HBBI", raw, i) for i in range(0, len(raw), 8)]


def _alu(op, a, b):
    if a is None or b is None:
        return None
    m = 0xFFFFFFFF
    table = {0x00: lambda: a + b, 0x10: lambda: a - b, 0x20: lambda: a * b,
             0x30: lambda: a // b if b else None, 0x40: lambda: a | b, 0x50: lambda: a & b,
             0x60: lambda: a << b if b < 32 else 0, 0x70: lambda: a >> b if b < 32 else 0,
             0x80: lambda: -a, 0x90: lambda: a % b if b else None, 0xA0: lambda: a ^ b}
    if op not in table:
        raise BpfError(f"unknown BPF ALU operation {op:#x}")
    value = table[op]()
    return None if value is None else value & m


def _branches(op, a, k):
    """The jump outcomes possible for accumulator `a` (None: unknown) against `k`."""
    if op == 0x00:  # JA
        return [True]
    if a is None:
        return [True, False]
    tests = {0x10: a == k, 0x20: a > k, 0x30: a >= k, 0x40: bool(a & k)}
    if op not in tests:
        raise BpfError(f"unknown BPF jump {op:#x}")
    return [tests[op]]


def actions(program, nr, arch=AUDIT_ARCH_X86_64):
    """Every action (k & RET_ACTION_FULL) the program can return for syscall `nr`, following
    both ways any branch that depends on something other than the number and the arch."""
    found, seen = set(), set()
    stack = [(0, None, None, ())]
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        pc, a, x, mem = state
        if pc >= len(program):
            raise BpfError(f"the program runs off its end at instruction {pc}")
        code, jt, jf, k = program[pc]
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS
                a = nr if k == NR_OFFSET else arch if k == ARCH_OFFSET else None
            elif mode == 0x00:  # IMM
                a = k
            elif mode == 0x60:  # MEM
                a = dict(mem).get(k)
            else:
                a = None
            stack.append((pc + 1, a, x, mem))
        elif cls == 0x01:  # LDX
            stack.append((pc + 1, a, k if code & 0xE0 == 0x00 else dict(mem).get(k)
                          if code & 0xE0 == 0x60 else None, mem))
        elif cls in (0x02, 0x03):  # ST, STX
            value = a if cls == 0x02 else x
            stack.append((pc + 1, a, x, tuple(sorted({**dict(mem), k: value}.items()))))
        elif cls == 0x04:  # ALU
            operand = k if code & 0x08 == 0 else x
            stack.append((pc + 1, _alu(code & 0xF0, a, operand), x, mem))
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                stack.append((pc + 1 + k, a, x, mem))
                continue
            operand = k if code & 0x08 == 0 else x
            outcomes = [True, False] if operand is None else _branches(op, a, operand)
            for taken in outcomes:
                stack.append((pc + 1 + (jt if taken else jf), a, x, mem))
        elif cls == 0x06:  # RET
            value = k if code & 0x18 == 0x00 else a
            found.add(None if value is None else value & RET_ACTION_FULL)
        else:  # MISC: TAX, TXA
            stack.append((pc + 1, a, a, mem) if code & 0xF8 == 0x00 else (pc + 1, x, x, mem))
    return found


def allows(program, nr):
    acts = actions(program, nr)
    return RET_ALLOW in acts or RET_LOG in acts or None in acts


def syscall_names(header=UNISTD):
    """x86_64's syscall numbers and names, from the kernel headers."""
    names = {}
    for m in re.finditer(r"^#define __NR_(\w+)\s+(\d+)\s*$", header.read_text(), re.M):
        names[int(m.group(2))] = m.group(1)
    if not names:
        raise BpfError(f"{header} names no syscall")
    return names


def allowed(programs, names):
    """The syscall names every one of a thread's filters lets through."""
    return sorted(name for nr, name in names.items() if all(allows(p, nr) for p in programs))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request, tid, addr=None, data=None):
    ret = _libc.ptrace(request, tid, addr, data)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"ptrace({request:#x}) of thread {tid}: {os.strerror(e)}")
    return ret


def thread_filters(tid):
    """The filters of thread `tid`, newest first. The thread is stopped for the read and let
    go at once; needs CAP_SYS_ADMIN (and CAP_SYS_PTRACE for a non-dumpable process)."""
    _ptrace(PTRACE_SEIZE, tid)
    try:
        _ptrace(PTRACE_INTERRUPT, tid)
        os.waitpid(tid, WALL)
        programs = []
        while True:
            try:
                count = _ptrace(PTRACE_SECCOMP_GET_FILTER, tid, len(programs))
            except OSError as e:
                # ENOENT: past the oldest filter; EINVAL: the thread has none at all.
                if e.errno == errno.ENOENT or (e.errno == errno.EINVAL and not programs):
                    return programs
                raise
            buf = ctypes.create_string_buffer(count * 8)
            _ptrace(PTRACE_SECCOMP_GET_FILTER, tid, len(programs), ctypes.addressof(buf))
            programs.append(decode(buf.raw))
    finally:
        _ptrace(PTRACE_DETACH, tid)


def process_allowed(pid, names=None):
    """{thread name: allowed syscall names} for each kind of thread of `pid` (threads of one
    name share their filters; the first of each name is read)."""
    names = names or syscall_names()
    out = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        # vcpu0 and vcpu1 are one kind; the 86 of qemu-system-x86 is not a thread number.
        kind = re.sub(r"(?<![x\d])\d+", "#", comm)
        if kind in out:
            continue
        try:
            out[kind] = allowed(thread_filters(tid), names)
        except OSError as e:
            if e.errno == errno.ESRCH:
                continue
            raise
    return out

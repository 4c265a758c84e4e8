"""Runs an iPXE script the way iPXE would for a netboot: fetch what it names, follow chains."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin

_VAR = re.compile(r"\$\{([^}]*)\}")
_WORD = re.compile(r"\"[^\"]*\"|'[^']*'|\S+")
# Bound on chained scripts: iPXE itself would loop forever; a storm node gives up.
MAX_CHAIN = 8
MAX_STEPS = 1000


class ScriptFailed(Exception):
    """The script could not boot; the message is the reason."""


@dataclass
class BootSpec:
    """What `boot` would start: the kernel, its command line and the initrds."""

    kernel_url: str = ""
    kernel_args: list[str] = field(default_factory=list)
    initrds: list[tuple[str, str]] = field(default_factory=list)  # (name, url)


@dataclass
class ScriptHost:
    """The I/O a script needs, supplied by the node: fetch text, fetch an image, sleep."""

    fetch_script: Callable[[str], Awaitable[str]]
    fetch_image: Callable[[str, str], Awaitable[bool]]  # (role, url) → ok
    sleep: Callable[[float], Awaitable[None]]


def expand(text: str, variables: dict[str, str]) -> str:
    """Replace ${name} and ${name:type} as iPXE settings expansion does (unknown → empty)."""

    def sub(m: re.Match[str]) -> str:
        name, _, typ = m.group(1).partition(":")
        key = name.removeprefix("net0/")
        value = variables.get(name, variables.get(key, ""))
        if typ == "hexhyp":
            value = value.replace(":", "-")
        elif typ == "hexraw":
            value = value.replace(":", "")
        return value

    return _VAR.sub(sub, text)


def split_words(line: str) -> list[str]:
    """Whitespace-separated words; a quoted word keeps its spaces (quotes removed)."""
    return [w[1:-1] if w[:1] in "'\"" and len(w) > 1 else w for w in _WORD.findall(line)]


def _split_conditions(line: str) -> list[tuple[str, str]]:
    """'a || b && c' → [('', 'a'), ('||', 'b'), ('&&', 'c')] (iPXE evaluates left to right)."""
    out: list[tuple[str, str]] = []
    op = ""
    for part in re.split(r"(\|\||&&)", line):
        if part in ("||", "&&"):
            op = part
        elif part.strip():
            out.append((op, part.strip()))
    return out


async def run(
    url: str, text: str, variables: dict[str, str], host: ScriptHost, depth: int = 0
) -> BootSpec:
    """Execute a script fetched from url; returns what `boot` starts, or raises ScriptFailed."""
    if not text.lstrip().startswith("#!ipxe"):
        raise ScriptFailed(f"{url}: not an iPXE script")
    lines = [ln.strip() for ln in text.splitlines()]
    labels = {ln[1:].strip(): i for i, ln in enumerate(lines) if ln.startswith(":")}
    spec = BootSpec()
    pc, steps = 0, 0
    while pc < len(lines):
        steps += 1
        if steps > MAX_STEPS:
            raise ScriptFailed(f"{url}: script loops")
        line = lines[pc]
        pc += 1
        if not line or line.startswith(("#", ":")):
            continue
        ok = True
        for op, cmd in _split_conditions(line):
            if (op == "||" and ok) or (op == "&&" and not ok):
                continue
            argv = split_words(expand(cmd, variables))
            verb, args = argv[0], argv[1:]
            if verb == "goto":
                if args[0] not in labels:
                    raise ScriptFailed(f"{url}: goto unknown label {args[0]!r}")
                pc = labels[args[0]] + 1
                break
            if verb == "exit":
                raise ScriptFailed(f"{url}: script exited {' '.join(args)}".strip())
            if verb == "boot":
                if not spec.kernel_url:
                    ok = False
                    continue
                return spec
            if verb == "chain":
                target = urljoin(url, _positional(args)[0])
                if depth >= MAX_CHAIN:
                    raise ScriptFailed(f"{url}: more than {MAX_CHAIN} chained scripts")
                try:
                    sub = await host.fetch_script(target)
                except ScriptFailed:
                    ok = False
                    continue
                return await run(target, sub, variables, host, depth + 1)
            ok = await _command(url, verb, args, variables, host, spec)
    raise ScriptFailed(f"{url}: script ended without booting")


def _positional(args: list[str]) -> list[str]:
    """Arguments after the --options of kernel/initrd/chain (`--name x`, `--timeout n`)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("--"):
            skip = "=" not in a and a in ("--name", "--timeout", "-n", "-t")
        elif a in ("-n", "-t"):
            skip = True
        else:
            out.append(a)
    return out


def _image_name(args: list[str], url: str) -> str:
    for i, a in enumerate(args):
        if a.startswith("--name="):
            return a.split("=", 1)[1]
        if a in ("--name", "-n") and i + 1 < len(args):
            return args[i + 1]
    return url.rsplit("/", 1)[-1].split("?", 1)[0]


async def _command(
    url: str,
    verb: str,
    args: list[str],
    variables: dict[str, str],
    host: ScriptHost,
    spec: BootSpec,
) -> bool:
    """One non-control command; returns whether it succeeded."""
    if verb == "set" and args:
        variables[args[0]] = " ".join(args[1:])
        return True
    if verb == "clear" and args:
        variables.pop(args[0], None)
        return True
    if verb == "isset":
        return bool(args and args[0])
    if verb == "iseq":
        return len(args) == 2 and args[0] == args[1]
    if verb == "sleep":
        await host.sleep(float(args[0]) if args else 1.0)
        return True
    if verb in ("echo", "prompt", "dhcp", "ifconf", "ifopen", "imgfree", "console", "cpuid"):
        return True
    if verb in ("kernel", "imgexec", "initrd", "module", "imgfetch"):
        pos = _positional(args)
        if not pos:
            raise ScriptFailed(f"{url}: {verb} without a URL")
        target = urljoin(url, pos[0])
        role = "kernel" if verb in ("kernel", "imgexec") else "initrd"
        if not await host.fetch_image(role, target):
            return False
        if role == "kernel":
            spec.kernel_url, spec.kernel_args = target, pos[1:]
        else:
            spec.initrds.append((_image_name(args, target), target))
        return True
    raise ScriptFailed(f"{url}: unsupported command {verb!r}")

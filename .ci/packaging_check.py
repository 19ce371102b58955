#!/usr/bin/env python3
"""Static checks of Petrel's packaging, for .ci/packaging_check.sh.

Subcommands (each prints one `ok: ...` line per thing it checked, and on
failure `packaging: FAIL: ...` on standard error with exit status 1):

  dockerfile FACTS_JSON
      Parse ./Dockerfile and ./.dockerignore; check the build context, the
      builder's cargo command (against `cargo metadata --locked`) and the
      runtime stage; write what the runtime reproduction needs to FACTS_JSON.
  unit UNIT FACTS_JSON
      Check a systemd unit and the example configuration it names; write
      ExecStart and the credentials to FACTS_JSON.
  rewrite-config SRC DST ROOT PORT_MAP_JSON
      Copy a TOML configuration, moving absolute paths under ROOT and the
      ports of `bind` addresses as PORT_MAP_JSON says ({"1883": 40001}).
  free-ports N
      Print N distinct free TCP ports on 127.0.0.1.

Run from the repository root. Needs Python 3.11 (tomllib).
"""

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Files and keys of the configuration that name files the broker reads, and
# those it writes.
READ_KEYS = {"password_file", "acl_file", "certfile", "keyfile", "cafile", "file", "public_key", "jwks"}
WRITE_KEYS = {"data_dir", "log_file", "persistence"}


class Fail(Exception):
    pass


def ok(msg):
    print(f"ok: {msg}", flush=True)


def need(cond, msg):
    if not cond:
        raise Fail(msg)


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text):
    """(lineno, INSTRUCTION, rest) for each instruction, with line
    continuations joined and comments dropped, as Docker's parser does."""
    escape = "\\"
    lines = text.split("\n")
    # Parser directives: `# key=value` lines at the very top.
    for line in lines:
        m = re.match(r"^#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$", line)
        if not m:
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
    out = []
    buf, start = "", None
    for n, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # comments, also inside a continued instruction
        if not stripped and start is None:
            continue
        if start is None:
            start = n
        body = raw.rstrip()
        if body.endswith(escape):
            buf += body[: -len(escape)] + " "
            continue
        buf += body
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((start, word.upper(), rest.strip()))
        buf, start = "", None
    if buf.strip():
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
    return out


def split_flags(rest):
    """Leading --flag=value words, then the rest."""
    flags = {}
    mounts = []
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        key, _, value = word[2:].partition("=")
        if key == "mount":
            mounts.append(dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in value.split(",")))
        else:
            flags[key] = value
        rest = rest.lstrip()
    return flags, mounts, rest


def exec_form(rest):
    """A JSON array of strings, or None for the shell form."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except json.JSONDecodeError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return None


def substitute(value, env):
    def repl(m):
        name = m.group(1) or m.group(2)
        return env.get(name, m.group(0))

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, value)


def parse_dockerfile(path):
    text = open(path, encoding="utf-8").read()
    need("<<" not in "".join(r for _, i, r in dockerfile_instructions(text) if i in ("RUN", "COPY")),
         "heredocs in RUN/COPY are not supported by this check")
    stages = []
    global_args = {}
    for lineno, ins, rest in dockerfile_instructions(text):
        if ins == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
            continue
        if ins == "FROM":
            flags, _, rest = split_flags(rest)
            words = substitute(rest, global_args).split()
            image = words[0]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append({"image": image, "name": name, "line": lineno, "ins": [], "index": len(stages)})
            continue
        need(stages, f"Dockerfile line {lineno}: {ins} before FROM")
        stages[-1]["ins"].append((lineno, ins, rest))
    need(stages, "Dockerfile has no FROM")
    return stages


def image_tag(image):
    """(name, tag, digest) of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    name, tag = image, None
    colon = image.rfind(":")
    if colon > image.rfind("/"):
        name, tag = image[:colon], image[colon + 1 :]
    return name, tag, digest


# ------------------------------------------------------------ .dockerignore


def ignore_regex(pattern):
    """Docker's pattern syntax (moby's patternmatcher) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 2
                if i < len(pattern) and pattern[i] == "/":
                    i += 1
                out += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(c)
            else:
                cls = pattern[i + 1 : end]
                if cls.startswith("^") or cls.startswith("!"):
                    cls = "^" + cls[1:]
                out += "[" + cls + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile("^" + out + "$")


class DockerIgnore:
    def __init__(self, path):
        self.patterns = []
        if not os.path.exists(path):
            return
        for line in open(path, encoding="utf-8"):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/") if line not in ("", "/") else line
            if not line or line == ".":
                continue
            self.patterns.append((exclusion, line.count("/") + 1, ignore_regex(line)))
        self.has_exclusions = any(e for e, _, _ in self.patterns)

    def ignored(self, rel):
        """Whether the context path `rel` is left out of the build context."""
        if rel in ("Dockerfile", ".dockerignore"):
            return False  # always sent
        parts = rel.split("/")
        matched = False
        for exclusion, depth, regex in self.patterns:
            hit = bool(regex.match(rel))
            if not hit and len(parts) > 1 and depth <= len(parts) - 1:
                hit = bool(regex.match("/".join(parts[:depth])))
            if hit:
                matched = not exclusion
        return matched


def context_files(src, ignore):
    """Files of the build context under `src` (a file or a directory)."""
    if os.path.isfile(src):
        return [] if ignore.ignored(src) else [src]
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.normpath(dirpath)
        if not ignore.has_exclusions:
            dirnames[:] = [d for d in dirnames if not ignore.ignored(os.path.join(rel_dir, d))]
        for f in filenames:
            rel = os.path.join(rel_dir, f)
            if not ignore.ignored(rel):
                found.append(rel)
    return found


# ------------------------------------------------------------ cargo workspace


def cargo_metadata():
    try:
        res = subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1"],
                             capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise Fail("cargo is not installed: cannot check the builder's cargo command")
    need(res.returncode == 0, "cargo metadata --locked failed (is Cargo.lock up to date?):\n" + res.stderr.strip())
    return json.loads(res.stdout)


def tracked_files():
    """Files of the checkout: git's list where there is one."""
    res = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=False)
    if res.returncode == 0:
        return [p for p in res.stdout.decode().split("\0") if p and os.path.exists(p)]
    files = []
    for dirpath, dirnames, filenames in os.walk("."):
        dirnames[:] = [d for d in dirnames if d not in (".git", "target")]
        files += [os.path.normpath(os.path.join(dirpath, f)) for f in filenames]
    return files


def workspace_needs(meta):
    """Files cargo needs to load the workspace and build from it: the root
    manifest and lock file, .cargo/config.toml, and every file of every
    member package (not those of a package nested in it that is not a
    member, nor build outputs)."""
    root = os.path.realpath(meta["workspace_root"])
    members = set(meta["workspace_members"])
    member_dirs, other_dirs = [], []
    for pkg in meta["packages"]:
        d = os.path.relpath(os.path.dirname(os.path.realpath(pkg["manifest_path"])), root)
        if pkg["id"] in members:
            member_dirs.append(d)
    files = tracked_files()
    for f in files:
        if os.path.basename(f) == "Cargo.toml":
            d = os.path.dirname(f) or "."
            if d not in member_dirs and d != ".":
                other_dirs.append(d)
    needed = {"Cargo.toml", "Cargo.lock"}
    if os.path.exists(".cargo/config.toml"):
        needed.add(".cargo/config.toml")
    under = lambda f, d: d == "." or f == d or f.startswith(d + "/")
    for f in files:
        if any(under(f, d) for d in member_dirs if d != "."):
            if not any(under(f, o) for o in other_dirs if any(under(o, d) for d in member_dirs if d != ".")):
                needed.add(f)
    return needed, member_dirs


# ----------------------------------------------------------- shell commands


def shell_commands(script):
    """Simple commands of a RUN line: words split at && || ; |."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    cmds, cur = [], []
    for tok in lexer:
        if tok and set(tok) <= set(";&|"):
            if cur:
                cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        cmds.append(cur)
    return cmds


def operands(argv, with_value):
    """Non-option words of a command, skipping options that take a value."""
    out, i = [], 1
    target_dir = None
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out += argv[i + 1 :]
            break
        if a in ("-t", "--target-directory"):
            target_dir = argv[i + 1]
            i += 2
            continue
        if a.startswith("--target-directory="):
            target_dir = a.split("=", 1)[1]
        elif a.startswith("-") and len(a) > 1:
            if a in with_value:
                i += 1
        else:
            out.append(a)
        i += 1
    return out, target_dir


def absolute(path, workdir):
    return os.path.normpath(path if path.startswith("/") else os.path.join(workdir, path))


# --------------------------------------------------------- the whole check


def check_dockerfile(facts_path):
    stages = parse_dockerfile("Dockerfile")
    names = {s["name"]: s for s in stages if s["name"]}
    ignore = DockerIgnore(".dockerignore")
    final = stages[-1]

    # Base images: each pinned to a tag that is not "latest" (or a digest).
    bases = []
    for s in stages:
        if s["image"] in names and names[s["image"]]["index"] < s["index"]:
            continue
        need("$" not in s["image"], f"FROM {s['image']}: an unresolved variable")
        name, tag, digest = image_tag(s["image"])
        need(digest or (tag and tag != "latest"),
             f"FROM {s['image']} (line {s['line']}): pin a tag other than latest, or a digest")
        bases.append(s["image"])
    ok("base images pinned, none latest: " + ", ".join(bases))

    meta = cargo_metadata()
    ok("cargo metadata --locked: Cargo.lock is up to date with the workspace")
    needed, member_dirs = workspace_needs(meta)
    packages = {p["name"]: p for p in meta["packages"] if p["id"] in set(meta["workspace_members"])}

    # Walk the stages: the files each COPY puts in an image, the builder's
    # cargo command and where its binary goes.
    build = None
    produced = {}  # stage index -> {image path: "file" | "dir"}
    stage_files = {}
    for s in stages:
        workdir, env = "/", {}
        files = {}
        if s["image"] in names:
            files.update(stage_files[names[s["image"]]["index"]])
        products = {}
        s["copies"] = []
        for lineno, ins, rest in s["ins"]:
            if ins == "WORKDIR":
                workdir = absolute(substitute(rest, env), workdir)
            elif ins == "ENV":
                for k, v in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', rest):
                    env[k] = v.strip('"')
            elif ins in ("COPY", "ADD"):
                flags, _, args = split_flags(rest)
                words = exec_form(args) or shlex.split(args)
                need(len(words) >= 2, f"Dockerfile line {lineno}: {ins} needs a source and a destination")
                srcs, dest = words[:-1], absolute(words[-1], workdir)
                into_dir = words[-1].endswith("/") or len(srcs) > 1
                copy = {"line": lineno, "from": flags.get("from"), "chown": flags.get("chown"),
                        "srcs": srcs, "dest": dest, "placed": []}
                if "from" in flags:
                    src_stage = names.get(flags["from"])
                    need(src_stage is not None, f"Dockerfile line {lineno}: no stage named {flags['from']}")
                    have = produced[src_stage["index"]]
                    for src in srcs:
                        p = absolute(src, "/")
                        need(p in have or any(h.startswith(p + "/") for h in have),
                             f"Dockerfile line {lineno}: COPY --from={flags['from']} {src}: nothing in that "
                             f"stage writes {p} (a path in a RUN cache mount is not in the image)")
                        if have.get(p) == "file":
                            target = os.path.join(dest, os.path.basename(p)) if into_dir else dest
                            copy["placed"].append((target, "file", p))
                        else:
                            copy["placed"].append((dest, "dir", p))
                            for h, kind in have.items():
                                if h.startswith(p + "/"):
                                    copy["placed"].append((os.path.join(dest, os.path.relpath(h, p)), kind, h))
                else:
                    for src in srcs:
                        rel = os.path.normpath(src)
                        need(not rel.startswith(".."), f"Dockerfile line {lineno}: {src} is outside the context")
                        need(os.path.exists(rel), f"Dockerfile line {lineno}: COPY source {src} does not exist")
                        need(not ignore.ignored(rel), f"Dockerfile line {lineno}: COPY source {src} is excluded "
                                                      "by .dockerignore")
                        found = context_files(rel, ignore)
                        need(found, f"Dockerfile line {lineno}: every file of {src} is excluded by .dockerignore")
                        for f in found:
                            if os.path.isdir(rel):
                                target = os.path.join(dest, os.path.relpath(f, rel))
                            else:
                                target = os.path.join(dest, os.path.basename(f)) if into_dir else dest
                            copy["placed"].append((target, "file", f))
                for target, kind, origin in copy["placed"]:
                    files[os.path.normpath(target)] = (kind, origin, copy["chown"])
                s["copies"].append(copy)
            elif ins == "RUN":
                _, mounts, script = split_flags(rest)
                cache_targets = [absolute(m.get("target", m.get("dst", "")), workdir)
                                 for m in mounts if m.get("type") == "cache"]
                cmds = shell_commands(substitute(script, env))
                for argv in cmds:
                    if argv[:2] == ["cargo", "build"]:
                        need(build is None, f"Dockerfile line {lineno}: a second cargo build")
                        build = {"stage": s, "line": lineno, "argv": argv, "workdir": workdir,
                                 "files": dict(files), "env": dict(env), "cache": cache_targets}
                        target_dir = absolute(env.get("CARGO_TARGET_DIR", "target"), workdir)
                        build["target_dir"] = target_dir
                    if argv[0] in ("install", "cp") and build and build["stage"] is s:
                        ops, tdir = operands(argv, {"-m", "--mode", "-o", "--owner", "-g", "--group", "-S"})
                        if "-d" in argv or "--directory" in argv:
                            for d in ops:
                                products[absolute(d, workdir)] = "dir"
                            continue
                        dest = tdir or (ops[-1] if ops else None)
                        for src in (ops if tdir else ops[:-1]):
                            sp = absolute(src, workdir)
                            dp = absolute(dest, workdir)
                            if tdir or dest.endswith("/"):
                                dp = os.path.join(dp, os.path.basename(sp))
                            products[dp] = "file"
                            products.setdefault("_sources", {})[dp] = sp
                    elif argv[0] == "mkdir":
                        ops, _ = operands(argv, {"-m", "--mode"})
                        for d in ops:
                            products[absolute(d, workdir)] = "dir"
        sources = products.pop("_sources", {})
        produced[s["index"]] = products
        s["product_sources"] = sources
        stage_files[s["index"]] = files
        s["workdir"], s["env"] = workdir, env
    need(build is not None, "no stage runs cargo build")
    need(build["stage"] is not final, "the final stage compiles: build in a builder stage")

    # The builder's cargo command: one this workspace supports.
    argv = build["argv"]
    need("--locked" in argv, f"Dockerfile line {build['line']}: cargo build without --locked")
    need("--release" in argv or "--profile=release" in argv or
         ("--profile" in argv and argv[argv.index("--profile") + 1] == "release"),
         f"Dockerfile line {build['line']}: cargo build is not a release build")
    pkg_name = bin_name = None
    for i, a in enumerate(argv):
        if a in ("-p", "--package"):
            pkg_name = argv[i + 1]
        elif a.startswith("--package="):
            pkg_name = a.split("=", 1)[1]
        elif a == "--bin":
            bin_name = argv[i + 1]
        elif a.startswith("--bin="):
            bin_name = a.split("=", 1)[1]
        elif a == "--target" or a.startswith("--target="):
            raise Fail(f"Dockerfile line {build['line']}: --target is not handled by this check")
    need(pkg_name, f"Dockerfile line {build['line']}: cargo build names no package (-p)")
    need(pkg_name in packages, f"cargo build -p {pkg_name}: no such workspace member")
    bins = [t["name"] for t in packages[pkg_name]["targets"] if "bin" in t["kind"]]
    if bin_name is None:
        need(len(bins) == 1, f"cargo build -p {pkg_name}: the package has binaries {bins}; name one with --bin")
        bin_name = bins[0]
    need(bin_name in bins, f"cargo build --bin {bin_name}: package {pkg_name} has no such binary ({bins})")
    ok(f"builder runs `{' '.join(argv)}` (line {build['line']}): package {pkg_name} and its binary "
       f"{bin_name} exist in this workspace")

    # Everything cargo reads is in the builder when it runs.
    at = build["files"]
    missing = sorted(f for f in needed if os.path.join(build["workdir"], f) not in at)
    need(not missing, "files cargo needs are not in the builder at " + build["workdir"] + " (not copied, or "
                      "excluded by .dockerignore): " + ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else ""))
    ok(f"build context: every COPY source exists and is not excluded by .dockerignore; the {len(needed)} files "
       f"of the workspace (members {', '.join(member_dirs)}, Cargo.lock, .cargo/config.toml) reach "
       f"{build['workdir']} before cargo runs")

    # Where the binary ends up in the builder.
    built = os.path.join(build["target_dir"], "release", bin_name)
    cached = any(c == build["target_dir"] or build["target_dir"].startswith(c + "/") for c in build["cache"])
    bstage = build["stage"]
    outputs = [d for d, sp in bstage["product_sources"].items() if sp == built]
    if not cached:
        outputs.append(built)
        produced[bstage["index"]][built] = "file"
    need(outputs, f"the builder's {built} is in a cache mount and never copied out of it in the same RUN")
    if cached:
        ok(f"dependency caching: cargo's registry and {build['target_dir']} are cache mounts; the binary is "
           f"copied out to {outputs[0]} in the same step")

    # ---- the runtime stage
    rt = final
    rt_files = stage_files[rt["index"]]
    env = {"PATH": DEFAULT_PATH}
    env.update(rt["env"])
    last = {}
    volumes, exposed = [], []
    for lineno, ins, rest in rt["ins"]:
        last[ins] = (lineno, rest)
        if ins == "VOLUME":
            volumes += exec_form(rest) or rest.split()
        elif ins == "EXPOSE":
            exposed += [p.split("/")[0] for p in rest.split()]
    distroless = "distroless" in rt["image"] and "debug" not in rt["image"]

    need("USER" in last, "the runtime stage sets no USER: it would run as root")
    user = last["USER"][1].strip()
    uid, _, gid = user.partition(":")
    need(uid not in ("0", "root", "") and gid not in ("0", "root"), f"runtime USER {user} is root")
    need(uid.isdigit() and (not gid or gid.isdigit()),
         f"runtime USER {user}: give a numeric uid:gid, so files can be owned by it outside the image")
    gid = gid or uid
    ok(f"runtime runs as USER {uid}:{gid}, not root")

    def resolve(argv0):
        if argv0.startswith("/"):
            return argv0 if argv0 in rt_files else None
        for d in env["PATH"].split(":"):
            if os.path.join(d, argv0) in rt_files:
                return os.path.join(d, argv0)
        return None

    need("ENTRYPOINT" in last, "the runtime stage has no ENTRYPOINT")
    entrypoint = exec_form(last["ENTRYPOINT"][1])
    need(entrypoint, "ENTRYPOINT is in shell form" + (" (distroless has no /bin/sh)" if distroless else ""))
    binary = resolve(entrypoint[0])
    need(binary, f"ENTRYPOINT {entrypoint[0]} is not a file the runtime stage copies in (PATH {env['PATH']})")
    kind, origin, _ = rt_files[binary]
    need(origin in outputs, f"{binary} in the runtime image is {origin}, not the binary cargo built ({outputs})")
    ok(f"ENTRYPOINT {entrypoint} resolves to {binary}, the binary cargo built")

    cmd = exec_form(last.get("CMD", (0, "[]"))[1])
    need(cmd is not None, "CMD is in shell form")
    full = entrypoint + cmd
    need(len(full) > 1 and full[1] == "broker", f"the image's command {full} does not run `petrel broker`")

    def option(argv, name):
        for i, a in enumerate(argv):
            if a == name and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        return None

    config_path = option(full, "--config") or option(full, "-c")
    data_dir = option(full, "--data-dir")
    need(config_path, "the image's command gives no --config")
    need(config_path in rt_files and rt_files[config_path][0] == "file",
         f"--config {config_path} is not a file the runtime stage copies in")
    config_src = rt_files[config_path][1]
    need(not config_src.startswith("/"), f"{config_path} should come from the build context")
    config = tomllib.load(open(config_src, "rb"))
    ok(f"CMD {cmd}: --config {config_path} is {config_src} (valid TOML)")

    need(data_dir, "the image's command gives no --data-dir")
    need(data_dir in volumes, f"--data-dir {data_dir} is not a VOLUME ({volumes})")
    owner = rt_files.get(data_dir, (None, None, None))
    need(owner[0] == "dir", f"the runtime stage does not create {data_dir}")
    need(owner[2] == f"{uid}:{gid}", f"{data_dir} is owned by {owner[2] or 'root'}, not USER {uid}:{gid}: "
                                     "a new volume would not be writable")
    ok(f"VOLUME {data_dir} is the --data-dir, created in the image owned by {uid}:{gid}")

    need("HEALTHCHECK" in last, "the runtime stage has no HEALTHCHECK")
    hflags, _, hrest = split_flags(last["HEALTHCHECK"][1])
    need(not hrest.upper().startswith("NONE"), "HEALTHCHECK NONE")
    need(hrest.upper().startswith("CMD"), f"HEALTHCHECK {hrest}: no CMD")
    health = exec_form(hrest[3:].strip())
    need(health or not distroless, "HEALTHCHECK CMD in shell form: distroless has no /bin/sh")
    need(health, "HEALTHCHECK CMD in shell form: use the exec form")
    need(resolve(health[0]) == binary, f"HEALTHCHECK runs {health[0]}, not {binary}")
    url = option(health, "--url")
    http = config.get("http")
    need(http and "bind" in http, f"{config_src} has no [http] bind for the health check to reach")
    if url:
        m = re.match(r"^https?://([^/:\]]+|\[[^\]]+\]):(\d+)", url)
        need(m, f"HEALTHCHECK --url {url}: no host:port")
        hhost, hport = m.group(1).strip("[]"), m.group(2)
        bhost, _, bport = http["bind"].rpartition(":")
        bhost = bhost.strip("[]")
        need(hport == bport, f"HEALTHCHECK --url {url} is not the [http] port of {config_src} ({http['bind']})")
        need(bhost in (hhost, "0.0.0.0", "::"), f"HEALTHCHECK --url {url} does not reach [http] bind {http['bind']}")
    ok(f"HEALTHCHECK {health} ({' '.join(f'--{k}={v}' for k, v in hflags.items())}) reaches [http] "
       f"{http['bind']}")

    listeners = config.get("listener", [])
    need(listeners, f"{config_src} has no [[listener]]")
    ports = []
    public = False
    for l in listeners:
        bind = l.get("bind", "")
        host, _, port = bind.rpartition(":")
        ports.append(port)
        public |= host.strip("[]") not in ("127.0.0.1", "::1", "localhost")
    need(public, f"{config_src}: no listener is reachable from outside the container")
    for p in ports + [http["bind"].rpartition(":")[2]]:
        need(p in exposed, f"port {p} of {config_src} is not in EXPOSE ({exposed})")
    ok(f"EXPOSE {' '.join(exposed)} covers the listeners {[l.get('bind') for l in listeners]} and [http]")
    need(config.get("allow_anonymous") is not True, f"{config_src} allows anonymous clients")
    pw = config.get("password_file")
    need(pw, f"{config_src}: a public listener needs authentication (password_file)")
    need(pw not in rt_files, f"{pw} is baked into the image: it must be mounted by the user")
    ok(f"{config_src}: clients need a password from {pw}, which the image does not contain (mounted at run time)")

    stop = last.get("STOPSIGNAL", (0, "SIGTERM"))[1].strip()
    need(stop in ("SIGTERM", "TERM", "15"), f"STOPSIGNAL {stop}: the broker shuts down gracefully on SIGTERM")
    ok("STOPSIGNAL SIGTERM (the broker's graceful shutdown)")

    facts = {
        "user": [int(uid), int(gid)],
        "path": env["PATH"],
        "env": rt["env"],
        "entrypoint": entrypoint,
        "cmd": cmd,
        "binary": binary,
        "config_path": config_path,
        "config_src": config_src,
        "data_dir": data_dir,
        "data_dir_mode": "0700",
        "health": health,
        "health_timeout": hflags.get("timeout", "30s"),
        "password_file": pw,
        "listener_ports": ports,
        "http_port": http["bind"].rpartition(":")[2],
    }
    json.dump(facts, open(facts_path, "w"), indent=1)


# ------------------------------------------------------------ systemd unit


def parse_unit(path):
    sections = {}
    cur = None
    buf = ""
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not buf and line.lstrip().startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line, buf = buf + line, ""
        line = line.strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1], {})
            continue
        need(cur is not None and "=" in line, f"{path}: cannot read the line {line!r}")
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value == "":
            cur[key] = [""]  # an empty assignment resets the list
        else:
            cur.setdefault(key, []).append(value)
    return sections


def truthy(v):
    return v.lower() in ("yes", "true", "1", "on")


def check_unit(unit_path, facts_path):
    unit_name = os.path.basename(unit_path)
    sections = parse_unit(unit_path)
    svc = sections.get("Service", {})
    one = lambda k: svc.get(k, [None])[-1]
    for key in ("DynamicUser", "NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "LockPersonality",
                "MemoryDenyWriteExecute", "RestrictNamespaces"):
        need(one(key) and truthy(one(key)), f"{unit_path}: {key}=yes is missing")
    need(one("ProtectSystem") == "strict", f"{unit_path}: ProtectSystem=strict is missing")
    need(one("SystemCallArchitectures") == "native", f"{unit_path}: SystemCallArchitectures=native is missing")
    families = " ".join(v for v in svc.get("RestrictAddressFamilies", []) if v).split()
    need(families and set(families) <= {"AF_INET", "AF_INET6", "AF_UNIX"},
         f"{unit_path}: RestrictAddressFamilies should be AF_INET AF_INET6 AF_UNIX, is {families}")
    caps = " ".join(v for v in svc.get("CapabilityBoundingSet", ["(unset)"]) if v).split()
    need("CapabilityBoundingSet" in svc and set(caps) <= {"CAP_NET_BIND_SERVICE"},
         f"{unit_path}: CapabilityBoundingSet= should be empty (or CAP_NET_BIND_SERVICE only), is {caps}")
    state = one("StateDirectory")
    confdir = one("ConfigurationDirectory")
    need(state, f"{unit_path}: StateDirectory= is missing")
    need(confdir, f"{unit_path}: ConfigurationDirectory= is missing")
    need(one("Restart") == "on-failure", f"{unit_path}: Restart=on-failure is missing")
    need(one("LimitNOFILE"), f"{unit_path}: LimitNOFILE= is missing")
    need(one("TimeoutStopSec"), f"{unit_path}: TimeoutStopSec= is missing")
    reload = one("ExecReload") or ""
    need("-HUP" in reload and "$MAINPID" in reload, f"{unit_path}: ExecReload should send SIGHUP to $MAINPID")
    ok(f"{unit_name}: DynamicUser, StateDirectory={state}, ConfigurationDirectory={confdir}, NoNewPrivileges, "
       f"ProtectSystem=strict and the rest of the sandbox; no capabilities; ExecReload sends SIGHUP")

    execs = [v for v in svc.get("ExecStart", []) if v]
    need(len(execs) == 1, f"{unit_path}: one ExecStart= expected")
    argv = shlex.split(execs[0].lstrip("@-:+!"))
    need(argv[0].startswith("/"), f"ExecStart {argv[0]}: an absolute path is needed")
    need(len(argv) > 1 and argv[1] == "broker", f"ExecStart {execs[0]} does not run `petrel broker`")
    config = data_dir = None
    for i, a in enumerate(argv):
        if a in ("--config", "-c"):
            config = argv[i + 1]
        elif a == "--data-dir":
            data_dir = argv[i + 1]
    need(config and config.startswith(f"/etc/{confdir}/"),
         f"ExecStart: --config {config} is not under /etc/{confdir} (the ConfigurationDirectory)")
    state_path = f"/var/lib/{state}"
    need(data_dir in (state_path, "${STATE_DIRECTORY}", "$STATE_DIRECTORY"),
         f"ExecStart: --data-dir {data_dir} is not the StateDirectory {state_path}")
    ok(f"{unit_name}: ExecStart runs `{argv[0]} broker` with --config {config} and --data-dir {data_dir}")

    example = os.path.join(os.path.dirname(unit_path), os.path.basename(config))
    need(os.path.exists(example), f"no example configuration {example} for {config}")
    conf = tomllib.load(open(example, "rb"))
    creds = {}
    for v in svc.get("LoadCredential", []):
        if v:
            cid, _, src = v.partition(":")
            creds[cid] = src
    cred_dir = f"/run/credentials/{unit_name}/"
    writable = [state_path] + [f"/var/log/{d}" for d in svc.get("LogsDirectory", []) if d] + \
               [f"/run/{d}" for d in svc.get("RuntimeDirectory", []) if d] + \
               [p for v in svc.get("ReadWritePaths", []) for p in v.split()]
    seen = []

    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and key in READ_KEYS | WRITE_KEYS:
            seen.append((key, value))

    walk(conf, None)
    for key, path in seen:
        need(path.startswith("/"), f"{example}: {key} = {path!r}: use an absolute path in a service's configuration")
        if key in WRITE_KEYS:
            need(any(path == w or path.startswith(w + "/") for w in writable),
                 f"{example}: {key} = {path} is read-only under ProtectSystem=strict (writable: {writable})")
        elif path.startswith(cred_dir):
            need(path[len(cred_dir):] in creds,
                 f"{example}: {key} = {path}, but the unit has no LoadCredential={path[len(cred_dir):]}:...")
        else:
            need(path.startswith(f"/etc/{confdir}/"), f"{example}: {key} = {path} is outside /etc/{confdir}")
    need(conf.get("data_dir", data_dir) in (data_dir, state_path), f"{example}: data_dir differs from --data-dir")
    for l in conf.get("listener", []):
        port = int(l.get("bind", ":1883").rpartition(":")[2] or 0)
        if 0 < port < 1024:
            need("CAP_NET_BIND_SERVICE" in " ".join(svc.get("AmbientCapabilities", [])),
                 f"{example}: port {port} needs AmbientCapabilities=CAP_NET_BIND_SERVICE")
    ok(f"{example}: its files are under /etc/{confdir} or the unit's credentials "
       f"({', '.join(f'{k}:{v}' for k, v in creds.items()) or 'none'}), what it writes is under {writable}")
    json.dump({"argv": argv, "config": config, "config_src": example, "data_dir": state_path,
               "credentials_dir": cred_dir.rstrip("/"), "credentials": creds,
               "listener_ports": [l.get("bind", "").rpartition(":")[2] for l in conf.get("listener", [])],
               "http_port": conf.get("http", {}).get("bind", "").rpartition(":")[2]},
              open(facts_path, "w"), indent=1)


# ------------------------------------------------------- config rewriting


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise Fail(f"cannot write {v!r} as TOML")


def toml_dump(table, prefix=""):
    lines, subs = [], []
    for k, v in table.items():
        if isinstance(v, dict):
            subs.append((k, v, False))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            subs.append((k, v, True))
        else:
            lines.append(f"{k} = {toml_value(v)}")
    for k, v, array in subs:
        name = f"{prefix}{k}"
        for t in (v if array else [v]):
            lines.append("")
            lines.append(f"[[{name}]]" if array else f"[{name}]")
            lines += toml_dump(t, name + ".")
    return lines


def rewrite_config(src, dst, root, port_map):
    conf = tomllib.load(open(src, "rb"))
    port_map = json.loads(port_map)

    def walk(value, key):
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if isinstance(value, str) and key == "bind":
            host, _, port = value.rpartition(":")
            return f"{host}:{port_map.get(port, port)}"
        if isinstance(value, str) and key in READ_KEYS | WRITE_KEYS and value.startswith("/"):
            return os.path.join(root, value.lstrip("/"))
        return value

    new = walk(conf, None)
    with open(dst, "w") as f:
        f.write("# " + src + ", rewritten by .ci/packaging_check.sh\n")
        f.write("\n".join(toml_dump(new)) + "\n")
    tomllib.load(open(dst, "rb"))  # it must still parse


def free_ports(n):
    # Chosen as the interop scripts choose theirs (broker_process.free_port).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from broker_process import free_port

    print(" ".join(str(free_port()) for _ in range(n)))


def main():
    args = sys.argv[1:]
    try:
        if args[:1] == ["dockerfile"] and len(args) == 2:
            check_dockerfile(args[1])
        elif args[:1] == ["unit"] and len(args) == 3:
            check_unit(args[1], args[2])
        elif args[:1] == ["rewrite-config"] and len(args) == 5:
            rewrite_config(*args[1:])
        elif args[:1] == ["free-ports"] and len(args) == 2:
            free_ports(int(args[1]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Fail as e:
        print(f"packaging: FAIL: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

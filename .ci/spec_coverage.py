#!/usr/bin/env python3
"""Coverage of the MQTT normative statements by Petrel's tests.

Reads the two conformance checklists

    shared/spec/mqtt-v3.1.1-normative.md   (141 statements)
    shared/spec/mqtt-v5.0-normative.md     (251 statements)

(looked for in <root>/shared/spec and then <root>/../shared/spec; --spec-dir
overrides), scans the test code of crates/*, and reports, per protocol
version, how many numbered statements at least one test cites, split by the
checklist's "Binds" column.

Usage (from anywhere; Python 3.11, standard library only):

    python3 .ci/spec_coverage.py                  # summary
    python3 .ci/spec_coverage.py --list-missing   # + uncovered ids, per version
    python3 .ci/spec_coverage.py --json out.json  # + everything, machine-readable
    python3 .ci/spec_coverage.py --show MQTT-3.1.3-9   # who cites it, in which version
    python3 .ci/spec_coverage.py --citations      # every citation, one a line (TSV)

What counts as test code
------------------------
* every .rs file under crates/*/tests/ (helper modules such as
  tests/support/mod.rs included, but see "attribution");
* in crates/*/src: items marked #[cfg(test)] (a `mod tests { ... }`, or the
  file `mod tests;` points at), and any function carrying a test attribute
  (#[test], #[tokio::test], #[...::test], #[rstest], #[test_case], ...).
Comments and string literals outside those regions (the library's own
source comments, error messages) never count.

What a citation is
------------------
* text `MQTT-x.y.z-n` in a comment, doc comment or string literal of test
  code (so `[MQTT-3.1.0-2]` and `assert_eq!(e.spec(), Some("MQTT-3.1.0-2"))`
  both cite).  Also understood: lists `[MQTT-a, MQTT-b]`, ranges
  `MQTT-3.3.2-15..20` / `MQTT-3.1.2-11 to 13`, the standard's misprinted
  tags `MQTT-3.1.2.7` and `MQTT-3-8.3-4` (3.1.1) and the body form
  `MQTT-4.2-1` of 5.0's `MQTT-4.2.0-1`.  `MQTT-4.6.0` (three numbers) is a
  section reference: reported, not counted.
* a test function name holding `mqtt_x_y_z_n`; `_and_n` / `_and_x_y_z_n`
  add ids, `_to_n` / `_to_x_y_z_n` add ranges, extra trailing numbers
  (`mqtt_3_1_2_24_25`) add ids with the same prefix.  `mqtt_3_1_...` with
  only two numbers names the protocol MQTT 3.1, `mqtt_3_1_1` the protocol
  3.1.1 and `mqtt_5` / `mqtt_5_0` the protocol 5.0 (version hints, not
  citations); other three-number runs are section references.

Attribution
-----------
A citation belongs to the innermost test function whose span contains it;
the span runs from the comment/attribute lines right above `fn` (no blank
line between) to the function's closing brace, so a doc comment counts for
the function below it.  Citations in test code that is not inside a test
function (helpers, file or module comments) are listed as "outside test
functions" and do not count unless --count-helpers is given.

Version context (first rule that decides wins)
----------------------------------------------
 1. annotation inside the citation: `[MQTT-2.2.1-3 (5.0), MQTT-2.3.1-1 (3.1.1)]`;
 2. a label earlier in the same comment block: `Checks 5.0: [..], [..]; 3.1.1: [..]`
    (a label reaches to the next `;`, sentence end or other label);
 3. another citation of the same id in the same function decided by 1-2
    (so `fn x_mqtt_3_1_4_6` under `/// Checks 5.0: [MQTT-3.1.4-6]` is 5.0);
 4. an enclosing block that branches on the version: `if proto.is_v5() {`
    (5.0), `if !p.is_v5() {` (3.1.1), its `else {`, `if p == Protocol::V5 {`,
    a match arm `Protocol::V5 => {`;
 5. the citation's own sentence names exactly one version (`// [MQTT-3.1.3-8]:
    3.1.1 refuses ...`) and that version has the id;
 6. the test function's name: `_v5`, `_5_0_`, `mqtt_5`, `_v311`, `_3_1_1`,
    `_v3_` (3.1.1);
 7. the file name: `*v5*.rs` / `*311*.rs` / `*v3_1_1*.rs` (conformance_v5.rs,
    conformance_311.rs, server_v5.rs) -- unless the function body only uses the
    other version, which then wins;
 8. what the function body uses: `Protocol::V5`, a bare `V5` (constants),
    `"5.0"` mean 5.0; `Protocol::V3_1_1`, `V311`, `"3.1.1"` mean 3.1.1; both
    (a loop over both protocols, a 3.1.1 control in a 5.0 test) mean both;
    when the body names none, the same-file helper functions it calls (two
    levels deep) are looked at the same way;
 9. weak defaults: petrel-client's `ConnectOptions::new(..)` speaks 5.0 unless
    `.protocol(..)` says otherwise;
10. otherwise undecidable: the citation counts for every version whose
    checklist has the id and is listed as "ambiguous".
A context of exactly one version whose checklist lacks the id is a "context
mismatch" (listed, not counted); an id in neither checklist is "unknown".
Citations credited to both versions for an id whose two paraphrases differ
(same number, different rule: MQTT-3.1.2-22 is a Password Flag rule in 3.1.1
and the Keep Alive close in 5.0) are listed for a human to check; they still
count.  The script cannot tell whether a test really checks what it cites.
MQTT 3.1 (Protocol::V3_1) is not a version with a checklist and is ignored.

Output is deterministic; the scan takes well under a second.
"""

from __future__ import annotations

import argparse
import bisect
import difflib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field

V311 = "3.1.1"
V5 = "5.0"
VERSIONS = (V311, V5)
SPEC_FILES = {V311: "mqtt-v3.1.1-normative.md", V5: "mqtt-v5.0-normative.md"}


# --------------------------------------------------------------------------
# checklists


@dataclass
class Statement:
    version: str
    id: str
    key: tuple
    section: str
    binds: str
    paraphrase: str
    flags: str
    citations: list = field(default_factory=list)


ROW_RE = re.compile(
    r"^\|\s*(\d+)\s*\|\s*`(MQTT-[^`]+)`\s*\|([^|]*)\|([^|]*)\|(.*?)\|([^|]*)\|([^|]*)\|\s*$"
)


def id_key(raw: str):
    """('stmt', (a,b,c,n)) | ('section', (a,b,c)) | None for an id body
    like '3.1.2-7', '3.1.2.7', '3-8.3-4', '4.2-1', '4.6.0'."""
    nums = tuple(int(x) for x in re.findall(r"\d+", raw))
    if len(nums) == 4:
        return ("stmt", nums)
    if len(nums) == 3 and re.fullmatch(r"\d+\.\d+-\d+", raw):
        return ("stmt", (nums[0], nums[1], 0, nums[2]))  # MQTT-4.2-1 == 4.2.0-1
    if len(nums) == 3 and "-" not in raw:
        return ("section", nums)
    return None


def parse_spec(path: str, version: str) -> dict:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = ROW_RE.match(line)
            if not m:
                continue
            sid = m.group(2)
            k = id_key(sid[len("MQTT-"):])
            if not k or k[0] != "stmt":
                raise SystemExit(f"{path}: cannot read id {sid!r}")
            out[k[1]] = Statement(
                version, sid, k[1], m.group(3).strip(), m.group(4).strip(),
                m.group(5).strip(), m.group(6).strip(),
            )
    if not out:
        raise SystemExit(f"{path}: no statement rows found")
    return out


def fmt_key(k: tuple) -> str:
    return f"MQTT-{k[0]}.{k[1]}.{k[2]}-{k[3]}"


# --------------------------------------------------------------------------
# a small Rust lexer: comments, strings, brace structure

LEX_RE = re.compile(r"//|/\*|b?r#*\"|b?\"|b?'")


@dataclass
class Lexed:
    text: str
    code: str        # comments blanked (strings kept): for markers
    struct: str      # comments and string bodies blanked: for structure
    comments: list   # (start, end)
    strings: list    # (start, end)
    close_of: dict   # '{' offset -> matching '}' offset
    line_starts: list

    def line(self, pos: int) -> int:
        return bisect.bisect_right(self.line_starts, pos)


def blank(chars: list, a: int, b: int, text: str):
    for i in range(a, b):
        if text[i] != "\n":
            chars[i] = " "


def lex(text: str) -> Lexed:
    n = len(text)
    code = list(text)
    struct = list(text)
    comments, strings = [], []
    pos = 0
    while True:
        m = LEX_RE.search(text, pos)
        if not m:
            break
        s, tok = m.start(), m.group()
        if tok == "//":
            e = text.find("\n", s)
            e = n if e < 0 else e
            comments.append((s, e))
            blank(code, s, e, text)
            blank(struct, s, e, text)
            pos = e
        elif tok == "/*":
            depth, i = 1, s + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            comments.append((s, i))
            blank(code, s, i, text)
            blank(struct, s, i, text)
            pos = i
        elif tok.endswith("'"):
            # char literal or lifetime
            if s > 0 and (text[s - 1].isalnum() or text[s - 1] == "_") and tok == "'":
                pos = s + 1
                continue
            q = m.end()
            if q < n and text[q] == "\\":
                e = text.find("'", q + 2)
                e = n - 1 if e < 0 else e
                blank(struct, q, e, text)
                pos = e + 1
            elif q + 1 < n and text[q + 1] == "'":
                blank(struct, q, q + 1, text)
                pos = q + 2
            else:
                pos = q  # lifetime / label
        else:
            if s > 0 and (text[s - 1].isalnum() or text[s - 1] == "_"):
                pos = m.end()  # e.g. an identifier ending in b or r
                continue
            body = m.end()
            if "r" in tok:
                hashes = tok.count("#")
                end_tok = '"' + "#" * hashes
                e = text.find(end_tok, body)
                e = n if e < 0 else e
                close = e + len(end_tok)
            else:
                i = body
                while i < n and text[i] != '"':
                    i += 2 if text[i] == "\\" else 1
                e = min(i, n)
                close = e + 1
            strings.append((s, min(close, n)))
            blank(struct, body, e, text)
            pos = close
    struct_s = "".join(struct)
    close_of, stack = {}, []
    for i, ch in enumerate(struct_s):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            close_of[stack.pop()] = i
    line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    return Lexed(text, "".join(code), struct_s, comments, strings, close_of, line_starts)


# --------------------------------------------------------------------------
# items: functions, #[cfg(test)] regions, version-branching blocks

FN_RE = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
TEST_ATTR_RE = re.compile(
    r"#\[\s*(?:[A-Za-z_][\w]*::)*(?:test|rstest|test_case|quickcheck)\b"
)
CFG_TEST_RE = re.compile(r"#\[\s*cfg\s*\(\s*test\s*\)\s*\]")

MARK5_RE = re.compile(r"\bV5\b|\"5\.0\"")
MARK311_RE = re.compile(r"\bV3_1_1\b|\bV311\b|\"3\.1\.1\"")
CONST_RE = re.compile(
    r"\b(?:const|static)\s+(?P<name>[A-Z_][A-Z0-9_]*)\s*:[^=]*?=(?P<val>(?:[^\n]*\n){0,6}?[^\n]*);[ \t]*$",
    re.M)
CALL_RE = re.compile(r"\b([A-Za-z_]\w*)\s*(?:::<[^>]*>)?\s*\(")
WEAK_DEFAULTS = [
    # (regex in the body, unless-regex, version, why)
    (re.compile(r"\bConnectOptions::new\s*\("), re.compile(r"\.protocol\s*\("), V5,
     "petrel-client ConnectOptions default to Protocol::V5"),
]


@dataclass
class Fn:
    name: str
    start: int       # start of leading comments/attributes
    fn_pos: int
    body_open: int   # -1 for a declaration without body
    end: int
    is_test: bool
    line: int


def find_body(lx: Lexed, i: int):
    """From just after `fn name`, the offset of the body's `{`, or -1."""
    s, n, depth = lx.struct, len(lx.struct), 0
    while i < n:
        ch = s[i]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth <= 0 and ch == "{":
            return i
        elif depth <= 0 and ch == ";":
            return -1
        i += 1
    return -1


def leading_start(lx: Lexed, fn_pos: int) -> tuple[int, str]:
    """Start of the comment/attribute lines right above fn_pos, and the
    attribute text found there."""
    text = lx.text
    ln = lx.line(fn_pos) - 1  # 0-based line index
    start = lx.line_starts[ln]
    i = ln - 1
    attrs = [text[start:fn_pos]]
    open_attr = False
    while i >= 0:
        a = lx.line_starts[i]
        b = lx.line_starts[i + 1] - 1
        line = text[a:b].strip()
        if not line:
            break
        if (line.startswith(("#[", "//", "/*", "*")) or line.endswith(("*/", ")]", "]"))
                or open_attr):
            start = a
            attrs.append(line)
            # a multi-line attribute: keep climbing until its `#[`
            open_attr = (line.endswith(("]", ")]", ",", "(")) and not line.startswith(("#[", "//")))
            i -= 1
            continue
        break
    return start, "\n".join(attrs)


def find_fns(lx: Lexed) -> list[Fn]:
    fns = []
    for m in FN_RE.finditer(lx.struct):
        body = find_body(lx, m.end())
        end = lx.close_of.get(body, m.end()) if body >= 0 else m.end()
        start, attrs = leading_start(lx, m.start())
        is_test = bool(TEST_ATTR_RE.search(strip_comments(attrs)))
        fns.append(Fn(m.group(1), start, m.start(), body, end, is_test, lx.line(m.start())))
    return fns


def strip_comments(s: str) -> str:
    return "\n".join(l for l in s.split("\n") if not l.strip().startswith("//"))


def cfg_test_regions(lx: Lexed, path: str) -> tuple[list, list]:
    """(regions, extra test files) for #[cfg(test)] items of a src file."""
    regions, extra = [], []
    for m in CFG_TEST_RE.finditer(lx.struct):
        i = m.end()
        mm = re.match(r"\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", lx.struct[i:])
        if mm:
            base = os.path.dirname(path)
            stem = os.path.splitext(os.path.basename(path))[0]
            if stem not in ("mod", "lib", "main"):
                base = os.path.join(base, stem)
            for cand in (os.path.join(base, mm.group(1) + ".rs"),
                         os.path.join(base, mm.group(1), "mod.rs")):
                if os.path.isfile(cand):
                    extra.append(os.path.normpath(cand))
            continue
        body = find_body(lx, i)
        if body >= 0:
            regions.append((m.start(), lx.close_of.get(body, len(lx.text))))
    return regions, extra


def versions_in(s: str) -> set:
    v = set()
    if MARK5_RE.search(s):
        v.add(V5)
    if MARK311_RE.search(s):
        v.add(V311)
    return v


def version_blocks(lx: Lexed) -> list:
    """[(open, close, version)] for blocks that run for one version only."""
    out = []
    s = lx.struct
    code = lx.code
    last_block_version = {}  # close offset -> version of an `if` block
    for open_, close in sorted(lx.close_of.items()):
        j = open_ - 1
        while j >= 0 and s[j] not in "{};":
            j -= 1
        header = code[j + 1:open_]
        h = " ".join(header.split())
        ver = None
        if re.search(r"\bif\b", h):
            cond = h[h.rfind("if"):]
            if "is_v5()" in cond:
                ver = V311 if re.search(r"!\s*[\w.()]*is_v5\(\)", cond) else V5
            else:
                vs = versions_in(cond)
                if len(vs) == 1 and "!=" not in cond:
                    ver = next(iter(vs))
            if ver:
                last_block_version[close] = ver
        elif re.fullmatch(r"\s*else\s*", header):
            k = j  # s[j] is the '}' closing the if block
            if s[k] == "}" and k in last_block_version:
                prev = last_block_version[k]
                ver = V311 if prev == V5 else V5
        else:
            arm = h.rsplit(",", 1)[-1]
            if "=>" in arm:
                vs = versions_in(arm.split("=>")[0])
                if len(vs) == 1:
                    ver = next(iter(vs))
        if ver:
            out.append((open_, close, ver))
    return out


# --------------------------------------------------------------------------
# citations

CITE_RE = re.compile(
    r"MQTT-(?P<id>\d+(?:[.-]\d+){1,3})"
    r"(?:\s*(?:\.\.=?|\u2013|\u2014|\bto\b)\s*(?:MQTT-)?(?P<to>\d+(?:[.-]\d+){0,3}))?"
    r"(?:\s*\((?P<ann>[^()\]]{1,40})\))?"
)
VERTOK5 = r"(?:\b5\.0\b|\bv5\b|\bMQTT ?5\b)"
VERTOK311 = r"(?:\b3\.1\.1\b|\bv3\.1\.1\b|\bv311\b)"
LABEL_RE = re.compile(rf"(?P<v>{VERTOK5}|{VERTOK311})(?:\s*:|(?=\s*\[?MQTT-))")
RESET_RE = re.compile(r";|\.(?:\s|$)")
# `[MQTT-a], [MQTT-b] (5.0)`: a version-only parenthesis after a list
LIST_ANN_RE = re.compile(rf"\]\s*\(\s*(?P<v>{VERTOK5}|{VERTOK311})(?:\s+only)?\s*\)")
# asides that carry their own labels or citations: `(3.1.1: Clean Session 1)`
ASIDE_RE = re.compile(r"\([^()]*(?::|MQTT-)[^()]*\)")


def ann_version(s: str | None):
    if not s:
        return None
    a5 = bool(re.search(VERTOK5, s, re.I))
    a3 = bool(re.search(VERTOK311, s, re.I))
    if a5 != a3:
        return V5 if a5 else V311
    return None


def tok_version(s: str):
    return V5 if re.fullmatch(VERTOK5, s, re.I) else V311


@dataclass
class Citation:
    file: str
    line: int
    raw: str
    key: tuple | None          # statement key (a,b,c,n)
    section: tuple | None      # section reference instead
    kind: str                  # comment | string | name
    forced: str | None = None  # version from annotation / label
    forced_how: str = ""
    sentence_hint: str | None = None
    pos: int = 0
    fn: Fn | None = None
    versions: list = field(default_factory=list)
    how: str = ""
    status: str = ""           # counted | ambiguous | mismatch | unknown | section | outside


def expand(raw_id: str, raw_to: str | None):
    """[('stmt', key) | ('section', key)] for an id and an optional range end."""
    k = id_key(raw_id)
    if not k:
        return []
    if not raw_to or k[0] != "stmt":
        return [k]
    a, b, c, n = k[1]
    nums = tuple(int(x) for x in re.findall(r"\d+", raw_to))
    if len(nums) == 1:
        last = nums[0]
    elif len(nums) == 4 and nums[:3] == (a, b, c):
        last = nums[3]
    else:
        return [k]
    if not (n <= last <= n + 64):
        return [k]
    return [("stmt", (a, b, c, x)) for x in range(n, last + 1)]


def comment_blocks(lx: Lexed) -> list:
    """Merge consecutive comments (only whitespace between) into blocks."""
    blocks = []
    for a, b in lx.comments:
        gap = lx.text[blocks[-1][1]:a] if blocks else "x"
        if not gap.strip() and gap.count("\n") <= 1:
            blocks[-1][1] = b
        else:
            blocks.append([a, b])
    return blocks


def paren_close(seg: str, i: int, spans) -> int | None:
    """If seg[i] lies inside an unclosed '(' (outside citations), the offset
    of the matching ')'; else None."""
    def outside(j):
        return not any(x <= j < y for x, y in spans)
    depth = 0
    for j in range(i - 1, -1, -1):
        if not outside(j):
            continue
        if seg[j] == ")":
            depth += 1
        elif seg[j] == "(":
            if depth == 0:
                d = 0
                for k in range(j + 1, len(seg)):
                    if not outside(k):
                        continue
                    if seg[k] == "(":
                        d += 1
                    elif seg[k] == ")":
                        if d == 0:
                            return k
                        d -= 1
                return len(seg)
            depth -= 1
    return None


def text_citations(lx: Lexed, path: str, a: int, b: int, kind: str) -> list[Citation]:
    """Citations in text[a:b] (a comment block or a string literal)."""
    seg = lx.text[a:b]
    out = []
    found = list(CITE_RE.finditer(seg))
    spans = [(m.start(), m.end()) for m in found]
    # sentence/label boundaries: `;` or a full stop, not inside a citation
    resets = [r.start() for r in RESET_RE.finditer(seg)
              if not any(x <= r.start() < y for x, y in spans)]
    labels = []  # (start, end of label, scope end, version)
    if kind == "comment":
        for L in LABEL_RE.finditer(seg):
            if any(x <= L.start() < y for x, y in spans):
                continue
            stop = min([r for r in resets if r >= L.end()], default=len(seg))
            pc = paren_close(seg, L.start(), spans)
            if pc is not None:
                stop = min(stop, pc)
            labels.append((L.start(), L.end(), stop, tok_version(L.group("v"))))
    list_anns = [(m.start(), tok_version(m.group("v"))) for m in LIST_ANN_RE.finditer(seg)]
    for m in found:
        forced, how = ann_version(m.group("ann")), "annotation"
        s0 = max([r + 1 for r in resets if r < m.start()], default=0)
        s1 = min([r for r in resets if r >= m.end()], default=len(seg))
        if not forced:
            for ls, le, stop, v in labels:
                if le <= m.start() < stop:
                    forced, how = v, "label"  # the last label in force wins
        if not forced:
            for pos, v in list_anns:
                if m.end() <= pos + 1 <= s1:
                    forced, how = v, "annotation after the list"
                    break
        sentence = seg[s0:s1]
        sentence = ASIDE_RE.sub(" ", sentence)
        sentence = LIST_ANN_RE.sub("] ", sentence)
        hint = ann_version(CITE_RE.sub(" ", sentence))
        for k in expand(m.group("id"), m.group("to")):
            out.append(Citation(path, lx.line(a + m.start()), m.group(0).strip(),
                                k[1] if k[0] == "stmt" else None,
                                k[1] if k[0] == "section" else None,
                                kind, forced, how if forced else "", hint, a + m.start()))
    return out


def name_citations(name: str):
    """(citations [(kind, key)], version hints, tokens left over)."""
    toks = name.split("_")
    n = len(toks)
    cites, hints, used = [], set(), set()

    def run_at(j):
        r = []
        while j < n and toks[j].isdigit():
            r.append(int(toks[j]))
            j += 1
        return r, j

    i = 0
    while i < n:
        if toks[i].lower() != "mqtt":
            i += 1
            continue
        run, j = run_at(i + 1)
        if not run:
            i += 1
            continue
        used.update(range(i, j))
        if run in ([5], [5, 0]):
            hints.add(V5)
        elif run == [3, 1, 1]:
            hints.add(V311)
        elif len(run) == 2:
            pass  # MQTT 3.1
        elif len(run) == 3:
            cites.append(("section", tuple(run)))
        else:
            prefix = tuple(run[:3])
            last = run[3]
            cites.append(("stmt", prefix + (last,)))
            for extra in run[4:]:
                cites.append(("stmt", prefix + (extra,)))
                last = extra
            while j + 1 < n and toks[j] in ("and", "to") and toks[j + 1].isdigit():
                run2, j2 = run_at(j + 1)
                if len(run2) == 1 or (len(run2) >= 4 and tuple(run2[:3]) == prefix):
                    end = run2[0] if len(run2) == 1 else run2[3]
                    if toks[j] == "to" and last <= end <= last + 64:
                        cites += [("stmt", prefix + (x,)) for x in range(last + 1, end + 1)]
                    else:
                        cites.append(("stmt", prefix + (end,)))
                    last = end
                    for extra in run2[4:]:
                        cites.append(("stmt", prefix + (extra,)))
                        last = extra
                elif len(run2) >= 4 and toks[j] == "and":
                    prefix = tuple(run2[:3])
                    last = run2[3]
                    cites.append(("stmt", prefix + (last,)))
                else:
                    break
                used.update(range(j, j2))
                j = j2
        i = j
    rest = [t.lower() for k, t in enumerate(toks) if k not in used]
    joined = "_" + "_".join(rest) + "_"
    if re.search(r"_(?:v5|v50|mqtt5|mqttv5)_|_5_0_", joined):
        hints.add(V5)
    if re.search(r"_(?:v311|v3_1_1|mqtt311)_|_3_1_1_|_v3_(?!1_)", joined):
        hints.add(V311)
    return cites, hints


# --------------------------------------------------------------------------
# scanning


@dataclass
class FileScan:
    path: str
    lx: Lexed
    fns: list
    test_regions: list   # (start, end); whole file = [(0, len)]
    blocks: list = field(default_factory=list)
    consts: dict | None = None


def rel(root: str, p: str) -> str:
    return os.path.relpath(p, root)


def file_hint(path: str):
    base = os.path.basename(path).lower()
    stem = os.path.splitext(base)[0]
    t = "_" + stem + "_"
    v5 = bool(re.search(r"_v5_|_v50_|_mqtt5_|_5_0_", t))
    v3 = bool(re.search(r"_v?311_|_v3_1_1_|_3_1_1_", t))
    if v5 != v3:
        return V5 if v5 else V311
    return None


class Scanner:
    def __init__(self, root: str, specs: dict):
        self.root = root
        self.specs = specs
        self.files: list[FileScan] = []
        self.citations: list[Citation] = []
        self.test_fns = 0

    def collect_files(self):
        crates = os.path.join(self.root, "crates")
        test_files, src_files = [], []
        for crate in sorted(os.listdir(crates)):
            cdir = os.path.join(crates, crate)
            if not os.path.isdir(cdir):
                continue
            for sub, bucket in (("tests", test_files), ("src", src_files)):
                d = os.path.join(cdir, sub)
                for dp, dns, fns in os.walk(d):
                    dns.sort()
                    for f in sorted(fns):
                        if f.endswith(".rs"):
                            bucket.append(os.path.join(dp, f))
        return test_files, src_files

    def scan(self):
        test_files, src_files = self.collect_files()
        whole = set(test_files)
        regions_of = {}
        for p in src_files:
            with open(p, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if "cfg(test)" not in text and "test" not in text:
                continue
            lx = lex(text)
            regions, extra = cfg_test_regions(lx, p)
            whole.update(extra)
            regions_of[p] = (lx, regions)
        for p in sorted(set(test_files) | set(src_files)):
            if p in whole:
                lx = regions_of[p][0] if p in regions_of else None
                if lx is None:
                    with open(p, encoding="utf-8", errors="replace") as f:
                        lx = lex(f.read())
                regions = [(0, len(lx.text))]
            elif p in regions_of:
                lx, regions = regions_of[p]
            else:
                continue
            fns = find_fns(lx)
            # test functions outside cfg(test) regions are test code too
            for fn in fns:
                if fn.is_test and not any(a <= fn.fn_pos < b for a, b in regions):
                    regions.append((fn.start, fn.end))
            if not regions:
                continue
            fs = FileScan(p, lx, fns, regions)
            self.files.append(fs)
            self.scan_file(fs)

    def in_regions(self, fs: FileScan, pos: int) -> bool:
        return any(a <= pos < b for a, b in fs.test_regions)

    def scan_file(self, fs: FileScan):
        lx = fs.lx
        path = rel(self.root, fs.path)
        cites = []
        for a, b in comment_blocks(lx):
            if self.in_regions(fs, a) and "MQTT-" in lx.text[a:b]:
                cites += text_citations(lx, path, a, b, "comment")
        for a, b in lx.strings:
            if self.in_regions(fs, a) and "MQTT-" in lx.text[a:b]:
                cites += text_citations(lx, path, a, b, "string")
        test_fns = [f for f in fs.fns if f.is_test and self.in_regions(fs, f.fn_pos)]
        self.test_fns += len(test_fns)
        name_hints = {}
        for fn in test_fns:
            nc, hints = name_citations(fn.name)
            name_hints[id(fn)] = hints
            for kind, key in nc:
                c = Citation(path, fn.line, fn.name, key if kind == "stmt" else None,
                             key if kind == "section" else None, "name", pos=fn.fn_pos)
                c.fn = fn
                cites.append(c)
        if not cites:
            return
        fs.blocks = version_blocks(lx)
        # attribution
        for c in cites:
            if c.fn is None:
                enclosing = [f for f in fs.fns if f.start <= c.pos <= f.end]
                tests = [f for f in enclosing if f.is_test]
                if tests:
                    c.fn = max(tests, key=lambda f: f.start)
                elif enclosing:
                    c.fn = max(enclosing, key=lambda f: f.start)
        by_fn: dict = {}
        for c in cites:
            by_fn.setdefault(id(c.fn) if c.fn else None, []).append(c)
        fn_ctx_cache: dict = {}
        for group in by_fn.values():
            fn = group[0].fn
            forced_by_key: dict = {}
            for c in group:
                if c.forced and c.key:
                    forced_by_key.setdefault(c.key, set()).add(c.forced)
            for c in group:
                self.decide(fs, c, forced_by_key, name_hints, fn_ctx_cache)
            del fn
        self.citations += cites

    # -- version context ---------------------------------------------------

    def file_consts(self, fs: FileScan) -> dict:
        """Constants/statics of the file whose value names a version:
        `const BOTH: [Protocol; 2] = [Protocol::V3_1_1, Protocol::V5];`."""
        if fs.consts is None:
            fs.consts = {}
            for m in CONST_RE.finditer(fs.lx.code):
                vs = versions_in(m.group("val"))
                if vs and m.group("name") not in ("V5", "V311", "V3_1_1"):
                    fs.consts[m.group("name")] = vs
        return fs.consts

    def body_versions(self, fs: FileScan, code: str) -> set:
        vs = versions_in(code)
        for name, cv in self.file_consts(fs).items():
            if name in code and re.search(rf"\b{re.escape(name)}\b", code):
                vs |= cv
        return vs

    def reach(self, fs: FileScan, fn: Fn, depth: int = 2) -> list:
        """Same-file non-test functions `fn` calls, up to `depth` levels."""
        helpers: dict = {}
        for f in fs.fns:
            if not f.is_test and f.body_open >= 0:
                helpers.setdefault(f.name, f)
        out, seen, frontier = [], {id(fn)}, [fn]
        for _ in range(depth):
            nxt = []
            for f in frontier:
                body = fs.lx.code[f.body_open:f.end + 1] if f.body_open >= 0 else ""
                for name in sorted(set(CALL_RE.findall(body))):
                    h = helpers.get(name)
                    if h is not None and id(h) not in seen:
                        seen.add(id(h))
                        out.append(h)
                        nxt.append(h)
            frontier = nxt
        return out

    def fn_context(self, fs: FileScan, fn: Fn | None, name_hints, cache) -> tuple[set, str]:
        key = id(fn) if fn else None
        if key in cache:
            return cache[key]
        res: tuple[set, str] = (set(), "")
        fh = file_hint(fs.path)
        if fn is not None:
            nh = name_hints.get(id(fn)) or name_citations(fn.name)[1]
            code = fs.lx.code[fn.body_open:fn.end + 1] if fn.body_open >= 0 else ""
            body = self.body_versions(fs, code)
            why = "body uses " + "+".join(sorted(body)) if body else ""
            helpers = self.reach(fs, fn) if not body or len(nh) != 1 else []
            if not body:
                via = []
                for h in helpers:
                    hv = self.body_versions(fs, fs.lx.code[h.body_open:h.end + 1])
                    if hv:
                        body |= hv
                        via.append(h.name)
                if body:
                    why = f"helper {', '.join(via)}() uses " + "+".join(sorted(body))
            if len(nh) == 1:
                res = (set(nh), "function name")
            elif fh and (not body or fh in body):
                res = ({fh}, "file name")
            elif body:
                res = (body, why)
            else:
                allcode = code + "".join(fs.lx.code[h.body_open:h.end + 1] for h in helpers)
                for rx, unless, ver, why in WEAK_DEFAULTS:
                    if rx.search(allcode) and not unless.search(allcode):
                        res = ({ver}, "default: " + why)
                        break
        elif fh:
            res = ({fh}, "file name")
        cache[key] = res
        return res

    def decide(self, fs: FileScan, c: Citation, forced_by_key, name_hints, cache):
        if c.section is not None:
            c.status = "section"
            c.how = "section reference"
            return
        have = [v for v in VERSIONS if c.key in self.specs[v]]
        if c.fn is None or not c.fn.is_test:
            c.status = "outside"
        if not have:
            c.status = c.status or "unknown"
            c.how = c.how or "id in neither checklist"
            if c.status == "outside":
                c.how = "outside test functions; id in neither checklist"
            return
        ctx, how = set(), ""
        if c.forced:
            ctx, how = {c.forced}, c.forced_how
        elif c.key in forced_by_key:
            ctx, how = set(forced_by_key[c.key]), "same id labelled in this function"
        else:
            for a, b, v in fs.blocks:
                if a < c.pos < b:
                    ctx, how = {v}, "inside a version branch"  # innermost wins (sorted)
            if not ctx and c.sentence_hint and c.sentence_hint in have:
                ctx, how = {c.sentence_hint}, "sentence names the version"
            if not ctx:
                ctx, how = self.fn_context(fs, c.fn, name_hints, cache)
        if c.status == "outside":
            c.versions = [v for v in VERSIONS if v in (ctx or set(have)) and v in have]
            c.how = "outside test functions" + (f" ({how})" if how else "")
            return
        if not ctx:
            c.versions, c.status, c.how = have, "ambiguous", "no version context"
            return
        c.versions = [v for v in VERSIONS if v in ctx and v in have]
        c.how = how
        if c.versions:
            c.status = "counted"
        else:
            c.status = "mismatch"
            c.how = f"{how}: context {'+'.join(sorted(ctx))}, id only in {'+'.join(have)}"


# --------------------------------------------------------------------------
# report


def find_spec_dir(root: str, given: str | None) -> str:
    cands = [given] if given else [
        os.path.join(root, "shared", "spec"),
        os.path.join(root, "..", "shared", "spec"),
    ]
    for d in cands:
        if d and all(os.path.isfile(os.path.join(d, f)) for f in SPEC_FILES.values()):
            return os.path.normpath(d)
    raise SystemExit(f"spec checklists not found in {cands} (use --spec-dir)")


def cite_dict(c: Citation) -> dict:
    return {
        "file": c.file, "line": c.line, "function": c.fn.name if c.fn else None,
        "kind": c.kind, "text": c.raw,
        "id": fmt_key(c.key) if c.key else None,
        "section": ".".join(map(str, c.section)) if c.section else None,
        "versions": c.versions, "status": c.status, "context": c.how,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="repository root (default: the parent of .ci/)")
    ap.add_argument("--spec-dir", help="folder holding the two *-normative.md checklists")
    ap.add_argument("--list-missing", action="store_true", help="list uncovered statements per version")
    ap.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    ap.add_argument("--show", metavar="ID", action="append", default=[],
                    help="list the citations of one id (repeatable), e.g. MQTT-3.1.3-9")
    ap.add_argument("--citations", action="store_true", help="print every citation (TSV)")
    ap.add_argument("--count-helpers", action="store_true",
                    help="also count citations in test code outside test functions")
    ap.add_argument("--quiet-lists", action="store_true",
                    help="print counts only for ambiguous/mismatch/... lists")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    root = os.path.abspath(args.root)
    spec_dir = find_spec_dir(root, args.spec_dir)
    specs = {v: parse_spec(os.path.join(spec_dir, SPEC_FILES[v]), v) for v in VERSIONS}
    sc = Scanner(root, specs)
    sc.scan()
    cites = sorted(sc.citations, key=lambda c: (c.file, c.line, c.raw))
    counted_status = {"counted", "ambiguous"} | ({"outside"} if args.count_helpers else set())
    for c in cites:
        if c.status in counted_status and c.key:
            for v in c.versions:
                specs[v][c.key].citations.append(c)
    elapsed = time.perf_counter() - t0

    out = sys.stdout
    w = out.write
    n_files = len({c.file for c in cites})
    w("MQTT normative-statement coverage by Petrel's tests\n")
    w(f"spec: {rel(root, spec_dir) if spec_dir.startswith(root) else spec_dir}; "
      f"scanned {len(sc.files)} files with test code, {sc.test_fns} test functions; "
      f"{len(cites)} citations in {n_files} files; {elapsed:.2f} s\n")
    result = {"versions": {}}
    for v in VERSIONS:
        st = list(specs[v].values())
        cov = [s for s in st if s.citations]
        w(f"\nMQTT {v}: {len(cov)}/{len(st)} statements covered ({100 * len(cov) / len(st):.1f}%)\n")
        groups: dict = {}
        for s in st:
            g = groups.setdefault(s.binds, [0, 0])
            g[1] += 1
            g[0] += bool(s.citations)
        w(f"  {'Binds':<18} {'covered':>7} / {'total':<5} {'%':>6}\n")
        for b, (c_, t_) in sorted(groups.items(), key=lambda kv: (-kv[1][1], kv[0])):
            w(f"  {b:<18} {c_:>7} / {t_:<5} {100 * c_ / t_:>5.1f}%\n")
        only_amb = [s for s in cov if all(c.status == "ambiguous" for c in s.citations)]
        if only_amb:
            w(f"  ({len(only_amb)} of the covered are covered only by ambiguous citations)\n")
        result["versions"][v] = {
            "covered": len(cov), "total": len(st),
            "percent": round(100 * len(cov) / len(st), 1),
            "by_binds": {b: {"covered": c_, "total": t_} for b, (c_, t_) in groups.items()},
            "statements": [{
                "id": s.id, "section": s.section, "binds": s.binds, "paraphrase": s.paraphrase,
                "flags": s.flags, "covered": bool(s.citations),
                "citations": [cite_dict(c) for c in s.citations],
            } for s in st],
        }

    def listing(title, status, note):
        sel = [c for c in cites if c.status == status]
        w(f"\n{title}: {len(sel)}{note}\n")
        if args.quiet_lists:
            return sel
        for c in sel:
            ident = fmt_key(c.key) if c.key else "MQTT-" + ".".join(map(str, c.section or ()))
            fn = c.fn.name if c.fn else "-"
            vs = ("-> " + ", ".join(c.versions)) if c.versions else ""
            w(f"  {c.file}:{c.line}  {fn}  {ident} {vs}  [{c.how}]\n")
        return sel

    amb = listing("Ambiguous citations (no version context; counted for every version with the id)",
                  "ambiguous", "")
    mis = listing("Context mismatches (the id is not in the version the test is about; not counted)",
                  "mismatch", "")
    unk = listing("Unknown ids (in neither checklist; not counted)", "unknown", "")
    sec = listing("Section references (no statement number; not counted)", "section", "")
    outs = listing("Citations in test code outside test functions", "outside",
                   " (counted)" if args.count_helpers else " (not counted; --count-helpers counts them)")

    # ids credited to both versions by one citation although the two
    # checklists give them different meanings: the test probably means one.
    cross = []
    for c in cites:
        if c.status in counted_status and len(c.versions) == 2:
            p3, p5 = specs[V311][c.key].paraphrase, specs[V5][c.key].paraphrase
            if difflib.SequenceMatcher(None, p3.lower(), p5.lower()).ratio() < 0.6:
                cross.append((c, p3, p5))
    w(f"\nCredited to both versions although the id means different things in each "
      f"(check which one the test means): {len(cross)}\n")
    if not args.quiet_lists:
        for c, p3, p5 in cross:
            w(f"  {c.file}:{c.line}  {c.fn.name if c.fn else '-'}  {fmt_key(c.key)}  [{c.how}]\n"
              f"      3.1.1: {p3}\n      5.0:   {p5}\n")

    if args.list_missing:
        for v in VERSIONS:
            miss = [s for s in specs[v].values() if not s.citations]
            w(f"\nUncovered in MQTT {v} ({len(miss)}):\n")
            for s in miss:
                fl = f"  [{s.flags}]" if s.flags else ""
                w(f"  {s.id:<16} {s.binds:<16} {s.paraphrase}{fl}\n")

    for want in args.show:
        k = id_key(want.upper().removeprefix("MQTT-").removeprefix("MQTT_").replace("_", "."))
        w(f"\n{want}:\n")
        if not k or k[0] != "stmt":
            w("  not a statement id\n")
            continue
        for v in VERSIONS:
            s = specs[v].get(k[1])
            w(f"  {v}: {s.binds + ' | ' + s.paraphrase if s else '(no such statement)'}\n")
        for c in cites:
            if c.key == k[1]:
                w(f"  {c.file}:{c.line}  {c.fn.name if c.fn else '-'}  {c.status} "
                  f"{','.join(c.versions) or '-'}  [{c.how}]\n")

    if args.citations:
        w("\nfile\tline\tfunction\tkind\tid\tstatus\tversions\tcontext\n")
        for c in cites:
            ident = fmt_key(c.key) if c.key else "section " + ".".join(map(str, c.section or ()))
            w(f"{c.file}\t{c.line}\t{c.fn.name if c.fn else '-'}\t{c.kind}\t{ident}\t"
              f"{c.status}\t{','.join(c.versions)}\t{c.how}\n")

    if args.json:
        result.update({
            "spec_dir": spec_dir,
            "elapsed_s": round(elapsed, 3),
            "test_functions": sc.test_fns,
            "citations": [cite_dict(c) for c in cites],
            "ambiguous": [cite_dict(c) for c in amb],
            "mismatches": [cite_dict(c) for c in mis],
            "unknown": [cite_dict(c) for c in unk],
            "sections": [cite_dict(c) for c in sec],
            "outside_test_functions": [cite_dict(c) for c in outs],
            "cross_version": [dict(cite_dict(c), paraphrase_311=p3, paraphrase_50=p5)
                              for c, p3, p5 in cross],
        })
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

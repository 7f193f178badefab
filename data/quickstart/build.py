#!/usr/bin/env python3
"""Build the quickstart corpus from the Debian packages unpacked by build.sh.

Usage: build.py <unpacked packages dir> <output dir>

Each domain's text is cut into *groups* (a Bible chapter, a novel's chapter, a Jargon File
entry, a section of a man page, a dictionary entry), which are assigned to the splits whole, so
no chapter or entry is shared between train, validation and test. Each output line is one
document (a chapter, paragraph, entry or man-page paragraph): tram-data reads a `.txt` split as
one `text` row per line. Everything is deterministic: groups are ordered by a SHA-256 of their
key, taken in that order until the domain's byte budget is filled, the first ~4% (by bytes) go to
test, the next ~4% to validation and the rest to train; inside a split, documents keep their
original order. Only the Python standard library is used.
"""

import glob
import gzip
import hashlib
import html
import os
import re
import struct
import subprocess
import sys
import zlib

# Bytes of text per domain (train + validation + test) and the share of the held-out splits.
BUDGET = 1_150_000
HELD_OUT = 0.04


def one(pattern):
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        sys.exit(f"build.py: expected one match for {pattern}, found {found}")
    return found[0]


def squash(text):
    return re.sub(r"\s+", " ", text).strip()


# --- World English Bible (sword-text-web): OSIS markup in zlib-compressed SWORD blocks -------


def sword_ztext(module_dir, testament):
    """The decompressed text of one testament of a SWORD zText module, blocks in order."""
    bzs = open(os.path.join(module_dir, f"{testament}.bzs"), "rb").read()
    bzz = open(os.path.join(module_dir, f"{testament}.bzz"), "rb").read()
    out = []
    for i in range(0, len(bzs), 12):
        offset, size, _usize = struct.unpack("<III", bzs[i : i + 12])
        out.append(zlib.decompress(bzz[offset : offset + size]).decode("utf-8"))
    return "".join(out)


def bible(root):
    module = one(f"{root}/sword-text-web/usr/share/sword/modules/texts/ztext/*")
    groups = []
    for testament in ("ot", "nt"):
        osis = sword_ztext(module, testament)
        osis = re.sub(r"<note\b.*?</note>", " ", osis, flags=re.S)
        osis = re.sub(r"<title\b.*?</title>", " ", osis, flags=re.S)
        parts = re.split(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*/>', osis)
        # parts: [before, id1, text1, id2, text2, ...]
        for cid, text in zip(parts[1::2], parts[2::2]):
            text = re.sub(r"</?w\b[^>]*>", "", text)  # word tags (Strong's numbers)
            text = re.sub(r"<[^>]+>", " ", text)
            text = squash(html.unescape(text))
            if len(text) > 40:
                groups.append((cid, [text]))
    return groups


# --- Jane Austen's novels (r-cran-janeaustenr): character vectors in an R lazy-load database --


def r_strings(blob):
    """A serialised R character vector (STRSXP), as stored in an .rdb entry."""
    data = zlib.decompress(blob[4:])
    assert data[:2] == b"X\n", "not an XDR R serialisation"
    p = 2
    version = struct.unpack(">I", data[p : p + 4])[0]
    p += 12
    if version == 3:
        p += 4 + struct.unpack(">I", data[p : p + 4])[0]
    flags = struct.unpack(">I", data[p : p + 4])[0]
    assert flags & 0xFF == 16, "not a character vector"
    n = struct.unpack(">i", data[p + 4 : p + 8])[0]
    p += 8
    out = []
    for _ in range(n):
        length = struct.unpack(">i", data[p + 4 : p + 8])[0]
        p += 8
        if length < 0:
            out.append("")
            continue
        out.append(data[p : p + length].decode("utf-8"))
        p += length
    return out


def r_lazyload_index(rdx):
    """name -> (offset, length) of an .rdx index: its `variables` list holds one INTSXP pair
    `(offset, length)` per object (`00 00 00 0d 00 00 00 02 <i32> <i32>`), named by the CHARSXP
    strings that follow the first `names` attribute."""
    data = gzip.decompress(rdx)
    pairs = [struct.unpack(">ii", m) for m in re.findall(rb"\x00\x00\x00\x0d\x00\x00\x00\x02(.{8})", data, flags=re.S)]
    strings, p = [], 0
    while True:
        i = data.find(b"\x00\x04\x00\x09", p)  # CHARSXP, UTF-8
        if i < 0:
            break
        n = struct.unpack(">i", data[i + 4 : i + 8])[0]
        strings.append(data[i + 8 : i + 8 + n].decode())
        p = i + 8 + n
    names = strings[strings.index("names") + 1 :][: len(pairs)]
    return dict(zip(names, pairs))


def novels(root):
    pkg = one(f"{root}/r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr")
    index = r_lazyload_index(open(f"{pkg}/data/Rdata.rdx", "rb").read())
    rdb = open(f"{pkg}/data/Rdata.rdb", "rb").read()
    groups = []
    for book in sorted(index):
        offset, length = index[book]
        lines = r_strings(rdb[offset : offset + length])
        chapter, paragraphs, para = 0, {}, []

        def flush():
            if para:
                text = squash(" ".join(para).replace("_", ""))
                if len(text.split()) >= 3:
                    paragraphs.setdefault(chapter, []).append(text)
                para.clear()

        for line in lines:
            if re.match(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*$", line):
                flush()
                chapter += 1
            elif not line.strip():
                flush()
            else:
                para.append(line.strip())
        flush()
        for ch, paras in paragraphs.items():
            if ch > 0:  # chapter 0 is the title page
                groups.append((f"{book}.{ch}", paras))
    return groups


# --- The Jargon File (jargon-text): the lexicon's entries ---------------------------------------


def jargon(root):
    path = one(f"{root}/jargon-text/usr/share/doc/jargon-text/jargon.txt.gz")
    text = gzip.decompress(open(path, "rb").read()).decode("utf-8")
    start = text.index("\n   :(TM):")
    end = re.compile(r"Part\s+III\.\s+Appendices").search(text, start).start()
    groups = []
    for m in re.finditer(r"^   :(.+?):(.*?)(?=^   :|\Z)", text[start:end], flags=re.S | re.M):
        term = m.group(1)
        body = squash(re.sub(r"[{}]", "", m.group(2)))
        if len(body) > 20:
            groups.append((term, [f"{term}: {body}"]))
    return groups


# --- Man pages of GNU packages (GPL-3+), rendered with groff ---------------------------------


def render_man(path):
    roff = gzip.decompress(open(path, "rb").read())
    out = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-rLL=2000n", "-P-cbou"],
        input=roff,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    ).stdout.decode("utf-8")
    lines = out.split("\n")
    # Drop the page header (first non-empty line) and footer (last non-empty line).
    nonempty = [i for i, l in enumerate(lines) if l.strip()]
    if len(nonempty) > 2:
        lines = lines[nonempty[0] + 1 : nonempty[-1]]
    return lines


# Sections that repeat the same boilerplate on every page are left out.
MAN_SKIP = {"AUTHOR", "AUTHORS", "REPORTING BUGS", "COPYRIGHT", "SEE ALSO", "BUGS"}
# GPL-3+ packages (each `debian/copyright` `Files: *`). Left out: gawk, whose man pages carry their
# own verbatim-copying notice, and clear_console.1 (bash's Debian extra, under an MIT-style notice).
MAN_PACKAGES = ["coreutils", "bash", "grep", "sed", "tar", "diffutils", "make"]
MAN_EXCLUDE = {"clear_console.1"}


def manuals(root):
    groups = []
    for pkg in MAN_PACKAGES:
        for path in sorted(glob.glob(f"{root}/{pkg}/usr/share/man/man[0-9]/*.gz")):
            page = os.path.basename(path)[: -len(".gz")]
            if page in MAN_EXCLUDE:
                continue
            section, paras, para = "", {}, []

            def flush():
                if para:
                    text = squash(" ".join(para))
                    if text:
                        paras.setdefault(section, []).append(text)
                    para.clear()

            for line in render_man(path):
                if line and not line[0].isspace():
                    flush()
                    section = line.strip()
                elif not line.strip():
                    flush()
                else:
                    para.append(line.strip())
            flush()
            for sec, ps in paras.items():
                if sec in MAN_SKIP:
                    continue
                groups.append((f"{pkg}/{page}/{sec}", ps))
    return groups


# --- GCIDE (dict-gcide): Webster's 1913 and later definitions ----------------------------------


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(s):
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def dictionary(root):
    base = one(f"{root}/dict-gcide/usr/share/dictd/gcide.index")[: -len(".index")]
    data = gzip.decompress(open(base + ".dict.dz", "rb").read())
    entries = {}
    for line in open(base + ".index", encoding="utf-8"):
        head, offset, length = line.rstrip("\n").split("\t")[:3]
        if head.startswith("00-database") or head.startswith("00database"):
            continue
        entries.setdefault((dictd_number(offset), dictd_number(length)), head)
    groups = []
    for (offset, length), head in sorted(entries.items()):
        entry = data[offset : offset + length].decode("utf-8", errors="replace")
        if "\ufffd" in entry:
            continue
        body = re.sub(r"\[(?:[^\]]*?(?:Webster|PJC|WordNet|Century|Chambers|Suppl\.)[^\]]*)\]", " ", entry)
        body = squash(re.sub(r"[{}]", "", body))
        if len(body) > 30:
            groups.append((f"{offset}:{head}", [body]))
    return groups


DOMAINS = {
    "bible": bible,
    "novels": novels,
    "jargon": jargon,
    "manuals": manuals,
    "dictionary": dictionary,
}


def key_hash(domain, key):
    return hashlib.sha256(f"{domain}\0{key}".encode()).hexdigest()


def split(domain, groups):
    order = sorted(range(len(groups)), key=lambda i: key_hash(domain, groups[i][0]))
    chosen, total = [], 0
    for i in order:
        size = sum(len(d) + 1 for d in groups[i][1])
        if total + size > BUDGET:
            continue
        chosen.append(i)
        total += size
    out = {"test": [], "validation": [], "train": []}
    held = {"test": 0, "validation": 0}
    target = HELD_OUT * total
    for i in chosen:  # hash order
        size = sum(len(d) + 1 for d in groups[i][1])
        name = "train"
        if size <= target / 4:  # large groups stay in train, so held-out splits are varied
            name = next((h for h in ("test", "validation") if held[h] < target), "train")
        if name != "train":
            held[name] += size
        out[name].append(i)
    return {name: [d for i in sorted(ids) for d in groups[i][1]] for name, ids in out.items()}


def main():
    root, dest = sys.argv[1], sys.argv[2]
    for domain, read in DOMAINS.items():
        groups = read(root)
        splits = split(domain, groups)
        os.makedirs(os.path.join(dest, domain), exist_ok=True)
        sizes = []
        for name in ("train", "validation", "test"):
            docs = splits[name]
            assert docs, f"{domain}/{name} is empty"
            with open(os.path.join(dest, domain, f"{name}.txt"), "w", encoding="utf-8", newline="\n") as f:
                for d in docs:
                    assert "\n" not in d
                    f.write(d + "\n")
            sizes.append(f"{name} {len(docs)} docs {sum(len(d.encode()) + 1 for d in docs)} B")
        print(f"{domain}: {len(groups)} groups, {sum(len(d) + 1 for _, ds in groups for d in ds)} B; " + "; ".join(sizes))


if __name__ == "__main__":
    main()

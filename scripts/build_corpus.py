"""Build the tiny-gpt2 training corpus from public-domain texts in Debian packages.

Sources (all public-domain texts; the packaging licences are in the model card):
  r-cran-janeaustenr  Jane Austen's six novels (R data, parsed with `rdata`)
  r-cran-tokenizers   Moby Dick, chapters 1-3 (test fixtures of the package)
  bible-kjv-text      the King James Bible (read with the `bible` program
                      from bible-kjv, unpacked next to its data, not installed)
  dict-devil          Ambrose Bierce, The Devil's Dictionary

The .deb files are fetched with `apt-get download` and unpacked with
`dpkg -x` into scripts/work/, so nothing is installed on the machine.
Output: scripts/work/corpus/{train,valid}.txt, with the last 2% of every
source held out for validation. Deterministic: same packages, same bytes.

    python scripts/build_corpus.py
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import zlib
from pathlib import Path

WORK = Path(__file__).resolve().parent / "work"
PACKAGES = ["r-cran-janeaustenr", "r-cran-tokenizers", "bible-kjv-text", "bible-kjv", "dict-devil"]
VALID_FRACTION = 0.02


def fetch_and_unpack() -> Path:
    debs, root = WORK / "debs", WORK / "root"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def paragraphs(lines: list[str]) -> list[str]:
    """Join hard-wrapped lines into paragraphs; blank lines separate them."""
    out, current = [], []
    for line in lines:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def austen(root: Path) -> list[str]:
    import rdata  # only the corpus script needs it

    data = root / "usr/lib/R/site-library/janeaustenr/data"
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
    blob = (data / "Rdata.rdb").read_bytes()
    out = []
    for name in sorted(index["variables"]):
        offset, length = (int(v) for v in index["variables"][name])
        # each lazy-load record: 4-byte length, then a zlib stream of one R object
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[offset + 4 : offset + length])))
        out += paragraphs([str(line) for line in lines])
    return out


def moby(root: Path) -> list[str]:
    folder = root / "usr/share/doc/r-cran-tokenizers/tests/testthat"
    lines = []
    for chapter in sorted(folder.glob("moby-ch*.txt.gz")):
        lines += gzip.decompress(chapter.read_bytes()).decode("utf-8-sig").splitlines() + [""]
    return paragraphs(lines)


def bible(root: Path) -> list[str]:
    text = subprocess.run(
        [str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "Gen1:1-Rev22:21"],
        check=True,
        capture_output=True,
        text=True,
        env={"COLUMNS": "100000"},
    ).stdout
    verses = []
    for line in text.splitlines():
        match = re.match(r"\s*\d+\s+(.*)", line)
        if match:  # "  3 And God said, ..." (chapter headings are skipped)
            verses.append(match.group(1).strip())
    return verses


def devil(root: Path) -> list[str]:
    text = gzip.decompress((root / "usr/share/dictd/devil.dict.dz").read_bytes()).decode("latin-1")
    lines = [line for line in text.splitlines() if not line.startswith("00-database")]
    return paragraphs(lines)


def main() -> None:
    root = fetch_and_unpack()
    out = WORK / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    train, valid, stats = [], [], {}
    for name, reader in [("austen", austen), ("moby", moby), ("kjv", bible), ("devil", devil)]:
        paras = [p for p in reader(root) if p]
        cut = int(len(paras) * (1 - VALID_FRACTION))
        train += paras[:cut]
        valid += paras[cut:]
        stats[name] = {"paragraphs": len(paras), "characters": sum(map(len, paras))}
    for split, paras in [("train", train), ("valid", valid)]:
        data = "\n\n".join(paras) + "\n"
        (out / f"{split}.txt").write_text(data, encoding="utf-8")
        stats[split] = {"characters": len(data), "sha256": hashlib.sha256(data.encode()).hexdigest()}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()

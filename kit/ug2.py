"""Prepare the real UG2+ 2022 Track 2 / ARID v1.5 data as a kit data directory.

The challenge release (semi-supervised action recognition in the dark) and ARID v1.5 come as
folders of clips and lists in three formats; this module reads all of them and writes a data
directory in the kit's contract (see :mod:`kit.data`):

``labeled.csv``
    normal-light labelled training clips + the labelled dry-run validation clips;
``unlabeled.csv``
    the dark unlabelled training clips (+ the ARID v1.5 clips not taken for ``val``, label -1);
``val.csv``
    a labelled **dark** split of ARID v1.5, stratified per class with a fixed seed, that never
    enters adaptation or pseudo-labelling (the clean protocol); ``val_split.json`` records it;
``test.csv``
    the dark test clips, labelled if the list has labels, else -1;
``arid_all.csv``
    every ARID v1.5 clip with its label (the paper's transductive evaluation set);
``hidden_labels.csv``
    the true labels of the ARID clips in the pool, read only to report pseudo-label accuracy.

List paths point through one symlink per source folder (``source -> /abs/SOURCE``), so the
data directory stays small and one ``ln -sfn`` re-points it if the source moves.

Example::

    report = prepare_ug2("/data/ug2_2022", "data/ug2", val_per_class=100, seed=0)
    print(report.summary())

Command line: ``python -m kit.data prepare-ug2 --source DIR --out DATA_DIR``; see docs/real_data.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

log = logging.getLogger(__name__)

# class ids 0..10 of the challenge (its mapping_table) and of ARID v1.5 (its folder names)
UG2_CLASSES = ("Drink", "Jump", "Pick", "Pour", "Push", "Run", "Sit", "Stand", "Turn", "Walk", "Wave")
VIDEO_EXTS = (".mp4", ".avi")
ARID_CLIP_DIRS = ("clips_v1.5", "clips_v1.5_avi")  # ARID v1.5 ships the same clips as mp4 and avi


class PrepareError(ValueError):
    """The source tree or one of its lists cannot be used. The message names the folder, file or line."""


@dataclass(frozen=True)
class Part:
    """Where one part of the challenge release usually lives, relative to the source folder."""

    what: str  # shown in errors
    lists: tuple[str, ...]  # glob patterns, most specific first
    videos: tuple[str, ...]  # folders the list's paths are relative to
    required: bool


# the organisers' reference repo (xuyu0010/ARID_UG2_2.2, 2022 branch) arranges the release this way
PARTS = {
    "labeled": Part(
        "labelled normal-light training list (ug2_2022_train_labeled.csv)",
        ("Clear/raw/list_cvt/ug2_2022_train_labeled.csv", "**/ug2_2022_train_labeled.csv", "**/*train_labeled*.csv"),
        ("Clear/raw/train_data",),
        True,
    ),
    "dryrun": Part(
        "normal-light dry-run validation list (hmdb_validate_public.csv, or its ground-truth version)",
        ("Clear/raw/list_cvt/*validate*gt*.csv", "Clear/raw/list_cvt/hmdb_validate_public.csv", "**/hmdb_validate*.csv"),
        ("Clear/raw/test_data",),
        False,
    ),
    "dark": Part(
        "dark unlabelled training list (ug2_2022_train_dark.csv)",
        ("ARID/raw/list_cvt/ug2_2022_train_dark.csv", "**/ug2_2022_train_dark.csv", "**/*train_dark*.csv"),
        ("ARID/raw/train_data",),
        True,
    ),
    "test": Part(
        "dark test list (e.g. ARID/raw/list_cvt/ug2_2022_test*.csv)",
        ("ARID/raw/list_cvt/*test*.csv", "**/ug2_2022_test*.csv", "**/*test_dark*.csv"),
        ("ARID/raw/test_data",),
        True,
    ),
}


@dataclass
class Clip:
    """One clip found on disk: ``path`` as reached from its root (symlinks kept), label -1..K-1."""

    path: Path
    label: int
    key: str  # identity used to drop duplicates: real path, or class/stem for ARID clips


@dataclass
class PrepareReport:
    """What :func:`prepare_ug2` wrote and why."""

    out: str
    counts: dict[str, int] = field(default_factory=dict)  # list file -> clips
    val_per_class: dict[str, int] = field(default_factory=dict)
    used: dict[str, str] = field(default_factory=dict)  # part -> list or folder it was read from
    links: dict[str, str] = field(default_factory=dict)  # symlink in OUT -> target
    duplicates: dict[str, int] = field(default_factory=dict)  # part -> entries dropped as repeats
    missing: dict[str, list[str]] = field(default_factory=dict)  # part -> listed files not found
    removed_from_pool: list[str] = field(default_factory=list)  # pool clips identical to a val clip
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"data directory {self.out}"]
        lines += [f"  {name:14s} {n:6d} clips" for name, n in self.counts.items()]
        lines.append("  val per class: " + ", ".join(f"{c}={n}" for c, n in self.val_per_class.items()))
        lines += [f"  {part}: {src}" for part, src in self.used.items()]
        lines += [f"  link {k} -> {v}" for k, v in self.links.items()]
        for part, n in self.duplicates.items():
            if n:
                lines.append(f"  {part}: {n} repeated entries dropped")
        for part, files in self.missing.items():
            if files:
                lines.append(f"  {part}: {len(files)} listed files not found (skipped), e.g. {files[0]}")
        if self.removed_from_pool:
            lines.append(f"  {len(self.removed_from_pool)} pool clips identical to val clips removed from unlabeled.csv")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------- reading lists


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def read_source_list(path, *, num_classes: int = len(UG2_CLASSES)) -> list[tuple[str, int]]:
    """Read a list of the release or of the reference solution as ``[(path, label)]``.

    Formats (detected per file): the challenge's CSV with a header ``VideoID,Video[,ClassID]``
    (no ``ClassID`` column: label -1); ARID's tab-separated ``id<TAB>label<TAB>Class/clip.mp4``;
    the reference solution's header-less ``path,label`` or pseudo lists ``path,label,prob0..``
    (the probabilities are ignored); a bare ``path`` per line (label -1).
    """
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{path}: list not found")
    text = path.read_text(encoding="utf-8-sig")  # some lists carry a BOM
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise PrepareError(f"{path}: the list is empty")
    rows: list[tuple[int, str, int]] = []
    if "\t" in lines[0][1]:
        for n, line in lines:
            fields = [f.strip() for f in line.split("\t")]
            if len(fields) == 3 and _int(fields[1]) is not None:  # ARID: id, label, path
                rows.append((n, fields[2], _int(fields[1])))
            elif len(fields) == 2 and _int(fields[1]) is not None:
                rows.append((n, fields[0], _int(fields[1])))
            else:
                raise PrepareError(f"{path}:{n}: expected 'id<TAB>label<TAB>path', got {line!r}")
    else:
        records = [next(csv.reader([line])) for _, line in lines]  # one record per line keeps line numbers
        header = [h.strip().lower() for h in records[0]]
        if "video" in header or "path" in header:
            col_path = header.index("video") if "video" in header else header.index("path")
            col_label = next((header.index(h) for h in ("classid", "label", "class") if h in header), None)
            for (n, line), rec in zip(lines[1:], records[1:], strict=True):
                if len(rec) <= col_path or not rec[col_path].strip():
                    raise PrepareError(f"{path}:{n}: no video path in {line!r}")
                label = -1
                if col_label is not None and len(rec) > col_label and rec[col_label].strip():
                    label = _int(rec[col_label])
                    if label is None:
                        raise PrepareError(f"{path}:{n}: label {rec[col_label]!r} is not an integer")
                rows.append((n, rec[col_path].strip(), label))
        else:
            for (n, line), rec in zip(lines, records, strict=True):
                if len(rec) == 1:
                    rows.append((n, rec[0].strip(), -1))
                    continue
                label = _int(rec[1])
                if label is None:
                    raise PrepareError(f"{path}:{n}: expected 'path,label[,probs...]', got {line!r}")
                rows.append((n, rec[0].strip(), label))
    for n, _, label in rows:
        if not -1 <= label < num_classes:
            raise PrepareError(f"{path}:{n}: label {label} outside [-1, {num_classes})")
    return [(p, y) for _, p, y in rows]


def _variants(path: Path) -> list[Path]:
    # the same clip may be listed as .avi and stored as .mp4, or the other way round
    alts = [path.with_suffix(e) for e in VIDEO_EXTS if path.suffix.lower() in VIDEO_EXTS and e != path.suffix.lower()]
    return [path, *alts]


def resolve_clip(raw: str, bases: list[Path]) -> Path | None:
    """The file a listed path means: tried under each base, then with leading folders dropped
    (lists written on another machine, or under another root), then with the other extension."""
    parts = [p for p in PurePosixPath(raw.replace("\\", "/")).parts if p not in ("/", "", ".")]
    for start in range(len(parts)):  # the longest tail first: the most specific match wins
        tail = Path(*parts[start:])
        for base in bases:
            for cand in _variants(base / tail):
                if cand.is_file():
                    return cand
    return None


# ---------------------------------------------------------------- finding the parts


def _find_list(source: Path, part: str) -> Path | None:
    spec = PARTS[part]
    for pattern in spec.lists:
        found = sorted(p for p in source.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(source)) for p in found[:5])
            raise PrepareError(
                f"several candidates for the {spec.what} under {source}: {names}; "
                f"choose one with --{part}-list"
            )
    return None


def _video_bases(source: Path, list_path: Path, spec: Part) -> list[Path]:
    """The part's usual video folders, under ``source`` or next to the list (``--source`` given
    one level too deep or too high still finds ``raw/train_data`` beside ``raw/list_cvt``)."""
    anchors = [source] + [a for a in list_path.parents if a.is_relative_to(source)]
    bases = []
    for v in spec.videos:
        parts = Path(v).parts
        for anchor in anchors:
            for start in range(len(parts)):
                cand = anchor.joinpath(*parts[start:])
                if cand.is_dir() and cand not in bases:
                    bases.append(cand)
    return bases


def _read_part(
    part: str, source: Path, list_file, videos, *, allow_missing: bool, report: PrepareReport
) -> list[Clip] | None:
    """The clips of one part; None when an optional part is not in the source."""
    spec = PARTS[part]
    if list_file is not None:
        list_path = Path(list_file)
        if not list_path.is_file():
            raise PrepareError(f"{spec.what}: {list_path} not found")
    else:
        list_path = _find_list(source, part)
        if list_path is None and not spec.required:
            return None
        if list_path is None:
            looked = ", ".join(spec.lists)
            hint = " (or --no-test to prepare without one)" if part == "test" else ""
            raise PrepareError(f"{spec.what} not found under {source} (looked for {looked}); pass --{part}-list{hint}")
    if videos is not None:
        video_dir = Path(videos)
        if not video_dir.is_dir():
            raise PrepareError(f"video folder of the {spec.what}: {video_dir} not found")
        bases = [video_dir.absolute(), source]
    else:
        bases = _video_bases(source, list_path.absolute(), spec) + [source]
    clips, missing, seen, repeats = [], [], set(), 0
    for raw, label in read_source_list(list_path):
        found = resolve_clip(raw, bases)
        if found is None:
            missing.append(raw)
            continue
        key = os.path.realpath(found)
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        clips.append(Clip(found, label, key))
    if missing and not allow_missing:
        shown = ", ".join(missing[:5])
        raise PrepareError(
            f"{list_path}: {len(missing)} of {len(missing) + len(clips) + repeats} listed clips not found "
            f"under {', '.join(map(str, bases))} (e.g. {shown}); fix --{part}-videos or pass --allow-missing"
        )
    if missing:
        log.warning("%s: %d listed clips not found, skipped", list_path, len(missing))
    report.used[part] = str(list_path)
    report.missing[part] = missing
    report.duplicates[part] = repeats
    return clips


def _arid_roots(source: Path, arid) -> list[Path]:
    """Folders holding ARID v1.5's ``<Class>/<clip>`` tree, mp4 first."""
    if arid is not None:
        arid = Path(arid)
        if not arid.is_dir():
            raise PrepareError(f"ARID v1.5 folder {arid} not found")
        if any((arid / c).is_dir() for c in UG2_CLASSES):
            return [arid.absolute()]
        search = arid.absolute()
    else:
        search = source
    roots = [p for name in ARID_CLIP_DIRS for p in sorted(search.glob(f"**/{name}")) if p.is_dir()]
    if not roots:
        raise PrepareError(
            f"ARID v1.5 clips not found: no {' or '.join(ARID_CLIP_DIRS)} folder under {search} "
            "(with one sub-folder per class); pass --arid DIR"
        )
    return roots


def _read_arid(roots: list[Path], classes: list[str], report: PrepareReport) -> list[Clip]:
    # the same clip under clips_v1.5/ and clips_v1.5_avi/ (or under two copies of the release)
    # is one clip: keyed by class and stem, the first root (mp4) wins
    ids = {c.lower(): k for k, c in enumerate(classes)}
    chosen: dict[str, Clip] = {}
    repeats = 0
    for root in roots:
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            label = ids.get(class_dir.name.lower())
            if label is None:
                raise PrepareError(f"{class_dir}: folder is not one of the classes {list(classes)}")
            for f in sorted(class_dir.iterdir()):
                if f.suffix.lower() not in VIDEO_EXTS or not f.is_file():
                    continue
                key = f"{classes[label].lower()}/{f.stem.lower()}"
                if key in chosen:
                    repeats += 1
                    continue
                chosen[key] = Clip(f, label, key)
    if not chosen:
        raise PrepareError(f"ARID v1.5: no .mp4/.avi clips in class folders under {', '.join(map(str, roots))}")
    report.used["arid"] = ", ".join(map(str, roots))
    report.duplicates["arid"] = repeats
    return [chosen[k] for k in sorted(chosen)]


def _check_mapping_tables(folders, classes: list[str]) -> None:
    """Refuse a ``mapping_table*.txt`` beside the lists used that orders the classes otherwise:
    its ids would silently mean other classes than the kit's."""
    for table in sorted({t for folder in folders for t in Path(folder).glob("mapping_table*.txt")}):
        for n, line in enumerate(table.read_text().splitlines(), 1):
            fields = line.split()
            k = _int(fields[0]) if len(fields) >= 2 else None
            if k is None:
                continue
            ours = classes[k] if 0 <= k < len(classes) else None
            if ours is None or ours.lower() != fields[1].lower():
                raise PrepareError(f"{table}:{n}: class {k} is {fields[1]!r} here but {ours!r} in the kit ({classes})")


# ---------------------------------------------------------------- the split and the pool


def stratified_val(clips: list[Clip], *, per_class: int, seed: int, num_classes: int) -> list[Clip]:
    """``per_class`` clips of each class (all of a smaller class), drawn with a generator seeded by
    ``(seed, class)`` from the clips sorted by key: the same for a seed whatever the file order."""
    if per_class < 0:
        raise PrepareError(f"val_per_class must be >= 0, got {per_class}")
    val = []
    for k in range(num_classes):
        members = sorted((c for c in clips if c.label == k), key=lambda c: c.key)
        order = np.random.default_rng([seed, k]).permutation(len(members))
        val += [members[i] for i in sorted(order[:per_class])]
    return val


def _fingerprint(path: Path, size: int) -> str:
    # head + tail of the file: enough to tell identical copies apart from different clips
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(1 << 16))
        if size > 1 << 17:
            f.seek(-(1 << 16), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()


def _sizes_and_prints(clips: list[Clip], sizes_wanted=None) -> list[tuple[int, str | None]]:
    """``(size, fingerprint)`` per clip; the fingerprint only for sizes in ``sizes_wanted`` (else None)."""
    sizes = [c.path.stat().st_size for c in clips]
    if sizes_wanted is None:  # fingerprint only files that share a size with another
        counts: dict[int, int] = {}
        for n in sizes:
            counts[n] = counts.get(n, 0) + 1
        sizes_wanted = {n for n, k in counts.items() if k > 1}
    return [(n, _fingerprint(c.path, n) if n in sizes_wanted else None) for c, n in zip(clips, sizes, strict=True)]


def identical_to(pool: list[Clip], reference: list[Clip]) -> list[int]:
    """Indices of ``pool`` clips whose file content equals a ``reference`` clip's (size, then head/tail
    hash): copies of a val clip under another name or root must not enter the pool."""
    ref = set(_sizes_and_prints(reference, {c.path.stat().st_size for c in reference}))
    sizes = {n for n, _ in ref}
    return [i for i, sp in enumerate(_sizes_and_prints(pool, sizes)) if sp in ref]


def unique_content(clips: list[Clip]) -> list[Clip]:
    """``clips`` without repeats of a file's content (the first one is kept): the same clip reached
    under two roots, through a symlink, or copied under another name."""
    seen, kept = set(), []
    for c, sp in zip(clips, _sizes_and_prints(clips), strict=True):
        if sp[1] is None or sp not in seen:
            seen.add(sp)
            kept.append(c)
    return kept


def split_lists(
    parts: dict[str, list[Clip]], arid: list[Clip], *, val_per_class: int, seed: int, classes: list[str],
    arid_in_pool: bool, report: PrepareReport,
) -> dict[str, list[Clip]]:
    """The lists of the data directory from the parts of the release and the ARID clips."""
    labeled = parts["labeled"]
    if any(c.label < 0 for c in labeled):
        raise PrepareError(f"{report.used['labeled']}: {sum(c.label < 0 for c in labeled)} clips have no label")
    dry = parts.get("dryrun", [])
    if dry and all(c.label < 0 for c in dry):
        report.notes.append(
            f"{report.used['dryrun']} has no labels: the dry-run clips are left out of labeled.csv "
            "(pass its ground-truth version with --dryrun-list)"
        )
    labeled = unique_content(labeled + [c for c in dry if c.label >= 0])

    val = stratified_val(arid, per_class=val_per_class, seed=seed, num_classes=len(classes))
    val_keys = {c.key for c in val}
    rest = [Clip(c.path, -1, c.key) for c in arid if c.key not in val_keys] if arid_in_pool else []
    pool = parts["dark"] + rest
    clash = set(identical_to(pool, val))
    if clash:  # the clean protocol: no val clip, under any name, is adapted on or pseudo-labelled
        report.removed_from_pool = [str(pool[i].path) for i in sorted(clash)]
        log.warning("%d pool clips are copies of val clips: removed from unlabeled.csv", len(clash))
        pool = [c for i, c in enumerate(pool) if i not in clash]
    kept = unique_content(pool)
    report.duplicates["unlabeled"] = len(pool) - len(kept)

    lists = {"labeled.csv": labeled, "unlabeled.csv": kept, "val.csv": val}
    if "test" in parts:
        test = parts["test"]
        if all(c.label < 0 for c in test):
            report.notes.append("the test list has no labels: test.csv holds -1 (predictions only, no score)")
        overlap = len(identical_to(test, kept))
        if overlap:
            report.notes.append(f"{overlap} test clips are also in the unlabelled pool")
        lists["test.csv"] = test
    lists["arid_all.csv"] = arid
    truth = {c.key: c.label for c in arid}
    hidden = [Clip(c.path, truth[c.key], c.key) for c in kept if c.key in truth]
    if hidden:  # the pool's ARID labels, for the pseudo-label accuracy of the reports (never trained on)
        from kit.pseudo import HIDDEN_LABELS

        lists[HIDDEN_LABELS] = hidden
    report.val_per_class = {c: sum(v.label == k for v in val) for k, c in enumerate(classes)}
    return lists


# ---------------------------------------------------------------- writing


def _link(out: Path, name: str, target: Path, *, relative: bool, force: bool) -> str:
    link = out / name
    dest = os.path.relpath(target, out.absolute()) if relative else str(target.absolute())
    if link.is_symlink():
        if os.readlink(link) == dest:
            return dest
        if not force:
            raise PrepareError(f"{link} already points at {os.readlink(link)}, not {dest}; pass --force to re-point it")
        link.unlink()
    elif link.exists():
        raise PrepareError(f"{link} exists and is not a symlink; choose another --out")
    link.symlink_to(dest, target_is_directory=True)
    return dest


def _list_path(clip: Path, roots: dict[str, Path], out: Path, renamed: dict[Path, str]) -> str:
    for name, root in roots.items():
        try:
            rel = clip.absolute().relative_to(root)
        except ValueError:
            continue
        text = f"{name}/{rel.as_posix()}"
        if "," not in text and "\n" not in text:
            return text
        # a comma cannot live in the CSV lists: reach the clip through a renamed symlink
        safe = f"renamed/{rel.as_posix().replace(',', '_').replace(chr(10), '_')}"
        if clip not in renamed:
            (out / safe).parent.mkdir(parents=True, exist_ok=True)
            if not (out / safe).is_symlink():
                (out / safe).symlink_to(clip.absolute())
            renamed[clip] = safe
        return renamed[clip]
    raise PrepareError(f"{clip} is outside every linked folder {list(roots.values())}")


def prepare_ug2(
    source,
    out,
    *,
    val_per_class: int = 100,
    seed: int = 0,
    arid=None,
    arid_in_pool: bool = True,
    lists: dict | None = None,
    videos: dict | None = None,
    test: bool = True,
    allow_missing: bool = False,
    relative_links: bool = False,
    force: bool = False,
    classes=UG2_CLASSES,
) -> PrepareReport:
    """Build the data directory ``out`` from the UG2+ 2022 Track 2 release and ARID v1.5 in ``source``.

    ``lists`` / ``videos``: per part (``labeled``, ``dryrun``, ``dark``, ``test``) a list file or a
    video folder that replaces the default search (see :data:`PARTS`). ``arid``: the ARID v1.5
    folder when it is not under ``source``. ``val_per_class`` ARID clips per class go to
    ``val.csv`` (seeded by ``seed``); with ``arid_in_pool`` the other ARID clips join the
    unlabelled pool, as in the reference solution. ``test=False`` prepares without a test list.
    Raises :class:`PrepareError` naming the folder or list that is missing or malformed.
    """
    from kit.data import CLASSES_FILE, write_list

    source = Path(source).absolute()
    out = Path(out)
    lists, videos = dict(lists or {}), dict(videos or {})
    unknown = sorted((set(lists) | set(videos)) - set(PARTS))
    if unknown:
        raise PrepareError(f"unknown parts {unknown}; parts are {list(PARTS)}")
    if not source.is_dir():
        raise PrepareError(f"source folder {source} not found")
    classes = list(classes)
    if out.exists() and (out / CLASSES_FILE).exists() and not force:
        raise PrepareError(f"{out} already holds a data directory; pass --force to rewrite it")
    report = PrepareReport(out=str(out))

    parts: dict[str, list[Clip]] = {}
    for part, spec in PARTS.items():
        if part == "test" and not test:
            report.notes.append("prepared without a test list (test=False): set data.test: null in the params")
            continue
        clips = _read_part(part, source, lists.get(part), videos.get(part), allow_missing=allow_missing, report=report)
        if clips is None:
            report.notes.append(f"no {spec.what} found: labeled.csv holds the training clips only")
        else:
            parts[part] = clips
    arid_roots = _arid_roots(source, arid)
    arid_clips = _read_arid(arid_roots, classes, report)
    list_dirs = [Path(report.used[p]).parent for p in parts] + [r.parent / "list_cvt" for r in arid_roots]
    _check_mapping_tables(list_dirs, classes)
    written = split_lists(
        parts, arid_clips, val_per_class=val_per_class, seed=seed, classes=classes,
        arid_in_pool=arid_in_pool, report=report,
    )
    short = [c for c, n in report.val_per_class.items() if n < val_per_class]
    if short:
        report.notes.append(f"classes with fewer than {val_per_class} ARID clips (all went to val): {short}")

    # one symlink per folder the clips live in; the lists' paths go through it
    out.mkdir(parents=True, exist_ok=True)
    roots = {"source": source}
    for part, v in videos.items():
        if not Path(v).absolute().is_relative_to(source):
            roots[f"{part}_videos"] = Path(v).absolute()
    if arid is not None and not Path(arid).absolute().is_relative_to(source):
        roots["arid"] = Path(arid).absolute()
    for name, target in roots.items():
        report.links[name] = _link(out, name, target, relative=relative_links, force=force)
    renamed: dict[Path, str] = {}
    paths = {name: [_list_path(c.path, roots, out, renamed) for c in clips] for name, clips in written.items()}

    (out / CLASSES_FILE).write_text("".join(c + "\n" for c in classes))
    if "test.csv" not in written and (out / "test.csv").exists():
        (out / "test.csv").unlink()  # a stale test list from an earlier call would be read
    for name, clips in written.items():
        write_list(out / name, paths[name], [c.label for c in clips])
        report.counts[name] = len(clips)
    split = {
        "seed": seed,
        "val_per_class": val_per_class,
        "classes": classes,
        "counts": report.val_per_class,
        "arid_roots": report.used["arid"],
        "clips": [
            {"key": c.key, "path": p, "label": c.label}
            for c, p in zip(written["val.csv"], paths["val.csv"], strict=True)
        ],
    }
    (out / "val_split.json").write_text(json.dumps(split, indent=1))
    (out / "prepare_report.json").write_text(json.dumps(asdict(report), indent=1))
    log.info("prepared %s: %s", out, report.counts)
    return report


# ---------------------------------------------------------------- command line


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``prepare-ug2`` to an argparse sub-command set (``python -m kit.data``)."""
    p = subparsers.add_parser(
        "prepare-ug2",
        help="build a data directory from the UG2+ 2022 Track 2 release and ARID v1.5",
        description=__doc__.split("\n\n")[0] + " See docs/real_data.md.",
    )
    p.add_argument("--source", required=True, help="folder holding the challenge release (and ARID v1.5)")
    p.add_argument("--out", required=True, help="data directory to write (data.root in the params)")
    p.add_argument("--arid", help="ARID v1.5 folder, when it is not under --source")
    p.add_argument("--val-per-class", type=int, default=100, help="ARID clips per class held out in val.csv")
    p.add_argument("--seed", type=int, default=0, help="seed of the val split")
    p.add_argument("--no-arid-in-pool", action="store_true", help="keep the other ARID clips out of unlabeled.csv")
    for part, spec in PARTS.items():
        p.add_argument(f"--{part}-list", help=f"the {spec.what}, instead of searching --source")
        p.add_argument(f"--{part}-videos", help=f"folder its paths are relative to (default {spec.videos[0]})")
    p.add_argument("--no-test", action="store_true", help="prepare without a test list")
    p.add_argument("--allow-missing", action="store_true", help="skip listed clips that are not on disk")
    p.add_argument("--relative-links", action="store_true", help="relative symlinks (move OUT and SOURCE together)")
    p.add_argument("--force", action="store_true", help="rewrite an existing data directory")
    p.add_argument("--no-check", action="store_true", help="skip `kit.data check` on the result")
    p.set_defaults(func=main_prepare)
    return p


def main_prepare(args) -> int:
    """Run ``prepare-ug2`` from parsed arguments; print the report, then the data check."""
    try:
        report = prepare_ug2(
            args.source, args.out, val_per_class=args.val_per_class, seed=args.seed, arid=args.arid,
            arid_in_pool=not args.no_arid_in_pool,
            lists={p: getattr(args, f"{p}_list") for p in PARTS if getattr(args, f"{p}_list")},
            videos={p: getattr(args, f"{p}_videos") for p in PARTS if getattr(args, f"{p}_videos")},
            test=not args.no_test, allow_missing=args.allow_missing, relative_links=args.relative_links,
            force=args.force,
        )
    except PrepareError as exc:
        print(f"prepare-ug2: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.no_check:
        return 0
    from kit.data import check_data, format_check

    check = check_data(args.out)
    print(format_check(check))
    return 0 if check.ok else 1

"""Many paintings in one run: a folder (or glob, or list) of images in, one run folder per painting out.

Layout of the output folder ``OUT``::

    OUT/index.json            every painting: image, folder, status (complete, failed, invalid, interrupted, pending),
                              frame count, stop reason, error
    OUT/contact_sheet.png     first, middle and last frame of each painted one (pages _01, _02 ... past 40 rows)
    OUT/<name>/               the painting's run folder (manifest.json, frames/, masks/, videos), as a single run

Paintings are shared between processes by their sorted order (painting i goes to process i mod N), so under
``accelerate launch`` or ``torchrun`` each process loads the models once and paints its share; every painting's
frames depend only on its image, the seed and the settings, not on the number of processes. Each process keeps the
records of its share in ``OUT/.ranks/`` and rebuilds the index from all of them under a lock, so the process that
finishes last leaves the complete index, with no barrier to wait at.
"""
from __future__ import annotations

import glob
import json
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import MissingPathError
from .export import MANIFEST, _atomic, write_json

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
INDEX = "index.json"
INDEX_FORMAT = "inverse-painting-index/1"
RANKS = ".ranks"
SHEET_ROWS = 40  # paintings per contact-sheet page
THUMB_HEIGHT = 128


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def expand_inputs(items: list[str], out=None) -> tuple[list[Path], bool]:
    """Command-line image arguments -> (image paths, folder mode). One existing file is a single painting; a folder
    (its images, not its sub-folders), a glob (``**`` recurses) or several arguments make a folder run. In a folder
    run nothing under the output folder ``out`` is an input (``paint pics/** --out pics/out``: its frames and
    contact sheets are never painted again)."""
    if len(items) == 1 and Path(items[0]).exists() and not Path(items[0]).is_dir():
        return [Path(items[0])], False  # one painting (a device or pipe is refused by name when read)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = _images_in(p)
            if not found:
                raise MissingPathError(f"{p}: no image in this folder ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif p.exists():
            paths.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(m) for m in glob.glob(item, recursive=True)
                           if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise MissingPathError(f"{item}: no image matches this pattern")
            paths += found
        else:
            raise MissingPathError(f"{p}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    if out is not None:
        own = Path(out).resolve()
        kept = [p for p in unique if not _inside(p, own)]
        if unique and not kept:
            raise MissingPathError(f"every image given lies inside the output folder {out}; give an output folder "
                                   "outside the paintings (e.g. a sub-folder: --out PAINTINGS/out)")
        unique = kept
    return unique, True


def painting_names(paths: list[Path], taken: set[str] | None = None) -> list[str]:
    """A run-folder name per image: its file name without extension; later images with a name already taken (same
    name in another folder, or another extension, or in ``taken``) get ``~2``, ``~3`` ... in the given order."""
    names, taken = [], set(taken or ())
    for p in paths:
        # a folder name of its own under OUT: never '.', '..' (a file '...png' given by name: OUT/.. is OUT's
        # parent) or hidden
        base, n = p.stem.lstrip(".").strip() or "painting", 1
        name = base
        while name.lower() in taken:  # case-insensitive: the folders may live on such a file system
            n += 1
            name = f"{base}~{n}"
        taken.add(name.lower())
        names.append(name)
    return names


@dataclass
class Job:
    name: str
    image: Path
    index: int

    def folder(self, out: Path) -> Path:
        return out / self.name


def jobs_for(paths: list[Path], earlier: dict | None = None) -> list[Job]:
    """A job per image. ``earlier`` (the index of the run being resumed) keeps the name each image had there, so
    images added to the folder since (a second ``x.png`` in another sub-folder) never take over a painted run's
    folder: new images get names not taken by any painting of the earlier run."""
    before: dict[str, str] = {}
    for row in (earlier or {}).get("paintings", []):
        if isinstance(row, dict) and isinstance(row.get("image"), str) and isinstance(row.get("name"), str):
            before.setdefault(row["image"], row["name"])
    taken = {n.lower() for n in before.values()}
    names, fresh = {}, [p for p in paths if str(p) not in before]
    for p in paths:
        if str(p) in before:
            names[p] = before[str(p)]
    for p, name in zip(fresh, painting_names(fresh, taken)):
        names[p] = name
    return [Job(names[p], p, i) for i, p in enumerate(paths)]


def share(jobs: list[Job], rank: int, world: int) -> list[Job]:
    """This process's paintings: every ``world``-th one from ``rank``."""
    return [j for j in jobs if j.index % world == rank]


# -------------------------------------------------------------------------------------------- records and index


def record(job: Job, out: Path, status: str, error: str = "") -> dict:
    """What the index says of one painting, read from its run folder when there is one."""
    rec = {"name": job.name, "image": str(job.image), "folder": job.name, "status": status, "frames": 0,
           "stop_reason": None, "error": error or None, "updated": time.time()}
    man = job.folder(out) / MANIFEST
    if man.is_file():
        try:
            data = json.loads(man.read_text(encoding="utf-8"))
            rec.update(frames=len(data.get("keyframes", [])), stop_reason=data.get("stop_reason"))
        except (OSError, ValueError):
            pass
    return rec


def save_records(out: Path, rank: int, records: dict[str, dict]) -> None:
    (out / RANKS).mkdir(parents=True, exist_ok=True)
    write_json(out / RANKS / f"rank-{rank:04d}.json", list(records.values()))


def _merged_records(out: Path) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for f in sorted((out / RANKS).glob("rank-*.json")):
        try:
            rows = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for r in rows:
            if r["name"] not in merged or r.get("updated", 0) >= merged[r["name"]].get("updated", 0):
                merged[r["name"]] = r
    return merged


def lock_rank(out: Path, rank: int):
    """This process's hold on the folder run ``out`` for the whole command (released when the process ends): a
    second command painting into the same folder at the same time is refused by name; None where flock does
    not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: one command per output folder there
        return None
    (out / RANKS).mkdir(parents=True, exist_ok=True)
    handle = open(out / RANKS / f"rank-{rank:04d}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        from .errors import OutputFolderError

        raise OutputFolderError(f"{out}: another command is painting into this folder right now (one command per "
                                "output folder; wait for it, then --resume)") from None
    return handle


class _IndexLock:
    def __init__(self, out: Path):
        self.path = out / RANKS / "index.lock"

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except ImportError:  # no advisory locks (Windows): one process per output folder there
            pass
        return self

    def __exit__(self, *exc):
        self.handle.close()


def write_index(out: Path, jobs: list[Job], settings: dict, sheet: bool = False) -> dict:
    """Rebuild ``index.json`` (and with ``sheet`` the contact sheet) from every process's records."""
    (out / RANKS).mkdir(parents=True, exist_ok=True)
    with _IndexLock(out):
        merged = _merged_records(out)
        rows = []
        for job in jobs:
            r = merged.get(job.name) or {"name": job.name, "image": str(job.image), "folder": job.name,
                                         "status": "pending"}
            rows.append({k: v for k, v in r.items() if k != "updated"})
        counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
        index = {"format": INDEX_FORMAT, "settings": settings, "counts": counts,
                 "complete": all(r["status"] in ("complete", "failed", "invalid") for r in rows), "paintings": rows}
        if sheet:
            index["contact_sheets"] = contact_sheets(out, [r for r in rows if r["status"] == "complete"])
        elif (out / INDEX).is_file():  # keep the sheets an earlier rebuild listed
            try:
                index["contact_sheets"] = json.loads((out / INDEX).read_text()).get("contact_sheets", [])
            except (OSError, ValueError):
                pass
        write_json(out / INDEX, index)
    return index


def read_index(out: Path) -> dict | None:
    """The index of the folder run in ``out``; None when there is none or it is not one of this tool's (a damaged or
    hand-edited file: see :func:`check_index`)."""
    try:
        index = json.loads((Path(out) / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(index, dict) and isinstance(index.get("settings", {}), dict)
          and isinstance(index.get("paintings", []), list))
    return index if ok else None


def check_index(out: Path) -> dict | None:
    """:func:`read_index` for ``--resume``: an index file that is there but cannot be used is named."""
    index = read_index(out)
    if index is None and (Path(out) / INDEX).exists():
        from .errors import OutputFolderError

        raise OutputFolderError(f"--resume: {Path(out) / INDEX} is damaged or not an index of this tool; nothing "
                                "was touched (paint into a new folder, or --overwrite the run)")
    return index


# -------------------------------------------------------------------------------------------- contact sheet


def _thumb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        w = max(1, round(im.width * THUMB_HEIGHT / im.height))
        return im.resize((w, THUMB_HEIGHT), Image.LANCZOS)


def _row(out: Path, rec: dict) -> list[Image.Image] | None:
    try:
        data = json.loads((out / rec["folder"] / MANIFEST).read_text(encoding="utf-8"))
        files = [e["file"] for e in data["keyframes"]]
        picks = [files[0], files[len(files) // 2], files[-1]]
        return [_thumb(out / rec["folder"] / f) for f in picks]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def contact_sheets(out: Path, rows: list[dict]) -> list[str]:
    """PNG pages: one row per painting (its name, then its first, middle and last frame)."""
    from PIL import ImageDraw

    pages = [rows[i:i + SHEET_ROWS] for i in range(0, len(rows), SHEET_ROWS)]
    names = ["contact_sheet.png"] if len(pages) == 1 else [f"contact_sheet_{i + 1:02d}.png" for i in range(len(pages))]
    for old in out.glob("contact_sheet*.png"):
        if old.name not in names:
            old.unlink()
    label_w, gap = 150, 6
    for page, name in zip(pages, names):
        thumbs = [(r["name"], _row(out, r)) for r in page]
        thumbs = [(n, t) for n, t in thumbs if t]
        if not thumbs:
            continue
        width = label_w + max(sum(im.width for im in t) + gap * len(t) for _, t in thumbs)
        sheet = Image.new("RGB", (width, len(thumbs) * (THUMB_HEIGHT + gap) + gap), (224, 224, 224))  # white frames show
        draw = ImageDraw.Draw(sheet)
        for i, (label, t) in enumerate(thumbs):
            y = gap + i * (THUMB_HEIGHT + gap)
            draw.text((gap, y + THUMB_HEIGHT // 2 - 6), label[:28], fill=(0, 0, 0))
            x = label_w
            for im in t:
                sheet.paste(im, (x, y))
                x += im.width + gap
        _atomic(out / name, lambda p, s=sheet: s.save(p, format="PNG"))
    return names

"""Image sets: folders, lists and glob patterns expanded into image files with display names."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from msclip.errors import ImageSetError, not_a_file, shown_when_quiet
from msclip.io.readers import IMAGE_EXTENSIONS, VRT_EXTENSIONS, vrt_sources
from msclip.io.writers import TMP_PREFIX

__all__ = [
    "ImageSet",
    "class_folders",
    "folder_images",
    "folder_or_pattern",
    "list_image_set",
    "list_images",
    "note_linked",
    "unique_names",
]

logger = logging.getLogger(__name__)

_GLOB_CHARS = "*?["


def folder_or_pattern(path: str | os.PathLike) -> str | None:
    """``"folder"`` when ``path`` is a folder, ``"glob pattern"`` when it names nothing and holds
    a glob character (``*``, ``?``, ``[``), else ``None``: the entries that
    :func:`list_images` expands to the image files they stand for."""
    s = os.fsdecode(os.fspath(path))
    if os.path.isdir(s):
        return "folder"
    if not os.path.lexists(s) and any(ch in s for ch in _GLOB_CHARS):
        return "glob pattern"
    return None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


#: Files GDAL keeps beside a raster (``<name>.aux.xml`` metadata, ``.ovr`` overviews, ``.msk``
#: masks): read with it, not images of their own.
_SIDECARS = (".aux.xml", ".ovr", ".msk")


def _sidecar_of(path: Path, images: set[str]) -> bool:
    name = str(path)
    return any(name.lower().endswith(s) and name[: -len(s)] in images for s in _SIDECARS)


def _without_vrt_parts(images: list[str], where: str) -> list[str]:
    """``images`` less the files that a VRT among them reads (its band files are parts of it,
    not images of their own; a folder holding a VRT usually holds its sources too)."""
    vrts = [f for f in images if Path(f).suffix.lower() in VRT_EXTENSIONS]
    if not vrts:
        return images
    parts = {f for v in vrts for f in vrt_sources(v)}
    kept = [f for f in images if os.path.abspath(f) not in parts]
    if len(kept) < len(images):
        n = len(images) - len(kept)
        logger.info("%s: %d file%s read by the VRT file(s) there %s not listed on %s own",
                    where, n, "" if n == 1 else "s", "is" if n == 1 else "are",
                    "its" if n == 1 else "their")  # fmt: skip
    return kept


def folder_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (:data:`IMAGE_EXTENSIONS`), sorted; hidden files
    (macOS ``._*`` forks, an interrupted write's ``.tmp-*`` file) are not images."""
    return sorted(
        q for q in Path(folder).iterdir()
        if q.is_file() and _is_image(q) and not q.name.startswith(".")
    )  # fmt: skip


def class_folders(root: str | os.PathLike) -> list[Path]:
    """The sub-folders of ``root`` (one per class in a class-folder data set), sorted by name;
    hidden ones (``.ipynb_checkpoints``) are not classes."""
    return sorted(d for d in Path(root).iterdir() if d.is_dir() and not d.name.startswith("."))


def _list_file(path: Path) -> list[tuple[str, str]]:
    """``(path, entry as written)`` of the files listed in a ``.txt`` (one per line) or ``.yaml``
    (list, or ``images:`` key) file; relative entries are relative to the list file's folder, and
    ``~`` is the home folder.
    A ``.txt`` list holds one path a line; blank lines and lines starting with ``#`` (after any
    indentation) are skipped. A byte-order mark (as Windows editors write) is not part of the
    first path."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ImageSetError(
            f"image list {path} is not UTF-8 text ({err.reason} at byte {err.start}); save it "
            "as UTF-8",
            param="images",
        ) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        from msclip.options import parse_yaml

        try:
            obj = parse_yaml(text, path)
        except yaml.YAMLError as err:
            raise ImageSetError(f"cannot parse image list {path}: {err}") from err
        if isinstance(obj, dict):
            obj = obj.get("images", obj.get("paths"))
        if not isinstance(obj, list) or not all(isinstance(v, str) for v in obj):
            raise ImageSetError(
                f"{path}: expected a YAML list of image paths (or a mapping with an 'images' list)"
            )
        entries = obj
    else:
        lines = (line.strip() for line in text.splitlines())
        entries = [line for line in lines if line and not line.startswith("#")]
    # "~/tiles/a.tif" is the user's home folder, as on the command line
    homed = [os.path.expanduser(e) if e.startswith("~") else e for e in entries]
    return [(h if Path(h).is_absolute() else str(path.parent / h), h) for h in homed]


@dataclass(frozen=True)
class ImageSet:
    """Image files found by :func:`list_image_set`, with display names.

    Attributes:
        paths: the files, in order, without duplicates (as given or found, not resolved).
        names: per file, its path relative to the root of the specification that found it (the
            folder, the glob's fixed part, the list file's folder; a bare file name for a file
            given directly). When two files would get the same name, every name is taken
            relative to the common folder of all roots instead, so names are unique and never
            absolute paths of the machine.
    """

    paths: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in _GLOB_CHARS):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def list_image_set(specs: Sequence[str | os.PathLike], recursive: bool = True) -> ImageSet:
    """Expand image specifications into image files, in order, without duplicates.

    Each specification is a folder (its image files, sorted; sub-folders too when
    ``recursive``; hidden files and folders skipped and linked folders followed, as a ``**``
    glob does), a ``.txt`` or ``.yaml`` list of paths, a glob pattern (``**`` allowed), or an
    image file. A file given twice (also as ``./x.tif`` and ``/abs/x.tif``, or through a linked
    folder or a symbolic or hard link) is kept once, under its first path; a file reached again
    through a link is named in one warning.
    Image files are those with an extension of :data:`IMAGE_EXTENSIONS`; in a folder or a
    pattern's matches, the files that a VRT among them reads (its band files) are parts of that
    VRT, not images of their own. Other files in a folder (except GDAL's sidecars of its images,
    ``.aux.xml``, ``.ovr``, ``.msk``) are counted in one log warning per folder, not silently
    dropped, and so are the
    temporary files (:data:`~msclip.io.writers.TMP_PREFIX`) an interrupted write left there,
    which are never read as images.

    macOS AppleDouble files (``._name`` beside ``name``, Finder metadata: :func:`is_apple_double`)
    among the listed files or a pattern's matches are skipped with one warning naming them.

    An entry of a ``.txt``/``.yaml`` list is kept as listed: a missing or unreadable listed file
    is reported by the run that reads it (named, counted, status 1 unless skipped on purpose),
    so one bad line of a long archive list does not refuse the whole list.

    Raises:
        ImageSetError: a specification that matches nothing, or a missing file or list given
            directly.
    """
    try:
        return _list_image_set(specs, recursive)
    except ImageSetError as err:  # every such error is about the argument that gave the images
        if err.param is None:
            err.param = "images"
        raise


def _list_image_set(specs: Sequence[str | os.PathLike], recursive: bool) -> ImageSet:
    found_paths: list[tuple[str, str]] = []  # (path, root)
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]  # one specification, not the characters of a path
    for spec in specs:
        s = os.fspath(spec)
        p = Path(s).expanduser()
        if p.is_dir():
            files = _folder_files(p, recursive)
            images = sorted(str(f) for f in files if _is_image(f))
            listed = set(images)
            other = [f for f in files if not _is_image(f) and not _sidecar_of(f, listed)]
            others = sorted({f.suffix.lower() or "(none)" for f in other})
            n_other = len(other)
            images = _without_vrt_parts(images, str(p))
            if n_other:
                logger.warning(
                    "%s: %s (%s) %s",
                    p,
                    "1 file with another extension"
                    if n_other == 1
                    else f"{n_other} files with other extensions",
                    ", ".join(others),
                    "is not an image and is skipped"
                    if n_other == 1
                    else "are not images and are skipped",
                )
            if not images:
                raise ImageSetError(f"folder {p} holds no image files ({_extensions()})")
            found_paths += [(f, str(p)) for f in images]
        elif p.is_file() and p.suffix.lower() in (".txt", ".yaml", ".yml"):
            # relative entries are named as written; absolute ones relative to their common folder
            listed = _list_file(p)
            absolute = [f for f, given in listed if Path(given).is_absolute()]
            common = os.path.commonpath([os.path.dirname(f) for f in absolute]) if absolute else ""
            found_paths += [
                (f, common if Path(given).is_absolute() else str(p.parent)) for f, given in listed
            ]
        elif p.is_file():
            if not _is_image(p):  # never readable as an image: said now, not as a failed read
                raise ImageSetError(
                    f"{s} is not an image file (extension {p.suffix or '(none)'}); images are "
                    f"{_extensions()} files, and a list of paths is a .txt or .yaml file"
                )
            found_paths.append((s, str(p.parent)))
        elif any(ch in s for ch in _GLOB_CHARS):
            import glob

            pattern = os.path.expanduser(s)
            # a link whose target is missing is kept, as in a folder: the run names it unreadable
            found = sorted(
                f
                for f in glob.glob(pattern, recursive=True)
                if (Path(f).is_file() or not os.path.exists(f)) and _is_image(Path(f))
            )
            if not found:
                raise ImageSetError(f"pattern {s!r} matches no image files ({_extensions()})")
            found = _without_vrt_parts(found, repr(s))
            root = _glob_root(pattern)
            found_paths += [(f, root) for f in found]
        else:
            why = not_a_file(p, "folders, image files, .txt/.yaml lists of paths, or globs")
            if why is not None and why != "not found":  # a device (/dev/null): said as it is
                raise ImageSetError(f"{s} {why}")
            raise ImageSetError(
                f"no such file or folder: {s}; give folders, image files, .txt/.yaml lists of "
                "paths, or glob patterns",
                param="images",
            )
    found_paths = _without_apple_double(found_paths)
    unique: dict[str, tuple[str, str]] = {}
    files: dict[tuple[int, int], str] = {}  # (device, inode) -> the first path of the file
    linked: list[tuple[str, str]] = []  # (a path, the earlier path of the same file)
    for f, root in found_paths:  # the first appearance keeps its place, spelling and root
        key = os.path.abspath(f)
        if key in unique:
            continue
        try:
            st = os.stat(key)  # through links: a linked folder or file is its target
        except OSError:  # missing or unreadable: the run names it
            st = None
        if st is not None:
            first = files.setdefault((st.st_dev, st.st_ino), f)
            if first != f:
                linked.append((f, first))
                continue
        unique[key] = (f, root)
    note_linked(linked, "read")
    paths = [f for f, _ in unique.values()]
    return ImageSet(paths, unique_names(paths, [root for _, root in unique.values()]))


#: The first bytes of a macOS AppleDouble file: ``._name``, which a Mac writes beside each file
#: ``name`` it copies to a volume without resource forks (exFAT, FAT, network shares) to hold the
#: file's Finder metadata. It has the image's extension but is never an image.
APPLE_DOUBLE_MAGIC = b"\x00\x05\x16\x07"


def is_apple_double(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a macOS AppleDouble file (its name starts with ``._`` and its content
    with :data:`APPLE_DOUBLE_MAGIC`; a file of another name is not opened)."""
    if not os.path.basename(os.fspath(path)).startswith("._"):
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(len(APPLE_DOUBLE_MAGIC)) == APPLE_DOUBLE_MAGIC
    except OSError:  # missing or unreadable: the run names it
        return False


def _without_apple_double(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``found`` (``(path, root)`` pairs) without macOS AppleDouble files, which a list made with
    ``find -name '*.tif'`` or a ``._*`` pattern holds beside the images of an archive copied from
    a Mac: skipped with one warning naming them, not read and counted as unreadable images. (A
    folder's listing skips them as hidden files.)

    Raises:
        ImageSetError: every file found is one.
    """
    dropped = [f for f, _ in found if is_apple_double(f)]
    if not dropped:
        return found
    shown_when_quiet.warning(
        "%d listed file(s) are macOS AppleDouble files (._name: the Finder metadata a Mac writes "
        "beside a file it copies, not an image) and are skipped: %s%s",
        len(dropped), ", ".join(dropped[:3]),
        f" and {len(dropped) - 3} more" if len(dropped) > 3 else "",
    )  # fmt: skip
    skip = set(dropped)
    kept = [(f, root) for f, root in found if f not in skip]
    if not kept:
        raise ImageSetError(
            f"the given files are macOS AppleDouble files ({', '.join(dropped[:3])}"
            f"{', ...' if len(dropped) > 3 else ''}), not images; give the images beside them "
            "(the names without '._')"
        )
    return kept


def note_linked(linked: list[tuple[str, str]], done: str) -> None:
    """Say, once for a listing, the given files that are files given before under another path
    (a linked folder or file, a hard link): ``(path, earlier path)`` pairs, ``done`` once under
    their first path (``"read"``, ``"indexed"``)."""
    if linked:
        shown_when_quiet.warning(
            "%d given file(s) are files given before under another path (links), %s once "
            "under their first path: %s%s",
            len(linked), done, "; ".join(f"{a} is {b}" for a, b in linked[:3]),
            f"; and {len(linked) - 3} more" if len(linked) > 3 else "",
        )  # fmt: skip


#: The files that make a folder an msclip embedding index (:mod:`msclip.index.store` names its
#: manifest and embeddings file with these).
INDEX_MARKERS = ("manifest.json", "embeddings.f32")


def is_index_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the folder of an msclip embedding index (its manifest and embeddings
    file are there)."""
    return all(os.path.isfile(os.path.join(path, name)) for name in INDEX_MARKERS)


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    """The files below ``folder`` as a ``**`` glob pattern finds them: hidden files and folders
    (names starting with ``.``: ``.DS_Store``, macOS ``._*`` resource forks, ``.ipynb_checkpoints``
    copies) skipped, linked folders followed (each real folder once, so a link cycle ends), and
    links whose target is missing kept (the run names them as unreadable). msclip embedding
    index folders are skipped: their caches are arrays, not images (an index kept beside its
    tiles would otherwise index its own files on the next run)."""
    files: list[Path] = []
    seen: set[str] = set()
    hidden = 0
    unfinished: list[str] = []
    indexes: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        unfinished += [n for n in names if n.startswith(TMP_PREFIX)]
        hidden += sum(n.startswith(".") for n in (*dirs, *names))
        if not recursive:
            dirs[:] = []
        else:
            visible = sorted(d for d in dirs if not d.startswith("."))
            index_dirs = {d for d in visible if is_index_folder(os.path.join(root, d))}
            indexes += [os.path.join(root, d) for d in sorted(index_dirs)]
            dirs[:] = [d for d in visible if d not in index_dirs]
        files += [Path(root, n) for n in names if not n.startswith(".")]
    if indexes:
        logger.info("%s: embedding index folder(s) skipped: %s", folder, ", ".join(indexes))
    if unfinished:
        # an interrupted msclip write (a map, a tile) left these: not finished images
        n = len(unfinished)
        logger.warning(
            "%s: %d unfinished temporary file%s of an interrupted write (%s...) %s skipped; "
            "delete %s", folder, n, "" if n == 1 else "s", unfinished[0],
            "is" if n == 1 else "are", "it" if n == 1 else "them",
        )  # fmt: skip
    if hidden > len(unfinished):
        logger.info("%s: %d hidden file(s) or folder(s) skipped", folder, hidden - len(unfinished))
    return files


def unique_names(paths: Sequence[str], roots: Sequence[str]) -> list[str]:
    """Display names of distinct files: each path relative to its root, or, when two names
    would be the same, every path relative to the common folder of all roots."""
    names = [os.path.relpath(f, r) for f, r in zip(paths, roots)]
    if len(set(names)) != len(names):
        common = os.path.commonpath([os.path.abspath(r) for r in roots])
        names = [os.path.relpath(os.path.abspath(f), common) for f in paths]
    return names


def list_images(specs: Sequence[str | os.PathLike], recursive: bool = True) -> list[str]:
    """The files of :func:`list_image_set` (without their display names)."""
    return list_image_set(specs, recursive).paths


def _extensions() -> str:
    return ", ".join(IMAGE_EXTENSIONS)

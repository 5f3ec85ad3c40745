"""Named models, weight resolution and checkpoint formats.

The model table below is plain data (name -> architecture, bands, statistics, weights), in the
manner of timm's ``PretrainedCfg`` and torchgeo's weight enums. Weight resolution follows timm's
order: an explicit file, then the Hugging Face hub (through ``huggingface_hub``: its cache,
``cache_dir`` and ``HF_HUB_OFFLINE`` honoured), then weights shipped inside the package.

Checkpoint formats read (always without unpickling arbitrary objects: ``torch.load`` with
``weights_only=True``, or safetensors):

* the Llama3-MS-CLIP release ``.pt``: one OpenCLIP state dict registered under three prefixes
  (``clip_base_model.model.``, ``text_encoder.model.``, ``image_encoder.model.``) plus a scalar
  ``temperature`` (also converted to safetensors, or under a wrapper's prefix);
* plain OpenCLIP state dicts (``.pt``/``.bin``/``.safetensors``), also inside Lightning
  ``state_dict`` or msclip training ``model`` wrappers, with or without a DDP ``module.`` prefix
  (objects beside the weights, such as Lightning hyper-parameters, are read as inert stand-ins:
  :class:`_StandIn`);
* msclip ``.safetensors``: an OpenCLIP state dict whose metadata holds the model config (bands,
  statistics, architecture), so the file alone rebuilds the model.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from msclip.errors import (
    CheckpointError,
    CheckpointMismatchError,
    WeightsNotFoundError,
    not_a_file,
)
from msclip.memory import release_pages
from msclip.spectral.bands import LLAMA3_MS_CLIP_BANDS, RGB_BANDS, S2_L2A_BANDS, resolve_bands

__all__ = [
    "MODELS",
    "RELEASE_PREFIXES",
    "ModelEntry",
    "checkpoint_format",
    "export_release_checkpoint",
    "file_sha256",
    "load_weights",
    "materialize_buffers",
    "missing_checkpoint_message",
    "read_checkpoint",
    "remap_patch_kernel",
    "resolve_weights",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

RELEASE_PREFIXES = ("clip_base_model.model.", "text_encoder.model.", "image_encoder.model.")
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelEntry:
    """One named model.

    Attributes:
        name: the name users pass (``--model-name``).
        arch: OpenCLIP architecture name or an msclip ``model_configs`` name.
        bands: image tower bands, in channel order.
        stats: statistics set (see :data:`msclip.spectral.STATS`).
        hub_id: Hugging Face repository of the default weights.
        filenames: files tried in that repository, in order (safetensors first).
        package_file: weights shipped inside the package (``msclip/weights/``).
        open_clip_tag: OpenCLIP pretrained tag of the same weights, for reference.
        pil_rgb: use OpenCLIP's PIL preprocessing for 8-bit RGB pictures.
        description: one line for listings.
    """

    name: str
    arch: str
    bands: tuple[str, ...]
    stats: str
    hub_id: str | None = None
    filenames: tuple[str, ...] = ()
    package_file: str | None = None
    open_clip_tag: str | None = None
    pil_rgb: bool = False
    description: str = ""

    @property
    def has_weights(self) -> bool:
        return bool(self.hub_id or self.package_file)


_OC_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            "Llama3-MS-CLIP-Base", "ViT-B-16", LLAMA3_MS_CLIP_BANDS, "llama3-ms-clip",
            hub_id="ibm-esa-geospatial/Llama3-MS-CLIP-base",
            filenames=("Llama3_MS_CLIP_weights.pt",),
            description="Llama3-MS-CLIP ViT-B/16, 10 Sentinel-2 L2A bands (Marimo et al. 2025)",
        ),
        ModelEntry(
            "ViT-B-16", "ViT-B-16", RGB_BANDS, "openai",
            hub_id="laion/CLIP-ViT-B-16-laion2B-s34B-b88K", filenames=_OC_FILES,
            open_clip_tag="laion2b_s34b_b88k", pil_rgb=True,
            description="OpenCLIP ViT-B/16 LAION-2B (RGB baseline)",
        ),
        ModelEntry(
            "ViT-B-32", "ViT-B-32", RGB_BANDS, "openai",
            hub_id="laion/CLIP-ViT-B-32-laion2B-s34B-b79K", filenames=_OC_FILES,
            open_clip_tag="laion2b_s34b_b79k", pil_rgb=True,
            description="OpenCLIP ViT-B/32 LAION-2B (RGB baseline)",
        ),
        ModelEntry(
            "ViT-L-14", "ViT-L-14", RGB_BANDS, "half",
            hub_id="laion/CLIP-ViT-L-14-laion2B-s32B-b82K", filenames=_OC_FILES,
            open_clip_tag="laion2b_s32b_b82k", pil_rgb=True,
            description="OpenCLIP ViT-L/14 LAION-2B (RGB baseline)",
        ),
        ModelEntry(
            "msclip-demo", "msclip-demo", S2_L2A_BANDS, "llama3-ms-clip",
            package_file="msclip-demo.safetensors",
            description="small 12-band demo model trained by msclip on generated scenes "
            "(not for real use)",
        ),
        ModelEntry(
            "msclip-tiny", "msclip-tiny", LLAMA3_MS_CLIP_BANDS, "llama3-ms-clip",
            description="tiny 10-band test architecture (random weights)",
        ),
        ModelEntry(
            "msclip-tiny-rgb", "msclip-tiny", RGB_BANDS, "openai", pil_rgb=True,
            description="tiny RGB test architecture (random weights)",
        ),
    ]
}  # fmt: skip


# -- files and hashes ------------------------------------------------------------------------
def _hash_cache_dir() -> Path:
    from msclip.cache import cache_root

    return cache_root() / "sha256"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file.

    Hashing the 604 MB Llama3-MS-CLIP checkpoint takes about a second, on every run, for a value
    that changes only with the file: the digest is remembered for the life of the process and on
    disk (``$MSCLIP_CACHE_DIR/sha256/``, default ``~/.cache/msclip/sha256/``), keyed by the
    file's absolute path, device, inode, size and modification and status-change times in
    nanoseconds, so any change to the file gives a new key and a fresh hash (the status-change
    time also moves when a copy keeps the old modification time: ``cp -p``, ``rsync -t``).
    """
    p = os.path.abspath(os.fspath(path))
    st = os.stat(p)
    key = (p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _SHA_CACHE:
        return _SHA_CACHE[key]
    entry = _hash_cache_dir() / (hashlib.sha256(repr(key).encode()).hexdigest()[:40] + ".txt")
    try:
        cached = entry.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        cached = ""
    if len(cached) == 64 and all(c in "0123456789abcdef" for c in cached):
        _SHA_CACHE[key] = cached
        return cached
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    _SHA_CACHE[key] = digest
    try:
        from msclip.io import write_text

        write_text(entry, digest + "\n")
    except OSError as err:  # a read-only home: hash again next time
        logger.debug("cannot cache the sha256 of %s in %s: %s", p, entry.parent, err)
    return digest


_SHA_CACHE: dict[tuple, str] = {}


_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def missing_checkpoint_message(path: str | os.PathLike) -> str:
    """Why ``path`` is not a checkpoint file that can be read, in words: a folder (with the
    checkpoint files in it, as a ``huggingface-cli download --local-dir`` folder holds them), a
    link whose target is gone (a hub cache entry whose blob was removed or never completed), or
    simply not found."""
    p = os.fspath(path)
    if os.path.isdir(p):
        try:
            inside = sorted(e.name for e in os.scandir(p)
                            if e.name.endswith(_WEIGHT_SUFFIXES) and e.is_file())  # fmt: skip
        except OSError:
            inside = []
        if not inside:
            return (f"{p} is a folder, not a checkpoint file, and holds no .safetensors, .pt, "
                    ".pth, .bin or .ckpt file; give the path of the checkpoint file")  # fmt: skip
        more = f" ... ({len(inside)} files)" if len(inside) > 4 else ""
        files = ", ".join(os.path.join(p, n) for n in inside[:4]) + more
        return f"{p} is a folder, not a checkpoint file; give the path of a file in it: {files}"
    if os.path.islink(p) and not os.path.exists(p):
        try:
            os.stat(p)
        except OSError as err:
            if err.errno == errno.ELOOP:  # its target exists: it is a link that leads back here
                return (f"{p} is a link to {os.readlink(p)} in a loop of symbolic links that "
                        "never reaches a file; point the link at the checkpoint file")  # fmt: skip
        return (f"{p} is a link to {os.readlink(p)}, which does not exist (an interrupted "
                "download or a cleaned cache); download the file again")  # fmt: skip
    why = not_a_file(p, "the path of the checkpoint file")
    if why is not None and why != "not found":  # a device (/dev/null): said as it is
        return f"{p} {why}"
    source = _published_source(os.path.basename(p))
    return f"checkpoint file not found: {p}" + (f"; {source}" if source else "")


def _published_source(filename: str) -> str | None:
    """Where a registered model's weight file of that name is published, in words (``None``
    unless exactly one registered model names such a file)."""
    found = [e for e in MODELS.values() if e.hub_id and filename in e.filenames]
    if len(found) != 1:  # OpenCLIP's file names are shared by several repositories
        return None
    entry = found[0]
    return (
        f"it holds the weights of {entry.name}: download it with huggingface-cli download "
        f"{entry.hub_id} {filename}"
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_weights(
    entry: ModelEntry, path: str | os.PathLike | None = None, cache_dir: str | None = None
) -> Path:
    """Find the weight file of ``entry``: ``path`` if given, else the hub cache / hub, else the
    package.

    Raises:
        WeightsNotFoundError: offline without the file, or an explicit path that does not exist;
            the message names the file, where to get it, and how to pass it (``param`` is
            ``pretrained``; command-line programs add their flag).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            why = missing_checkpoint_message(p)
            raise WeightsNotFoundError(
                why + ("; check the path of the weights" if why.startswith("checkpoint") else ""),
                param="pretrained",
            )
        return p
    if entry.package_file:
        p = WEIGHTS_DIR / entry.package_file
        if p.is_file():
            return p
    if not entry.hub_id:
        raise WeightsNotFoundError(
            f"model {entry.name!r} has no published weights; give the path of a checkpoint "
            "(pretrained='path/to/file'), or ask for random weights (pretrained=None)",
            param="pretrained",
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    errors = []
    # The hub cache first (published weights do not change): no network needed for a file that
    # is there. Then the hub, unless it cannot be reached: the hub client retries a failed
    # request five times with back-off (~30 s of warnings) before giving up.
    unreachable = None
    for local_only in (True, False):
        if not local_only:
            unreachable = "HF_HUB_OFFLINE is set" if _offline() else _hub_unreachable()
            if unreachable:
                break
        for filename in entry.filenames:
            try:
                return Path(
                    hf_hub_download(
                        entry.hub_id, filename, cache_dir=cache_dir, local_files_only=local_only
                    )
                )
            except LocalEntryNotFoundError:  # (a subclass of the next one) not in the cache
                continue
            except EntryNotFoundError as err:  # the repository has no such file: the next one
                errors.append(f"{filename}: {err.__class__.__name__}")
            except OSError as err:
                errors.append(f"{filename}: {err.__class__.__name__}")
                break
    first = entry.filenames[0]
    from huggingface_hub import constants

    cache = cache_dir or constants.HF_HUB_CACHE  # the folder looked in (HF_HOME, HF_HUB_CACHE)
    raise WeightsNotFoundError(
        f"weights of {entry.name!r} are not available: {first} from the Hugging Face repository "
        f"{entry.hub_id} (https://huggingface.co/{entry.hub_id}) is not in the hub cache "
        f"({cache}) and the hub cannot be reached"
        f"{f' ({unreachable})' if unreachable else ''}. Download it on a connected machine "
        f"(huggingface-cli download {entry.hub_id} {first}), then give its path "
        f"(pretrained='/path/to/{first}')." + (f" [{'; '.join(errors)}]" if errors else ""),
        param="pretrained",
    )


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face endpoint cannot be reached (its name does not resolve, or no
    connection within ``timeout`` seconds), or ``None`` when it can or a proxy is in the way
    (then the hub client finds out itself)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as err:
        return f"{host} does not resolve: {err.strerror or err}"
    except OSError as err:
        return f"no connection to {host}:{port}: {err.strerror or err}"


# -- reading ---------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A state dict with what is known about it.

    Attributes:
        state_dict: OpenCLIP parameter names -> tensors.
        format: ``llama3-ms-clip-release``, ``open_clip`` or ``msclip``.
        config: msclip model config dict from the file's metadata, if any.
        temperature: the release's scalar temperature, if present.
        path: the file.
        mapped: the tensors are private memory maps of the file (nothing read until used).
        metadata: a safetensors file's metadata (text fields of its header).
    """

    state_dict: dict[str, torch.Tensor]
    format: str
    config: dict | None = None
    temperature: float | None = None
    path: str | None = None
    mapped: bool = False
    metadata: dict[str, str] = field(default_factory=dict)


def _unpickler_reason(err: BaseException) -> str:
    """What torch's safe unpickler refused (its message also advises ``weights_only=False``,
    which msclip never passes on: it would run code from the file)."""
    lines = [line.strip() for line in str(err).splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            nxt = next((x for x in lines[i + 1 :] if x), "")
            return rest or nxt
    return "not a plain state dict"


class _StandIn:
    """An inert object standing for one of a class a checkpoint names outside its weights.

    Lightning and torchgeo checkpoints keep hyper-parameters such as ``argparse.Namespace``,
    weight enums or transform objects beside the ``state_dict``. torch's safe unpickler refuses
    the whole file for them; msclip reads such a file with each of those names bound to a
    subclass of this one, so that no code of the file's classes is imported or run: the object
    keeps nothing and the weights are read as usual. A stand-in found where the weights are is
    refused (see :func:`_refuse_stand_ins`), and so is a dict or list subclass holding items
    (torch's safe unpickler sets items on plain dicts and lists only).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


@dataclass
class _Loaded:
    """What :func:`_torch_load` read: the object, whether its tensors are memory-mapped, and the
    names of the classes stood in for (with torch's refusal, used if they are found in the way)."""

    obj: Any
    mapped: bool
    stand_ins: tuple[str, ...] = ()
    refusal: str = ""


def _refusal(path: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path} holds Python objects other than tensors and plain containers ({reason}); "
        "msclip never unpickles arbitrary objects, because unpickling runs code from the file. "
        "Re-save the state dict alone from a trusted copy, or convert it to safetensors."
    )


def _load(path: str, stand_ins: list[tuple[type, str]] | None = None) -> tuple[Any, bool]:
    import contextlib
    import warnings

    allowed = torch.serialization.safe_globals(stand_ins) if stand_ins else contextlib.nullcontext()
    with warnings.catch_warnings(), allowed:
        # torch warns about pickle protocols while refusing the file; the error says it all
        warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
        try:
            # A private map: tensors are read from the page cache when used, never copied; a
            # legacy (pre zip) file cannot be mapped and is read whole.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True), False


def _torch_load(path: str) -> _Loaded:
    """The file's object (``weights_only``), memory-mapped where the file format allows it.

    Classes the safe unpickler refuses are stood in for by :class:`_StandIn` subclasses when torch
    can list them without unpickling (zip checkpoints); the caller refuses the file if one of them
    is where the weights are (:func:`_refuse_stand_ins`).
    """
    import pickle

    read_error = (RuntimeError, EOFError, OSError, KeyError, ValueError)
    try:
        return _Loaded(*_load(path))
    except pickle.UnpicklingError as err:
        refused = err
    except read_error as err:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {checkpoint_read_reason(path, err)}"
        ) from err
    try:  # recent torch lists a zip checkpoint's globals without unpickling it
        names = tuple(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy file, or a torch that cannot: the refusal stands
        names = ()
    if not names:
        raise _refusal(path, _unpickler_reason(refused)) from refused
    pairs = []
    for name in names:
        module, _, qualname = name.rpartition(".")
        attrs = {"__module__": module, "__qualname__": qualname}
        pairs.append((type(qualname or name, (_StandIn,), attrs), name))
    try:
        obj, mapped = _load(path, pairs)
    except pickle.UnpicklingError as err:  # e.g. items set on a stand-in for a dict subclass
        raise _refusal(path, _unpickler_reason(err)) from err
    except Exception as err:  # a torch whose safe unpickler takes no stand-ins: as before
        raise _refusal(path, _unpickler_reason(refused)) from err
    logger.info("%s: read without importing %s (kept as inert stand-ins)", path, ", ".join(names))
    return _Loaded(obj, mapped, names, _unpickler_reason(refused))


def _is_stand_in(value: Any) -> bool:
    return isinstance(value, _StandIn) or (isinstance(value, type) and issubclass(value, _StandIn))


def _refuse_stand_ins(path: str, loaded: _Loaded, weights: Any, *, values: bool) -> None:
    """Refuse a file whose weights are, or (``values``) hold, an object of a class msclip stood
    in for: a pickled module or tensor subclass would lose its weights."""
    if not loaded.stand_ins:
        return
    if _is_stand_in(weights) or (
        values and isinstance(weights, Mapping) and any(_is_stand_in(v) for v in weights.values())
    ):
        raise _refusal(path, loaded.refusal)


def checkpoint_read_reason(path: str | os.PathLike, err: BaseException) -> str:
    """What is wrong with a file torch could not read, in words (torch's own message can be
    empty, or an errno without context)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    text = str(err).strip()
    if size == 0:
        return "the file is empty (0 bytes)"
    if isinstance(err, (KeyError, ValueError)):
        return f"the file is not a torch checkpoint ({size} bytes; torch's loader: {text!r})"
    if isinstance(err, EOFError) or not text or "Invalid argument" in text:
        why = text or type(err).__name__
        return f"the file is truncated or not a torch checkpoint ({size} bytes; {why})"
    return text


def checkpoint_format(path: str | os.PathLike) -> str | None:
    """``"safetensors"`` or ``"torch"`` when the first bytes of the file say so, else ``None``.

    The content decides, not the name: a safetensors file saved as ``.pt``/``.pth``/``.bin`` (or a
    torch file as ``.safetensors``) is read by the right reader instead of being reported as
    damaged. A safetensors file starts with the length of its JSON header (8 bytes, little
    endian) followed by ``{``; a torch file is a zip archive (``PK``) or, in the legacy format, a
    pickle (protocol byte ``0x80``).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    # the header length first: its low byte can be anything, 0x80 included
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "torch"
    return None


def _is_safetensors(path: str) -> bool:
    fmt = checkpoint_format(path)
    return fmt == "safetensors" or (fmt is None and path.endswith(".safetensors"))


def _safetensors_read_reason(path: str, err: BaseException) -> str:
    """What is wrong with a safetensors file that cannot be read, in words (the library's own
    message names a header field, not the file's state)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return str(err)
    if size == 0:
        return "the file is empty (0 bytes)"
    return f"the file is damaged, truncated or not a safetensors file ({size} bytes; {err})"


def _refuse_torchscript(path: str) -> None:
    """A TorchScript archive (``torch.jit.save``, such as OpenAI's original CLIP ``.pt`` files)
    holds code, not a state dict: refused before torch dispatches it to ``torch.jit.load``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch's loader reports the damage
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        raise CheckpointError(
            f"{path} is a TorchScript archive (a model saved with torch.jit.save, as OpenAI's "
            "original CLIP files are), not a state dict; msclip does not load programs from "
            "files. Save its state dict from a trusted copy "
            "(torch.save(torch.jit.load(path).state_dict(), 'weights.pt')) and give that file"
        )


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file of any supported format (see the module docstring).

    The tensors are memory maps of the file (safetensors, and ``.pt`` files in torch's zip
    format): no tensor data is read here, and a model built with ``assign`` loading
    (:func:`load_weights` on a model built on the meta device) uses the mapped pages as its
    weights, with no second copy. The format is told from the file's first bytes (see
    :func:`checkpoint_format`), the name's suffix deciding only when they do not.
    """
    p = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(p):
        raise WeightsNotFoundError(missing_checkpoint_message(p))
    _refuse_download_stand_ins(p)
    config = None
    if _is_safetensors(p):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(p, framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"cannot read safetensors checkpoint {p}: {_safetensors_read_reason(p, err)}"
            ) from err
        field = "msclip_config"
        try:
            if "msclip_config" in meta:
                config = json.loads(meta["msclip_config"])
                if not isinstance(config, dict):
                    raise ValueError(f"a mapping was expected, not {type(config).__name__}")
            field = "temperature"
            temperature = float(meta["temperature"]) if "temperature" in meta else None
        except ValueError as err:
            raise CheckpointError(
                f"{p}: its metadata field {field!r} is damaged ({err}); use a good copy of the "
                "file, or re-save the weights with msclip.save_checkpoint"
            ) from err
        sd = _strip_module(sd)
        release = _release_layout(p, sd, True, meta) if config is None else None
        if release is not None:  # the release's .pt converted to safetensors
            return release
        fmt = "msclip" if config is not None else "open_clip"
        return Checkpoint(sd, fmt, config, temperature, p, mapped=True, metadata=dict(meta))

    if p.endswith(".safetensors"):  # torch's loader reads any file of this name as safetensors
        raise CheckpointError(
            f"{p} is a torch checkpoint, not a safetensors file: give it its own suffix "
            f"(rename it to {os.path.basename(p)[: -len('.safetensors')]}.pt)"
        )
    _refuse_torchscript(p)
    loaded = _torch_load(p)
    obj, mapped = loaded.obj, loaded.mapped
    _refuse_stand_ins(p, loaded, obj, values=False)  # a pickled module, say
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} does not hold a state dict (found {type(obj).__name__})")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # Lightning
        obj = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], Mapping):  # msclip training checkpoint
        if isinstance(obj.get("msclip_config"), str):
            try:
                config = json.loads(obj["msclip_config"])
            except ValueError as err:
                raise CheckpointError(
                    f"{p}: its field 'msclip_config' is damaged ({err}); use a good copy of the "
                    "file (or an earlier checkpoint of the run)"
                ) from err
        obj = obj["model"]
    _refuse_stand_ins(p, loaded, obj, values=True)  # the state dict: tensors only
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{p} holds no tensors")
    sd = _strip_module(sd)
    release = _release_layout(p, sd, mapped) if config is None else None
    if release is not None:
        return release
    return Checkpoint(sd, "open_clip" if config is None else "msclip", config, None, p, mapped)


def _release_layout(
    path: str, sd: dict[str, torch.Tensor], mapped: bool, metadata: dict[str, str] | None = None
) -> Checkpoint | None:
    """The checkpoint of a state dict in the Llama3-MS-CLIP release layout (the OpenCLIP model
    under three prefixes, plus ``temperature``), whatever file format holds it (the release's
    ``.pt``, or a safetensors conversion of it); ``None`` for another layout."""
    prefix = RELEASE_PREFIXES[0]
    if not any(k.startswith(prefix) for k in sd):
        return None
    temperature = float(sd["temperature"]) if "temperature" in sd else None
    main = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    others = [k for k in sd if not k.startswith(RELEASE_PREFIXES) and k != "temperature"]
    if others:
        raise CheckpointMismatchError(
            f"{path} looks like a Llama3-MS-CLIP release checkpoint but also holds unexpected "
            f"entries {others[:10]}"
        )
    for other in RELEASE_PREFIXES[1:]:
        copy = {k[len(other) :]: v for k, v in sd.items() if k.startswith(other)}
        if copy and (copy.keys() != main.keys()):
            logger.warning("%s: entries under %r differ from %r; using the latter",
                           path, other, prefix)  # fmt: skip
    return Checkpoint(main, "llama3-ms-clip-release", None, temperature, path, mapped,
                      metadata=dict(metadata or {}))  # fmt: skip


def _refuse_download_stand_ins(path: str) -> None:
    """A clear error for the two files most often saved in place of a checkpoint: a Git LFS
    pointer (a repository cloned without ``git lfs``) and a web page (a ``/blob/`` address
    downloaded instead of the file)."""
    with open(path, "rb") as f:
        head = f.read(512)
    size = os.path.getsize(path)
    if head.startswith(b"version https://git-lfs.github.com/spec"):
        raise CheckpointError(
            f"{path} is a Git LFS pointer ({size} bytes), not the weights: fetch the file itself "
            "(git lfs pull in the clone, or download it from the repository's 'resolve' address)"
        )
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise CheckpointError(
            f"{path} is a web page ({size} bytes), not a checkpoint: the download saved the page "
            "instead of the file; download the file itself (on Hugging Face a /resolve/ address, "
            "not /blob/)"
        )


#: First components of CLIP parameter names (OpenCLIP's, and its HF-text-tower variant's).
_CLIP_KEYS = ("visual.", "transformer.", "token_embedding.", "positional_embedding", "ln_final.",
              "text_projection", "logit_scale", "text.")  # fmt: skip


def _strip_module(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the wrappers' key prefixes: ``module.`` (DistributedDataParallel), ``clip.`` (an
    :class:`msclip.MSCLIP`'s own ``state_dict()``, saved with ``torch.save``), and any one name
    that every key starts with when what follows is a CLIP model's (``model.`` of a Lightning
    module's attribute, nested as ``model.module.clip.`` too) or the Llama3-MS-CLIP release
    layout's (its prefixes, ``clip_base_model.model.`` ...)."""
    given = sd
    for _ in range(4):
        if not sd or any(k.startswith((*_CLIP_KEYS, *RELEASE_PREFIXES)) for k in sd):
            return sd
        first = {k.split(".", 1)[0] for k in sd}
        if len(first) != 1 or not all("." in k for k in sd):
            break
        cut = len(first.pop()) + 1
        sd = {k[cut:]: v for k, v in sd.items()}
    return given  # no CLIP names under a common prefix: as given (a mismatch error names them)


# -- loading into a model ----------------------------------------------------------------------
def remap_patch_kernel(
    weight: torch.Tensor, from_bands: tuple[str, ...], to_bands: tuple[str, ...]
) -> torch.Tensor:
    """Kernel for ``to_bands`` from one made for ``from_bands``.

    An RGB kernel is extended by the Llama3-MS-CLIP zero-init rule (the blue, green and red
    kernels go to the bands matched to those colours). Otherwise each target band takes the
    kernel of the source band it is (spectrally) equivalent to, and starts at zero when there
    is none.
    """
    from msclip.spectral.adapt import equivalent_band
    from msclip.spectral.bands import resolve_band
    from msclip.spectral.patch_embed import rgb_zero_init_weight

    if tuple(from_bands) == RGB_BANDS:
        return rgb_zero_init_weight(weight, to_bands, from_bands)
    sources = [resolve_band(b) for b in from_bands]
    out = weight.new_zeros((weight.shape[0], len(to_bands), *weight.shape[2:]))
    for i, name in enumerate(to_bands):
        match = equivalent_band(resolve_band(name), sources)
        if match is not None:
            out[:, i] = weight[:, sources.index(match)]
    return out


def load_weights(
    model: torch.nn.Module,
    ckpt: Checkpoint,
    strict: bool = True,
    extend_bands: bool = False,
    dtype: torch.dtype | None = None,
) -> None:
    """Load ``ckpt`` into ``model`` (an :class:`msclip.MSCLIP`) strictly.

    A model built on the meta device (no memory, no random initialisation) takes the
    checkpoint's tensors as its parameters (``load_state_dict(assign=True)``): a memory-mapped
    checkpoint then becomes the weights without a copy. A materialised model gets the values
    copied in, as ``load_state_dict`` does.

    Args:
        model: target model.
        ckpt: from :func:`read_checkpoint`.
        strict: refuse any missing, unexpected or differently shaped tensor.
        extend_bands: when the checkpoint's patch kernel has other bands than the model (an RGB
            OpenCLIP checkpoint for a multispectral model), extend it by the zero-init rule.
        dtype: floating-point dtype of the loaded weights (default: the model's, float32 on the
            meta device). Tensors are converted one at a time, and the pages of a memory-mapped
            source are released after each, so peak memory stays near the converted size.

    Raises:
        CheckpointMismatchError: names the missing and unexpected keys and the shape differences.
    """
    sd = dict(ckpt.state_dict)
    target = model.clip.state_dict()
    key = "visual.conv1.weight"
    src_bands = tuple((ckpt.config or {}).get("bands") or ())
    if not src_bands and key in sd and sd[key].shape[1] == 3:
        src_bands = RGB_BANDS  # OpenCLIP checkpoints take R, G, B
    if key in sd and key in target and src_bands and src_bands != model.bands:
        same_but_bands = sd[key].shape[0] == target[key].shape[0] and (
            sd[key].shape[2:] == target[key].shape[2:]
        )
        if extend_bands and same_but_bands and len(src_bands) == sd[key].shape[1]:
            names = tuple(b.name for b in resolve_bands(src_bands))
            sd[key] = remap_patch_kernel(sd[key], names, model.bands)
            logger.info("patch kernel mapped from bands %s to %s", src_bands, model.bands)
        elif sd[key].shape == target[key].shape:
            raise CheckpointMismatchError(
                f"checkpoint {ckpt.path or ''} was made for bands {list(src_bands)} but the "
                f"model reads {list(model.bands)}: build the model with the checkpoint's bands "
                "(create_model(path) reads them from the file), or pass bands=... to remap the "
                "patch kernel by wavelength"
            )
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in set(sd) & set(target)
        if sd[k].shape != target[k].shape
    )
    # a weight of another kind (integers where the model has floats: a quantised state dict) or
    # without data (a state dict saved from a model on the meta device) cannot become a weight;
    # load_state_dict would fail inside torch, naming neither the file nor the reason
    kinds = sorted(
        f"{k}: checkpoint {str(sd[k].dtype).replace('torch.', '')} vs model "
        f"{str(target[k].dtype).replace('torch.', '')}"
        for k in set(sd) & set(target)
        if sd[k].is_floating_point() != target[k].is_floating_point()
        or sd[k].is_complex() != target[k].is_complex()
    )
    empty = sorted(k for k in set(sd) & set(target) if sd[k].is_meta)
    if empty:
        raise CheckpointError(
            f"checkpoint {ckpt.path or ''} holds {len(empty)} tensor(s) without values (on the "
            f"meta device: saved from a model that was never loaded): "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; save the weights again "
            "from a loaded model"
        )
    if shapes or kinds or (strict and (missing or unexpected)):

        def _fmt(items: list[str]) -> str:
            return ", ".join(items[:12]) + (f" ... (+{len(items) - 12} more)" if len(items) > 12
                                            else "")  # fmt: skip

        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if shapes:
            parts.append(f"shape differences ({len(shapes)}): {_fmt(shapes)}")
        if kinds:
            parts.append(f"type differences ({len(kinds)}): {_fmt(kinds)}")
        hint = ""
        if (
            key in sd
            and key in target
            and sd[key].ndim == target[key].ndim == 4
            and (sd[key].shape[1] != target[key].shape[1])
        ):
            hint = (" The patch kernel's band count differs: the checkpoint was made for other "
                    "bands than this model's " f"{list(model.bands)}.")  # fmt: skip
            if len(src_bands) == sd[key].shape[1]:  # the file names them: both ways out
                hint += (f" It reads {list(src_bands)}: create the model from the file alone "
                         "(create_model(path)) to use those, or pass bands=... to map its patch "
                         "kernel onto other bands by wavelength.")  # fmt: skip
        if kinds:
            hint += (" A weight of another type than the model's (integers of a quantised state "
                     "dict, say) cannot be loaded: give the file of the floating-point "
                     "weights.")  # fmt: skip
        raise CheckpointMismatchError(
            f"checkpoint {ckpt.path or ''} ({ckpt.format}) does not fit model "
            f"{model.config.name or model.config.arch!r}: " + "; ".join(parts) + "." + hint
        )
    on_meta = any(t.is_meta for t in target.values())
    want = dtype or (torch.float32 if on_meta else next(iter(target.values())).dtype)
    if on_meta or dtype is not None:
        for k, v in sd.items():
            if v.is_floating_point() and v.dtype != want:
                sd[k] = v.to(want)
                if ckpt.mapped:
                    release_pages(v)  # the source's pages, read once for the conversion
    model.clip.load_state_dict(sd, strict=strict, assign=on_meta)
    if on_meta:
        materialize_buffers(model)
    if ckpt.temperature is not None:
        model.release_temperature = ckpt.temperature
    if ckpt.path:
        model.checkpoint_path = ckpt.path
        model.checkpoint_sha256 = file_sha256(ckpt.path)


def materialize_buffers(model: torch.nn.Module) -> None:
    """Recompute the non-persistent buffers of a model built on the meta device and loaded.

    The only such buffer of CLIP models is the text tower's causal ``attn_mask``; any other
    buffer left on the meta device is an error (the model cannot run).
    """
    device = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
    for name, module in model.named_modules():
        for bname, buf in list(module._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if bname == "attn_mask" and buf.ndim == 2 and buf.shape[0] == buf.shape[1]:
                n = buf.shape[0]
                module._buffers[bname] = torch.full(
                    (n, n), float("-inf"), dtype=buf.dtype, device=device
                ).triu_(1)
            else:
                raise CheckpointError(
                    f"buffer {name + '.' if name else ''}{bname} is not in the checkpoint and "
                    "cannot be rebuilt; build the model without the meta device"
                )
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"parameters {left[:5]} were not loaded (still on the meta device)")


# -- writing ---------------------------------------------------------------------------------
def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    *,
    warn_precision: bool = True,
) -> Path:
    """Save ``model`` to safetensors (atomically) with its config, bands and statistics.

    The file loads with ``msclip.create_model_and_transforms(path)`` and, for OpenCLIP users,
    with ``safetensors.torch.load_file`` as a plain OpenCLIP state dict.

    The weights are stored in the model's dtype: a model created with ``precision="auto"`` on a
    CPU with native bf16 (or ``"bf16"``) holds bf16 weights, and saving it keeps those (a
    warning says so); create the model with ``precision="fp32"`` to save full-precision weights.
    """
    from safetensors.torch import save_file

    from msclip._version import __version__
    from msclip.io import atomic_write

    _check_float(model)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.clip.state_dict().items()}
    if warn_precision:
        _warn_half(sd, path)
    meta = {
        "format": "msclip",
        "msclip_version": __version__,
        "msclip_config": json.dumps(model.config.to_dict()),
        "bands": json.dumps(list(model.bands)),
        "stats": json.dumps(model.config.stats.to_dict()),
        "temperature": repr(float(model.release_temperature)),
    }
    meta.update(metadata or {})
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta), ".safetensors")


def _warn_half(sd: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Say so when the weights about to be written are half precision (a model created with
    ``precision='auto'`` on a CPU with native bf16 runs in bf16)."""
    half = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()
                   if v.is_floating_point() and v.element_size() < 4})  # fmt: skip
    if half:
        logger.warning(
            "saving %s weights to %s (the model runs in %s): they are not the full-precision "
            "weights; create the model with precision='fp32' to save those",
            "/".join(half), path, "/".join(half),
        )  # fmt: skip


def _check_float(model: torch.nn.Module) -> None:
    if getattr(model, "precision", None) == "int8":
        from msclip.errors import PrecisionError

        raise PrecisionError(
            "an int8 model (quantised image tower) cannot be saved as a checkpoint; save the "
            "float model it was made from (create_model(..., precision='fp32'))",
            param="precision",
        )
    empty = [n for n, t in model.clip.state_dict().items() if t.is_meta]
    if empty:
        raise CheckpointError(
            f"the model's weights {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} are on "
            "the meta device, which holds no values: a file of them would hold nothing; load "
            "the weights first (load_weights) or create the model on 'cpu'"
        )


def export_release_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write the Llama3-MS-CLIP release layout (three prefixes + ``temperature``), atomically.

    The three prefixes share the same tensors, so the file is no larger than one copy.
    """
    from msclip.io import atomic_write

    _check_float(model)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.clip.state_dict().items()}
    _warn_half(sd, path)
    out: dict[str, torch.Tensor] = {}
    for prefix in RELEASE_PREFIXES:
        out.update({prefix + k: v for k, v in sd.items()})
    out["temperature"] = torch.tensor(float(model.release_temperature))
    return atomic_write(path, lambda tmp: torch.save(out, tmp), ".pt")

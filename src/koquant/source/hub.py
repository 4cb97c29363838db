"""Models straight from the Hugging Face Hub, and folders that are snapshots in a Hub cache.

``org/name`` or ``org/name@revision`` (when no local path of that name exists) is fetched with
``huggingface_hub.snapshot_download``, which honours ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_TOKEN`` and
``HF_HUB_OFFLINE`` (offline, the cached snapshot is used and nothing is asked of the network). Only
the files koquant reads come down: safetensors weights and their index, configs, tokenizer files and
chat templates; pickle weights (``*.bin``, ``*.pt``) only with ``--allow-pickle``.

A folder given by path inside a Hub cache (``.../models--org--name/snapshots/<commit>``) is named after
its repo, not after the commit hash, and records where it came from.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

#: what koquant reads from a model repo (anything else, e.g. original/ consolidated.pth, stays on the Hub)
ALLOW_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                  "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                  "*.tiktoken", "tokenizer.model.v*")
PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json", "*.pt")

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<rev>[A-Za-z0-9_./-]+))?$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None  # what was asked for (a branch, tag or commit); None: the default branch
    commit: str | None = None  # the commit the files are from

    @property
    def name(self) -> str:
        return self.repo_id.split("/")[-1]

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}


def parse_hub_id(text: str) -> HubRef | None:
    """``org/name[@revision]`` as a :class:`HubRef`; None when ``text`` is not shaped like one."""
    m = _HUB_ID.match(str(text))
    if m is None or ".." in m["repo"]:
        return None
    return HubRef(m["repo"], m["rev"])


def snapshot_origin(folder: Path) -> HubRef | None:
    """The repo and commit of a folder that is a snapshot in a Hub cache, else None."""
    folder = Path(folder).absolute()
    parent, repo_dir = folder.parent, folder.parent.parent
    if parent.name != "snapshots" or not repo_dir.name.startswith("models--"):
        return None
    org_name = repo_dir.name[len("models--"):]
    if "--" not in org_name:
        return HubRef(org_name, None, folder.name)
    org, name = org_name.split("--", 1)
    return HubRef(f"{org}/{name}", None, folder.name)


def fetch(ref: HubRef, *, allow_pickle: bool = False) -> tuple[Path, HubRef]:
    """Download (or find cached) the files koquant reads of ``ref``; the snapshot folder and the commit."""
    import huggingface_hub  # a dependency of transformers
    from huggingface_hub import errors as hub_errors

    patterns = list(ALLOW_PATTERNS) + (list(PICKLE_PATTERNS) if allow_pickle else [])
    what = ref.repo_id + (f"@{ref.revision}" if ref.revision else "")
    try:
        folder = Path(huggingface_hub.snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns))
    except hub_errors.GatedRepoError:
        raise CheckpointError(f"{what} is gated: its licence must be accepted on the Hub first",
                              hint="accept it on the model's page, then set HF_TOKEN to a token of that account") from None
    except hub_errors.RepositoryNotFoundError:
        raise CheckpointError(f"{what} is not a model repo koquant can see on the Hub (and no local folder has that name)",
                              hint="check the spelling; for a private repo set HF_TOKEN; for a local folder pass "
                              "its path (./org/name)") from None
    except hub_errors.RevisionNotFoundError:
        raise CheckpointError(f"{ref.repo_id} has no revision {ref.revision!r}",
                              hint="give a branch, tag or commit of the repo after @") from None
    except hub_errors.LocalEntryNotFoundError:
        raise CheckpointError(f"{what} is not in the Hub cache, and the Hub cannot be reached (offline)",
                              hint="download it once with network access (or unset HF_HUB_OFFLINE), or pass the "
                              "local folder") from None
    except hub_errors.HfHubHTTPError as e:
        raise CheckpointError(f"the Hub refused {what}: {e}", hint="check HF_TOKEN and the network") from None
    origin = snapshot_origin(folder)
    commit = origin.commit if origin is not None else None
    return folder, HubRef(ref.repo_id, ref.revision, commit)


def resolve_model(path) -> tuple[Path, HubRef | None, bool]:
    """What a MODEL argument names: (folder, its Hub origin or None, whether it is a Hub id to fetch)."""
    p = Path(path).expanduser()
    if p.exists():
        return p, snapshot_origin(p), False
    ref = parse_hub_id(str(path))
    if ref is None:
        return p, None, False
    return p, ref, True


def local_model(path, *, allow_pickle: bool = False) -> tuple[Path, HubRef | None]:
    """The local folder a MODEL argument names (a Hub id fetched, or found in the cache) and its Hub origin."""
    folder, hub, remote = resolve_model(path)
    if remote:
        folder, hub = fetch(hub, allow_pickle=allow_pickle)
    return folder, hub


def model_name(path) -> str:
    """The name a MODEL argument goes by: its Hub repo's name (for a Hub id or a cache snapshot), else its folder's."""
    folder, hub, _ = resolve_model(path)
    return hub.name if hub is not None else folder.resolve().name


#: where the Hub cache is; a library that rewrites these on import (GPTQModel's tokenicer points them at /tmp)
#: would send later lookups, and every child process, to another cache
HUB_ENV = ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE")


@contextmanager
def hub_env_kept():
    """Run the body (an import) and put the Hub cache variables back as they were."""
    saved = {k: os.environ.get(k) for k in HUB_ENV}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

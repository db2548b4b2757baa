"""Find a Hugging Face Hub id on this machine: the local cache first, then (online only) a download.

:func:`from_hub` takes ``org/name`` or ``org/name@revision`` (a branch, tag or full commit hash) and
returns a local snapshot folder.  It looks in the Hugging Face cache (``HF_HUB_CACHE``, default
``$HF_HOME/hub``; branches and tags resolved through ``refs/``) and uses a cached snapshot without
any network call when the caller's check finds weights or a LoRA adapter in it; then, unless
``HF_HUB_OFFLINE=1`` (no network attempt at all) or a quick connection probe of the endpoint
(``HF_ENDPOINT``, through the proxy if one is set) fails, it downloads config, tokenizer, adapter
files and one weight format with :mod:`huggingface_hub`.  Every failure is one
:class:`~rankscope.errors.RankscopeError` line; huggingface_hub's retry warnings are silenced.

What a folder must hold to be opened is :mod:`rankscope.io.checkpoints`' business (it passes that
check in), so this module knows nothing of weight formats beyond the file names it downloads.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import RankscopeError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
"""``org/name`` or ``org/name@revision`` (the revision may hold slashes: ``refs/pr/1``)."""
_HUB_PROBE_TIMEOUT_S = 3.0
"""How long the connectivity probe of the Hub endpoint may take before the Hub counts as unreachable."""
_HUB_META_FILES = ("config.json", "adapter_config.json", "tokenizer*", "vocab*", "merges.txt",
                   "special_tokens_map.json", "*.model")
_HUB_SAFETENSORS_FILES = ("*.safetensors", "*.safetensors.index.json")  # adapter_model.safetensors included
_HUB_BIN_FILES = ("pytorch_model*.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
_HUB_CACHE_MARKERS = ("config.json", "adapter_config.json", "model.safetensors", "model.safetensors.index.json",
                      "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.safetensors",
                      "adapter_model.bin")
"""Files of which any one locates a cached snapshot folder (``try_to_load_from_cache`` needs a file name)."""


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Keep huggingface_hub's log lines (retry notices, "No files matched") and warnings off stderr."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: never touch the network."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def _hub_cache_dir() -> str:
    """The Hugging Face hub cache huggingface_hub uses (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` in the local Hugging Face cache, or None.

    Uses huggingface_hub's own lookup (``try_to_load_from_cache``): a branch or tag is resolved through
    ``refs/<revision>``, a commit hash names ``snapshots/<hash>`` directly; no network call.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in _HUB_CACHE_MARKERS:
        try:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=_hub_cache_dir(), revision=revision)
        except Exception:  # an id huggingface_hub rejects: not in the cache either
            return None
        if isinstance(hit, str):
            return Path(hit).parent.absolute()
    return None


def _hub_unreachable() -> str | None:
    """Probe the Hub endpoint (or the proxy in front of it) with a short TCP connect; the reason it failed, or None.

    Runs in a daemon thread so that a hanging DNS lookup cannot hold the caller past the timeout.
    """
    from huggingface_hub import constants

    endpoint = urllib.parse.urlsplit(str(constants.ENDPOINT))
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if not host:
        return None  # an endpoint we cannot probe: let huggingface_hub try
    proxies = urllib.request.getproxies()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.hostname:
            host, port = parts.hostname, parts.port or (1080 if parts.scheme.startswith("socks") else 80)
    outcome: dict[str, BaseException | None] = {}

    def probe() -> None:
        try:
            connection = socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S)
            if connection is not None:
                connection.close()
            outcome["error"] = None
        except Exception as exc:  # noqa: BLE001  (any failure means: unreachable)
            outcome["error"] = exc

    thread = threading.Thread(target=probe, name="rankscope-hub-probe", daemon=True)
    thread.start()
    thread.join(_HUB_PROBE_TIMEOUT_S + 0.5)
    if "error" not in outcome:
        return f"no answer from {host}:{port} within {_HUB_PROBE_TIMEOUT_S:g} s"
    error = outcome["error"]
    if error is None:
        return None
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"cannot connect to {host}:{port}: {reason}"


def _hub_files(names: list[str]) -> list[str]:
    """The files of a Hub repo rankscope needs: top-level config, tokenizer and adapter files, one weight format."""
    top = [n for n in names if "/" not in n]
    weights = _HUB_SAFETENSORS_FILES if any(n.endswith(".safetensors") for n in top) else _HUB_BIN_FILES
    wanted = [n for n in top if any(fnmatch.fnmatchcase(n, p) for p in weights)]
    if not wanted:
        return []
    return sorted(set(wanted) | {n for n in top if any(fnmatch.fnmatchcase(n, p) for p in _HUB_META_FILES)})


def _download(repo: str) -> Path:
    """Fetch weights, config, tokenizer and adapter files of a Hub repo; one clear line when that fails."""
    repo_id, _, revision = repo.partition("@")
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        with _quiet_hub():
            names = list_repo_files(repo_id, revision=revision or None)
            files = _hub_files(names)
            if not files:
                raise RankscopeError(
                    f"'{repo}' on the Hugging Face Hub holds no weights rankscope can read (looked for top-level "
                    "*.safetensors, pytorch_model*.bin and adapter_model.bin)"
                )
            return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=files))
    except RankscopeError:
        raise
    except Exception as exc:  # network, auth, missing repo or revision
        kinds = {c.__name__ for c in type(exc).__mro__}
        if "RevisionNotFoundError" in kinds:
            reason = f"revision '{revision}' not found"
        elif "GatedRepoError" in kinds:
            reason = "the repository is gated: accept its terms on the Hub and log in with `hf auth login`"
        elif "RepositoryNotFoundError" in kinds:
            reason = "repository not found, or private: log in with `hf auth login`"
        else:
            text = str(exc).strip()
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise RankscopeError(
            f"'{repo}' is not a local path and could not be fetched from the Hugging Face Hub ({reason})"
        ) from exc


def from_hub(text: str, problem_of: Callable[[Path], str | None]) -> Path:
    """The local folder of the Hub id ``text`` (``org/name[@revision]``): the cache first, then (online only) the Hub.

    ``problem_of(folder)`` says why a cached snapshot cannot be opened (no weights, a missing shard), or
    None: a usable snapshot is returned without any network call; see the module docstring for the rest.
    """
    repo_id, _, revision = text.partition("@")
    at = f" at revision '{revision}'" if revision else ""
    with _quiet_hub():
        cache = _hub_cache_dir()
        snapshot = _cached_snapshot(repo_id, revision or None)
        problem = problem_of(snapshot) if snapshot is not None else None
        if snapshot is not None and problem is None:
            return snapshot
        if _hub_offline():
            if snapshot is not None:
                raise RankscopeError(
                    f"'{text}': the cached snapshot {snapshot} is incomplete and HF_HUB_OFFLINE is set, so the Hub "
                    f"was not contacted ({problem})"
                )
            raise RankscopeError(
                f"'{text}' is not a local path and not in the Hugging Face cache ({cache}){at}; HF_HUB_OFFLINE is "
                "set, so the Hub was not contacted"
            )
        unreachable = _hub_unreachable()
        if unreachable:
            where = "incomplete in" if snapshot is not None else "not in"
            raise RankscopeError(
                f"'{text}' is not a local path, {where} the Hugging Face cache ({cache}){at}, and the Hub is "
                f"unreachable ({unreachable})"
            )
    return _download(text)

"""A watch-fed cache of one resource (client-go's informer, in small).

One LIST at start (in pages, when asked), then a WATCH from its resourceVersion, with bookmarks;
the LIST is repeated only when the API server says the watch's resourceVersion is too old (410
Gone) or the connection fails. Reads come from memory, so a pass over a thousand objects costs no
request. A metadata-only informer asks for PartialObjectMetadata (what client-go's metadata
informers do), and `keep` trims what is stored: the operator holds a label map per Node, not the
Node's status, images and managedFields.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import api

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Obj = dict[str, Any]
WATCH_SECONDS = 300    # the server ends each watch after this; the next one resumes where it stopped
RETRY_SECONDS = 2.0


def key_of(obj: Obj) -> Key:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


class Informer:
    """Keeps `objects` in sync with the collection at `url` (an `api.path`), filtered by `query` (its
    labelSelector or fieldSelector); calls `on_change(key, old, new)` from its thread (new is None when
    the object was deleted). `page_size` lists in pages of that many objects (the server's `limit`), so a
    listing of thousands is never one document; `metadata_only` asks for the objects' metadata alone;
    `keep(obj)` is what is stored of each (its metadata.resourceVersion kept)."""

    def __init__(self, name: str, kube: api.Kube, url: str,
                 on_change: Callable[[Key, Obj | None, Obj | None], None], query: dict[str, str] | None = None,
                 page_size: int | None = None, metadata_only: bool = False, keep: Callable[[Obj], Obj] = lambda o: o):
        self.name = name
        self._kube, self._url, self._query = kube, url, dict(query or {})
        self._on_change = on_change
        self._page_size, self._keep = page_size, keep
        self._accept = (api.METADATA_LIST, api.METADATA_WATCH) if metadata_only else (api.JSON, api.JSON)
        self.objects: dict[Key, Obj] = {}
        self.synced = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer {name}", daemon=True)

    def start(self) -> "Informer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._relist_and_watch()
            except api.ApiError as e:
                if e.status != 410:
                    log.warning("%s: %s %s; listing again in %.0fs", self.name, e.status, e.reason, RETRY_SECONDS)
                    time.sleep(RETRY_SECONDS)
            except Exception as e:  # a dropped connection, a proxy timeout: start over
                log.warning("%s: watch failed (%s); listing again in %.0fs", self.name, e, RETRY_SECONDS)
                time.sleep(RETRY_SECONDS)

    def _list(self) -> tuple[dict[Key, Obj], str]:
        """Every object (what `keep` keeps of it) and the listing's resourceVersion, page by page."""
        query = {**self._query, **({"limit": str(self._page_size)} if self._page_size else {})}
        fresh: dict[Key, Obj] = {}
        while True:
            doc = self._kube.get(self._url, query, accept=self._accept[0])
            for item in doc.get("items") or []:
                fresh[key_of(item)] = self._keep(item)
            token = doc["metadata"].get("continue")
            if not token:  # a token that expired meanwhile is a 410: listed again from the start
                return fresh, doc["metadata"]["resourceVersion"]
            query["continue"] = token

    def _relist_and_watch(self) -> None:
        fresh, version = self._list()
        for key in set(self.objects) - set(fresh):
            self._apply(key, None)
        for key, item in fresh.items():
            self._apply(key, item)
        self.synced.set()
        while not self._stopping.is_set():
            for event in self._kube.watch(self._url, version, WATCH_SECONDS, self._query, accept=self._accept[1]):
                if self._stopping.is_set():
                    return
                obj = event["object"]
                if event["type"] == "ERROR":
                    raise api.ApiError(status=obj.get("code"), reason=obj.get("message"))
                version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                self._apply(key_of(obj), None if event["type"] == "DELETED" else self._keep(obj))

    def _apply(self, key: Key, new: Obj | None) -> None:
        old = self.objects.get(key)
        if new is None:
            self.objects.pop(key, None)
        else:
            if old is not None and old["metadata"].get("resourceVersion") == new["metadata"].get("resourceVersion"):
                return
            self.objects[key] = new
        if old is not None or new is not None:
            self._on_change(key, old, new)

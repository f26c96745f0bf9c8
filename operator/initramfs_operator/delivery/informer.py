"""A watch-fed cache of one resource (client-go's informer, in small).

One LIST at start, then a WATCH from its resourceVersion, with bookmarks; the LIST is repeated
only when the API server says the watch's resourceVersion is too old (410 Gone) or the
connection fails. Reads come from memory, so a pass over a thousand objects costs no request.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..kube import api

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
    the object was deleted)."""

    def __init__(self, name: str, kube: api.Kube, url: str,
                 on_change: Callable[[Key, Obj | None, Obj | None], None], query: dict[str, str] | None = None):
        self.name = name
        self._kube, self._url, self._query = kube, url, dict(query or {})
        self._on_change = on_change
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

    def _relist_and_watch(self) -> None:
        doc = self._kube.get(self._url, self._query)
        version = doc["metadata"]["resourceVersion"]
        fresh = {key_of(item): item for item in doc.get("items") or []}
        for key in set(self.objects) - set(fresh):
            self._apply(key, None)
        for key, item in fresh.items():
            self._apply(key, item)
        self.synced.set()
        while not self._stopping.is_set():
            for event in self._kube.watch(self._url, version, WATCH_SECONDS, self._query):
                if self._stopping.is_set():
                    return
                obj = event["object"]
                if event["type"] == "ERROR":
                    raise api.ApiError(status=obj.get("code"), reason=obj.get("message"))
                version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                self._apply(key_of(obj), None if event["type"] == "DELETED" else obj)

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

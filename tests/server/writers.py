"""Several writers on one log at once, from threads: the two-sequencer tests
(test_integrity_process.py, two ``tlog serve`` on one LMDB store with the lock bypassed;
test_pg_frontends.py, two frontends on one PostgreSQL database)."""

from __future__ import annotations

import threading

import httpx

__all__ = ["Writers"]


class Writers:
    """What the writers were told: each acknowledged (index, entry), every checkpoint they
    were handed, every status. Record what a test writes itself with :meth:`acked_one`."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.acked: list[tuple[int, bytes]] = []
        self.notes: list[str] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()

    def write(self, url: str, tag: str, n: int) -> None:
        """``n`` rounds against ``url``: a batch of five every third, else one entry, and the
        checkpoint read every tenth."""
        # 30 s: a slow answer on a loaded CI machine must not end the thread (ReadTimeout).
        auth = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=url, headers=auth, timeout=30) as c:
            for i in range(n):
                if i % 3 == 0:
                    batch = [f"{tag}-{i}-{j}".encode() for j in range(5)]
                    body = b"".join(len(e).to_bytes(2, "big") + e for e in batch)
                    r = c.post("/v1/entries/batch", content=body)
                    with self.lock:
                        self.statuses.append(r.status_code)
                        if r.status_code == 200:
                            d = r.json()
                            self.acked.extend(zip(d["indices"], batch, strict=True))
                            self.notes.append(d["checkpoint"])
                else:
                    e = f"{tag}-{i}".encode()
                    r = c.post("/v1/entries", content=e)
                    with self.lock:
                        self.statuses.append(r.status_code)
                        if r.status_code == 200:
                            self.acked_one(r.json(), e)
                if i % 10 == 0:
                    cp = c.get("/checkpoint")
                    with self.lock:
                        self.notes.append(cp.text)

    def acked_one(self, answer: dict[str, object], entry: bytes) -> None:
        """Record one ``POST /v1/entries`` answer (its index and checkpoint) for ``entry``."""
        index, note = answer["index"], answer["checkpoint"]
        assert isinstance(index, int) and isinstance(note, str)
        self.acked.append((index, entry))
        self.notes.append(note)

    def run(self, urls: list[str], rounds: int, join: float, per_url: int = 2) -> None:
        """``per_url`` threads per URL, ``rounds`` rounds each, all at once; each must end
        within ``join`` seconds."""
        threads = [
            threading.Thread(target=self.write, args=(url, f"{chr(97 + u)}{k}", rounds))
            for u, url in enumerate(urls)
            for k in range(per_url)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(join)
            assert not t.is_alive()

"""How the historian's writer talks to InfluxDB: one transport per API.

- :class:`V1Transport`: ``POST /write?db=&rp=&precision=ns`` over httpx (InfluxDB 1.x,
  and the v1 compatibility API of 2.x/3.x); can create a missing database.
- :class:`V2Transport`: influxdb-client's write API (2.x/3.x), run in a thread of its
  own, with the client's retries off.

A transport makes one request and says what the server answered (:class:`Reply`);
retrying, backing off and splitting rejected bodies are the writer's business
(gateway/historian/writer.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from dataclasses import dataclass

import httpx

from gateway.core.config import InfluxSection


@dataclass(slots=True)
class Reply:
    """What the server said to one write: status 0 means no answer (connection, timeout)."""

    status: int
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (200, 204)


def _error_text(text: str) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(doc, dict):
        return str(doc.get("error") or doc.get("message") or text).strip()[:500]
    return text.strip()[:500]


class V1Transport:
    """``POST /write?db=&rp=&precision=ns`` (InfluxDB 1.x; 2.x/3.x v1 compatibility)."""

    def __init__(self, section: InfluxSection, *, password: str | None, token: str | None):
        self.section = section
        headers = {"User-Agent": "safegw-historian"}
        if token:
            headers["Authorization"] = f"Token {token}"
        auth = httpx.BasicAuth(section.username, password or "") if section.username and not token else None
        timeout = httpx.Timeout(section.timeout, connect=min(section.timeout, 5.0))
        self.client = httpx.AsyncClient(base_url=section.url.rstrip("/"), headers=headers, auth=auth,
                                        timeout=timeout)
        self.params = {"db": section.database, "precision": "ns"}
        if section.retention_policy:
            self.params["rp"] = section.retention_policy
        self.long_params = dict(self.params)
        if section.long_retention_policy:
            self.long_params["rp"] = section.long_retention_policy

    async def write(self, body: bytes, gzipped: bool, long: bool = False) -> Reply:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        try:
            params = self.long_params if long else self.params
            r = await self.client.post("/write", params=params, content=body, headers=headers)
        except httpx.TimeoutException as e:
            return Reply(0, f"timeout: {type(e).__name__}")
        except httpx.HTTPError as e:
            return Reply(0, f"{type(e).__name__}: {e}")
        return Reply(r.status_code, "" if r.status_code in (200, 204) else _error_text(r.text))

    async def create_database(self) -> Reply:
        q = f'CREATE DATABASE "{self.section.database}"'
        try:
            r = await self.client.post("/query", params={"q": q})
        except httpx.HTTPError as e:
            return Reply(0, f"{type(e).__name__}: {e}")
        if r.status_code != 200:
            return Reply(r.status_code, _error_text(r.text))
        try:
            results = r.json().get("results", [])
        except ValueError:
            return Reply(500, r.text[:200])
        for res in results:
            if "error" in res:
                return Reply(403, str(res["error"]))
        return Reply(200)

    async def close(self) -> None:
        await self.client.aclose()


class V2Transport:
    """influxdb-client's write API (InfluxDB 2.x/3.x: ``/api/v2/write``), run in a thread.

    The client's own retries are off: the writer decides about retries and splitting."""

    def __init__(self, section: InfluxSection, *, token: str):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.section = section
        self.bucket = section.bucket or ""
        self.long_bucket = section.long_bucket or self.bucket
        self.org = section.org or ""
        self.client = InfluxDBClient(url=section.url, token=token, org=self.org,
                                     timeout=int(section.timeout * 1000), enable_gzip=section.gzip,
                                     retries=False)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="influx-v2")

    def _write(self, body: bytes, long: bool) -> Reply:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            self.api.write(bucket=self.long_bucket if long else self.bucket, org=self.org, record=body,
                           write_precision=WritePrecision.NS)  # type: ignore[arg-type]
        except ApiException as e:
            return Reply(int(e.status or 0), _error_text(e.body or e.reason or ""))
        except (Urllib3Error, OSError) as e:
            return Reply(0, f"{type(e).__name__}: {e}")
        return Reply(204)

    async def write(self, body: bytes, gzipped: bool, long: bool = False) -> Reply:
        # the client compresses itself (enable_gzip), so it gets the plain body
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._write, body, long)

    async def create_database(self) -> Reply:
        return Reply(404, f"bucket {self.section.bucket!r} not found in org {self.section.org!r}")

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.client.close)
        self._pool.shutdown(wait=False)

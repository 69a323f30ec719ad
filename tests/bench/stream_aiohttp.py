"""The streaming bench's Python peer: aiohttp on uvloop reading the same chat event streams,
decoding every chunk with json.loads, as a typical async Python client does.

    python3 stream_aiohttp.py URL MODEL N CONCURRENCY EVENTS

Prints: streams= failures= events= wall_s= cpu_us_per_event=
Exits 3 when aiohttp or uvloop is missing (the bench then skips this row)."""
import asyncio
import json
import resource
import sys
import time

try:
    import aiohttp
    import uvloop
except ImportError:
    sys.exit(3)


def cpu_us():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1e6


async def one(session, url, body, want):
    events = 0
    async with session.post(url, data=body, headers={
            "Authorization": "Bearer sk-bench-py", "Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            return 0, False
        async for line in resp.content:
            if line.startswith(b"data: "):
                events += 1
                data = line[6:].strip()
                if data != b"[DONE]":
                    json.loads(data)
    return events, events == want


async def main(url, model, n, conc, want):
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": "bench"}]})
    sem = asyncio.Semaphore(conc)
    conn = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def task():
            async with sem:
                return await one(session, url, body, want)
        t0, c0 = time.monotonic(), cpu_us()
        results = await asyncio.gather(*(task() for _ in range(n)))
        wall, cpu = time.monotonic() - t0, cpu_us() - c0
    events = sum(e for e, _ in results)
    failures = sum(1 for _, ok in results if not ok)
    print("streams=%d failures=%d events=%d wall_s=%.3f cpu_us_per_event=%.3f"
          % (n, failures, events, wall, cpu / max(events, 1)))
    return 1 if failures else 0


if __name__ == "__main__":
    u, m, n, c, w = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    uvloop.install()
    sys.exit(asyncio.run(main(u, m, n, c, w)))

"""The chat bench's Python peer: aiohttp on uvloop sending the same non-streaming chats as
llmux and the floor, encoding each body with json.dumps and decoding each answer with
json.loads, as a typical async Python client does. It tells the bench's floor apart from the
one behind the issue's peer ratios (aiohttp+uvloop 5.4x the floor).

    python3 chat_aiohttp.py URL N CONCURRENCY

URL is the full .../chat/completions address. Prints:
    requests= failures= wall_s= cpu_us_per_req= peak_rss_kib=
Exits 3 when aiohttp or uvloop is missing (the bench then skips this row), 1 on failures."""
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

WARM = 500   # requests before the measured loop: connections open, code paths warm


def cpu_us():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1e6


async def main(url, n, conc):
    sem = asyncio.Semaphore(conc)
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        async def one(i):
            item = "q%d" % i
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": item}]})
            async with sem:
                async with session.post(url, data=body, headers=headers) as resp:
                    if resp.status != 200:
                        return False
                    res = json.loads(await resp.read())
            try:
                return res["choices"][0]["message"]["content"] == "echo: " + item
            except (KeyError, IndexError, TypeError):
                return False

        await asyncio.gather(*(one(i) for i in range(min(WARM, n))))
        t0, c0 = time.monotonic(), cpu_us()
        results = await asyncio.gather(*(one(i) for i in range(n)))
        wall, cpu = time.monotonic() - t0, cpu_us() - c0
    failures = results.count(False)
    print("requests=%d failures=%d wall_s=%.3f cpu_us_per_req=%.2f peak_rss_kib=%d"
          % (n, failures, wall, cpu / n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    return 1 if failures else 0


if __name__ == "__main__":
    uvloop.install()
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))

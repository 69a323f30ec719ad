/* Raw throughput of the SSE parser (src/sse.c) on OpenAI-style chat-chunk events.
 *
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Isrc tests/bench/sse_bench.c src/sse.c src/buf.c \
 *     -o build/bench/sse_bench && build/bench/sse_bench
 *
 * Builds about 100 MB (SSE_BENCH_MB) of `data: {...chat.completion.chunk...}\n\n` events with
 * varying tokens, ends them with `data: [DONE]`, then feeds the whole stream in 4 KiB slices
 * (as a socket would hand it over) SSE_BENCH_ROUNDS times (5). Each round must see every event
 * with the exact data bytes, or the program fails. Prints the best round as
 * `sse_parse_gbps=X events=N` (key=value for scripts) and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "sse.h"

#define SLICE 4096

typedef struct {
  uint64_t events, data_bytes, sum;
} Count;

static int count_event(void *ud, const lmx_SSEEvent *ev) {
  Count *c = ud;
  c->events++;
  c->data_bytes += ev->data_len;
  /* touch the data the way a consumer would look at it, so nothing is optimised away */
  c->sum += (unsigned char)ev->data[ev->data_len / 2];
  return 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t env_size(const char *name, size_t dflt) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  long n = strtol(v, NULL, 10);
  if (n < 1) {
    fprintf(stderr, "sse_bench: %s must be an integer >= 1\n", name);
    exit(2);
  }
  return (size_t)n;
}

int main(void) {
  static const char *const toks[] = { "Hello", " world", ",", " the", " quick", " brown",
    " fox", " jumps", " over", " lazy", " dog", ".", "\\n", " \\\"quoted\\\"", " caf\\u00e9",
    " 42", " streaming", " tokens" };
  size_t target = env_size("SSE_BENCH_MB", 100) * 1000 * 1000;
  size_t rounds = env_size("SSE_BENCH_ROUNDS", 5);
  size_t cap = target + 4096, n = 0, r;
  uint64_t want_events = 0, want_bytes = 0;
  char *buf = malloc(cap);
  double best = 0;
  Count c = { 0, 0, 0 };
  if (!buf) return perror("malloc"), 1;

  while (n < target) {
    char line[512];
    int len = snprintf(line, sizeof line,
      "data: {\"id\":\"chatcmpl-9x%08lluAbCdEfGhIjKlMn\",\"object\":\"chat.completion.chunk\","
      "\"created\":%llu,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":"
      "\"fp_0ba0d124f1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s\"},"
      "\"logprobs\":null,\"finish_reason\":null}]}\n\n",
      (unsigned long long)(want_events / 300), 1718000000ull + want_events / 50,
      toks[want_events % (sizeof toks / sizeof *toks)]);
    memcpy(buf + n, line, (size_t)len);
    n += (size_t)len;
    want_events++;
    want_bytes += (uint64_t)len - 8;   /* minus "data: " and the two LFs */
  }
  memcpy(buf + n, "data: [DONE]\n\n", 14);
  n += 14;
  want_events++;
  want_bytes += 6;

  for (r = 0; r < rounds; r++) {
    lmx_SSE p;
    size_t off;
    double t0, dt;
    lmx_sse_init(&p, 0);
    memset(&c, 0, sizeof c);
    t0 = now();
    for (off = 0; off < n; off += SLICE) {
      size_t len = n - off < SLICE ? n - off : SLICE;
      int rc = lmx_sse_feed(&p, buf + off, len, NULL, count_event, &c);
      if (rc != LMX_SSE_OK) {
        fprintf(stderr, "sse_bench: feed failed (%d): %s\n", rc, lmx_sse_error(&p));
        return 1;
      }
    }
    if (lmx_sse_finish(&p) != LMX_SSE_OK) {
      fprintf(stderr, "sse_bench: stream did not end on an event boundary\n");
      return 1;
    }
    dt = now() - t0;
    if (c.events != want_events || c.data_bytes != want_bytes) {
      fprintf(stderr, "sse_bench: got %llu events / %llu data bytes, want %llu / %llu\n",
              (unsigned long long)c.events, (unsigned long long)c.data_bytes,
              (unsigned long long)want_events, (unsigned long long)want_bytes);
      return 1;
    }
    if ((double)n / dt / 1e9 > best) best = (double)n / dt / 1e9;
  }
  printf("sse_parse_gbps=%.2f events=%llu bytes=%zu slice=%d rounds=%zu checksum=%llu\n", best,
         (unsigned long long)c.events, n, SLICE, rounds, (unsigned long long)c.sum);
  free(buf);
  return 0;
}

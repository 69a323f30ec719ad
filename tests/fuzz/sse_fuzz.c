/* libFuzzer target for the SSE parser (src/sse.c), pure C.
 *
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=undefined -Isrc tests/fuzz/sse_fuzz.c src/sse.c src/buf.c \
 *     -o build/fuzz/sse_fuzz
 *   mkdir -p build/fuzz/sse_corpus && build/fuzz/sse_fuzz -dict=tests/fuzz/sse.dict \
 *     -max_total_time=60 build/fuzz/sse_corpus
 *
 * The first input byte picks max_bytes (odd: 1..128, so the limits fire; even: the default),
 * the rest is the stream. It is parsed four ways: at once; byte by byte; in slices whose
 * sizes come from a PRNG seeded by the input; and at once again with a callback that stops
 * after some events, resuming at *used each time. Every way must log the same events, the
 * same final status and message, retry, comment and event counts, and finish result. Each
 * slice is copied into its own exact-size allocation that is freed right after its feed, so
 * ASan catches a read past a chunk and any pointer the parser kept into one. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "sse.h"

typedef struct {
  lmx_Buf log;
  unsigned stop_every, seen;   /* stop after every stop_every-th event; 0: never */
} Trace;

static void put(lmx_Buf *b, const void *p, size_t n) {
  if (lmx_buf_append(b, p, n) < 0) abort();
}

/* A field in the log: presence, length, bytes, so no two different events log alike. */
static void put_field(lmx_Buf *b, const char *p, size_t n) {
  char present = p != NULL;
  put(b, &present, 1);
  put(b, &n, sizeof n);
  if (n) put(b, p, n);
}

static int on_event(void *ud, const lmx_SSEEvent *ev) {
  Trace *t = ud;
  if (!ev->data) abort();
  if ((ev->event != NULL) != (ev->event_len > 0) || (ev->id != NULL) != (ev->id_len > 0))
    abort();
  put(&t->log, "E", 1);
  put_field(&t->log, ev->data, ev->data_len);
  put_field(&t->log, ev->event, ev->event_len);
  put_field(&t->log, ev->id, ev->id_len);
  t->seen++;
  return t->stop_every && t->seen % t->stop_every == 0;
}

/* Feeds one slice from its own allocation; on STOPPED resumes where the parser stopped. */
static int feed_slice(lmx_SSE *p, const uint8_t *data, size_t len, Trace *t) {
  char *copy = malloc(len ? len : 1);
  size_t off = 0, used;
  int rc;
  if (!copy) abort();
  memcpy(copy, data, len);
  for (;;) {
    rc = lmx_sse_feed(p, copy + off, len - off, &used, on_event, t);
    if (used > len - off) abort();
    if (rc != LMX_SSE_STOPPED) break;
    if (used == 0) abort();   /* a stop always follows a blank line: progress is certain */
    off += used;
  }
  if (rc == LMX_SSE_OK && used != len - off) abort();
  free(copy);
  return rc;
}

/* Logs the parser's end state and finishes it. */
static void end(lmx_SSE *p, Trace *t, int rc) {
  const char *err = lmx_sse_error(p);
  int64_t retry = p->retry;
  uint64_t counts[2] = { p->comments, p->dispatched };
  if ((rc == LMX_SSE_OK) != (err == NULL)) abort();
  put(&t->log, "S", 1);
  put(&t->log, &rc, sizeof rc);
  put_field(&t->log, err, err ? strlen(err) : 0);
  put(&t->log, &retry, sizeof retry);
  put(&t->log, counts, sizeof counts);
  rc = lmx_sse_finish(p);
  put(&t->log, &rc, sizeof rc);
  if (rc == LMX_SSE_FINISHED) abort();
  /* finished (or failed) for good; the buffers are gone */
  if (lmx_sse_feed(p, "data: x\n\n", 9, NULL, on_event, t) == LMX_SSE_OK) abort();
  if (lmx_sse_finish(p) == LMX_SSE_OK) abort();
  if (p->line.p || p->data.p || p->event.p || p->id.p) abort();
  lmx_sse_free(p);
}

static uint64_t next(uint64_t *s) {   /* splitmix64 */
  uint64_t z = (*s += 0x9E3779B97F4A7C15u);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  return z ^ (z >> 31);
}

/* mode 0: at once; 1: byte by byte; 2: PRNG slices (0..2*span bytes, empty ones too);
 * 3: at once, stopping after every stop-th event. */
static void parse(const uint8_t *s, size_t n, size_t maxb, int mode, uint64_t seed, Trace *t) {
  lmx_SSE p;
  size_t off = 0;
  int rc = LMX_SSE_OK;
  unsigned span = 1 + (unsigned)(seed % 64);
  lmx_sse_init(&p, maxb);
  t->log.n = 0;
  t->seen = 0;
  t->stop_every = mode == 3 ? 1 + (unsigned)(seed % 3) : 0;
  if (mode == 0 || mode == 3) {
    rc = feed_slice(&p, s, n, t);
  } else {
    while (off < n && rc == LMX_SSE_OK) {
      size_t k = mode == 1 ? 1 : (size_t)(next(&seed) % (2 * span + 1));
      if (k > n - off) k = n - off;
      rc = feed_slice(&p, s + off, k, t);
      off += k;
    }
  }
  end(&p, t, rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static Trace ref, got;
  uint64_t seed = 0x5EED;
  size_t maxb = 0, i;
  int mode;
  if (size == 0) return 0;
  if (data[0] & 1) maxb = 1 + (data[0] >> 1);
  data++, size--;
  for (i = 0; i < size; i++) seed = (seed ^ data[i]) * 0x100000001B3u;   /* FNV-1a */

  parse(data, size, maxb, 0, seed, &ref);
  for (mode = 1; mode <= 3; mode++) {
    parse(data, size, maxb, mode, seed, &got);
    if (got.log.n != ref.log.n || memcmp(got.log.p, ref.log.p, ref.log.n) != 0) abort();
  }
  return 0;
}

/* Incremental Server-Sent Events parser: the "event stream interpretation" of the WHATWG HTML
 * standard (section 9.2.6), byte for byte. Pure C, no Lua header, so it can be fuzzed,
 * benchmarked and embedded in a Request.
 *
 * Usage: lmx_sse_init once, lmx_sse_feed for every chunk as it arrives (any split, down to one
 * byte), lmx_sse_finish at end of stream, lmx_sse_free to release the buffers. The callback
 * sees each dispatched event; an lmx_SSEEvent and every pointer in it are only valid during
 * that callback (data may point straight into the buffer being fed), so copy what you keep.
 * No string is NUL-terminated: data may hold NUL bytes.
 *
 * Bytes are not UTF-8 decoded: invalid sequences are passed through as they came, which the
 * JSON decoder downstream rejects anyway. Memory is bounded: a line longer than max_bytes, or
 * an event whose data buffer (every data value plus one LF each) grows past max_bytes, is
 * LMX_SSE_TOOLARGE. The parser then holds at most about four times max_bytes. */
#ifndef LMX_SSE_H
#define LMX_SSE_H
#include <stddef.h>
#include <stdint.h>
#include "buf.h"

#define LMX_SSE_DEFAULT_MAX ((size_t)8 << 20)   /* 8 MiB */

typedef enum {
  LMX_SSE_OK = 0,
  LMX_SSE_STOPPED,    /* feed: the callback returned nonzero; *used bytes were consumed and
                       * feeding the rest (buf + *used) later resumes exactly there */
  LMX_SSE_PARTIAL,    /* finish: the stream ended inside a line or before an event's blank line,
                       * whose bytes were dropped (per spec); a hint that the stream was cut */
  LMX_SSE_TOOLARGE,   /* a line or an event's data exceeded max_bytes; sticky */
  LMX_SSE_NOMEM,      /* malloc failed; sticky (a line may have been lost) */
  LMX_SSE_FINISHED    /* feed or finish after finish: a caller bug, the parser is unchanged */
} lmx_SSEStatus;

typedef struct lmx_SSEEvent {
  const char *data;   /* the data buffer without its final LF; never NULL (may be "" of len 0) */
  size_t data_len;
  const char *event;  /* event type; NULL when empty (the spec's "message") */
  size_t event_len;
  const char *id;     /* last event ID buffer (it persists across events); NULL when empty */
  size_t id_len;
} lmx_SSEEvent;

/* Returns 0 to go on, nonzero to make lmx_sse_feed return LMX_SSE_STOPPED right after this
 * event. It must not call lmx_sse_feed/finish/free on the same parser. */
typedef int (*lmx_SSECallback)(void *ud, const lmx_SSEEvent *ev);

/* Public so a Request can embed it. Callers read the first block; the rest is private. */
typedef struct lmx_SSE {
  uint64_t comments;      /* comment lines seen (keep-alive pings count here, never as events) */
  uint64_t dispatched;    /* events handed to the callback */
  int64_t retry;          /* last valid retry field in ms (saturates at INT64_MAX); -1: never */
  size_t max_bytes;

  int status;             /* LMX_SSE_OK, or the sticky TOOLARGE / NOMEM, or FINISHED */
  int started;            /* past the optional BOM */
  int bom;                /* BOM bytes matched so far while !started */
  int cr;                 /* the last byte consumed was a CR: a leading LF is its other half */
  lmx_Buf line;           /* an unterminated line carried to the next feed */
  lmx_Buf data;           /* the data buffer, once it had to be copied */
  const char *ref;        /* a single data value still inside the chunk being fed (zero copy) */
  size_t ref_len;
  size_t data_len;        /* logical size of the data buffer, LFs included; 0 when empty */
  lmx_Buf event;          /* event type buffer */
  lmx_Buf id;             /* last event ID buffer */
  char err[80];
} lmx_SSE;

/* Allocates nothing, cannot fail. max_bytes 0 means LMX_SSE_DEFAULT_MAX. */
void lmx_sse_init(lmx_SSE *p, size_t max_bytes);

/* Parses len bytes, calling cb (which may be NULL) for each event. Returns an lmx_SSEStatus;
 * *used (when not NULL) gets the bytes consumed: len on LMX_SSE_OK, less on STOPPED, and on
 * an error those before the offending line. The parser keeps no pointer into buf after it
 * returns. Once in an error state every call returns that error at once. */
int lmx_sse_feed(lmx_SSE *p, const char *buf, size_t len, size_t *used, lmx_SSECallback cb,
                 void *ud);

/* End of stream: drops the unterminated line and undispatched event (never dispatched, per
 * spec, hence no callback), frees the buffers and leaves the parser finished (or in its error
 * state, which stays). Returns LMX_SSE_OK, LMX_SSE_PARTIAL when bytes were dropped, the sticky
 * error, or FINISHED when called twice. comments, dispatched and retry stay readable. */
int lmx_sse_finish(lmx_SSE *p);

/* Frees the buffers; the struct may then be dropped or initialised again. Idempotent. */
void lmx_sse_free(lmx_SSE *p);

/* The message of the error state ("line larger than 8388608 bytes", "event data larger than
 * ...", "out of memory"), "parser already finished" after a clean finish, or NULL while the
 * parser is usable. Static or inside p: valid until p changes. */
const char *lmx_sse_error(const lmx_SSE *p);
#endif

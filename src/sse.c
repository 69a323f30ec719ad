/* Incremental SSE parser (see sse.h for the contract).
 *
 * The hot path never copies: complete lines are found in the caller's chunk with memchr ('\n'
 * over the chunk, then '\r' within the line found) and handled where they lie. An event whose
 * only data line is in the chunk is handed to the callback as a pointer into it (p->ref); the
 * data is copied into p->data only when a second data line joins it or the chunk ends before
 * the blank line. Only a line cut by the chunk's end is buffered (p->line). */
#include <stdio.h>
#include <string.h>
#include "sse.h"

static const unsigned char BOM[3] = { 0xEF, 0xBB, 0xBF };

static int fail(lmx_SSE *p, int status, const char *what) {
  p->status = status;
  if (status == LMX_SSE_TOOLARGE)
    snprintf(p->err, sizeof p->err, "%s larger than %zu bytes", what, p->max_bytes);
  else
    snprintf(p->err, sizeof p->err, "out of memory");
  return status;
}

void lmx_sse_init(lmx_SSE *p, size_t max_bytes) {
  memset(p, 0, sizeof *p);
  p->max_bytes = max_bytes ? max_bytes : LMX_SSE_DEFAULT_MAX;
  p->retry = -1;
}

void lmx_sse_free(lmx_SSE *p) {
  lmx_buf_free(&p->line);
  lmx_buf_free(&p->data);
  lmx_buf_free(&p->event);
  lmx_buf_free(&p->id);
  p->ref = NULL;
  p->ref_len = p->data_len = 0;
}

const char *lmx_sse_error(const lmx_SSE *p) {
  if (p->status == LMX_SSE_FINISHED) return "parser already finished";
  return p->status == LMX_SSE_OK ? NULL : p->err;
}

/* Copies a data value still referenced in the input into p->data, because the input is about
 * to go away or another data line joins it. */
static int materialize(lmx_SSE *p) {
  if (!p->ref) return LMX_SSE_OK;
  if (lmx_buf_append(&p->data, p->ref, p->ref_len) < 0 || lmx_buf_append(&p->data, "\n", 1) < 0)
    return fail(p, LMX_SSE_NOMEM, NULL);
  p->ref = NULL;
  return LMX_SSE_OK;
}

/* A data field: appends value + LF to the data buffer. stable is nonzero when v lies in the
 * caller's chunk (it stays valid until feed returns) rather than in p->line. */
static int add_data(lmx_SSE *p, const char *v, size_t n, int stable) {
  if (n >= p->max_bytes - p->data_len)   /* data_len <= max_bytes always: no wrap */
    return fail(p, LMX_SSE_TOOLARGE, "event data");
  if (p->data_len == 0 && stable) {
    p->ref = v;
    p->ref_len = n;
  } else {
    if (materialize(p) != LMX_SSE_OK) return p->status;
    if (lmx_buf_append(&p->data, v, n) < 0 || lmx_buf_append(&p->data, "\n", 1) < 0)
      return fail(p, LMX_SSE_NOMEM, NULL);
  }
  p->data_len += n + 1;
  return LMX_SSE_OK;
}

/* A blank line. Returns nonzero when the callback asked to stop. */
static int dispatch(lmx_SSE *p, lmx_SSECallback cb, void *ud) {
  int stop = 0;
  /* An empty data buffer dispatches nothing (but resets the type), as the WHATWG parser
   * does, except for an "error" event: a provider's "event: error" with no data line must not
   * vanish (OpenAI's and Anthropic's SDKs hand such an event out too). */
  int error_only = !p->data_len && p->event.n == 5 && memcmp(p->event.p, "error", 5) == 0;
  if (p->data_len || error_only) {
    lmx_SSEEvent ev;
    ev.data = error_only ? "" : p->ref ? p->ref : p->data.p;
    ev.data_len = error_only ? 0 : p->data_len - 1;   /* the final LF goes */
    ev.event = p->event.n ? p->event.p : NULL;
    ev.event_len = p->event.n;
    ev.id = p->id.n ? p->id.p : NULL;
    ev.id_len = p->id.n;
    p->dispatched++;
    if (cb) stop = cb(ud, &ev);
    p->ref = NULL;
    p->data.n = 0;
    p->data_len = 0;
  }
  p->event.n = 0;
  return stop;
}

static int set_buf(lmx_SSE *p, lmx_Buf *b, const char *v, size_t n) {
  b->n = 0;
  if (lmx_buf_append(b, v, n) < 0) return fail(p, LMX_SSE_NOMEM, NULL);
  return LMX_SSE_OK;
}

/* One complete line, terminator excluded, n <= max_bytes already checked. Returns an
 * lmx_SSEStatus (STOPPED when the callback said so). */
static int line(lmx_SSE *p, const char *l, size_t n, int stable, lmx_SSECallback cb, void *ud) {
  const char *colon, *v;
  size_t fn, vn;
  if (n == 0) return dispatch(p, cb, ud) ? LMX_SSE_STOPPED : LMX_SSE_OK;
  if (n >= 5 && memcmp(l, "data:", 5) == 0) {   /* the line nearly every event is made of */
    v = l + 5;
    vn = n - 5;
    if (vn && *v == ' ') v++, vn--;
    return add_data(p, v, vn, stable);
  }
  if (l[0] == ':') {
    p->comments++;
    return LMX_SSE_OK;
  }
  colon = memchr(l, ':', n);
  if (colon) {
    fn = (size_t)(colon - l);
    v = colon + 1;
    vn = n - fn - 1;
    if (vn && *v == ' ') v++, vn--;
  } else {   /* the whole line is the field name, the value is empty */
    fn = n;
    v = l + n;
    vn = 0;
  }
  switch (fn) {
    case 4:
      if (memcmp(l, "data", 4) == 0) return add_data(p, v, vn, stable);
      break;
    case 5:
      if (memcmp(l, "event", 5) == 0) return set_buf(p, &p->event, v, vn);
      if (memcmp(l, "retry", 5) == 0 && vn > 0) {
        int64_t r = 0;
        size_t i;
        for (i = 0; i < vn; i++) {
          unsigned d = (unsigned char)v[i] - '0';
          if (d > 9) return LMX_SSE_OK;   /* not all ASCII digits: ignored */
          r = r > (INT64_MAX - 9) / 10 ? INT64_MAX : r * 10 + d;
        }
        p->retry = r;
      }
      break;
    case 2:
      /* an id containing NUL is ignored; the buffer persists across events */
      if (memcmp(l, "id", 2) == 0 && !memchr(v, '\0', vn)) return set_buf(p, &p->id, v, vn);
      break;
  }
  return LMX_SSE_OK;   /* unknown fields are ignored */
}

/* Adds s[0..n) to the unterminated line, within the limit. */
static int carry(lmx_SSE *p, const char *s, size_t n) {
  if (n > p->max_bytes - p->line.n) return fail(p, LMX_SSE_TOOLARGE, "line");
  if (lmx_buf_append(&p->line, s, n) < 0) return fail(p, LMX_SSE_NOMEM, NULL);
  return LMX_SSE_OK;
}

/* Finds the end of the line starting at s: sets *le to its terminator (or NULL when the chunk
 * ends first) and returns where the next line starts. *nl caches the chunk's next LF so a run
 * of CR-only lines does not rescan the chunk for LF once per line (which would be quadratic);
 * it is NULL when there is no LF from s on. A CR that is the chunk's last byte ends its line
 * and sets p->cr, so an LF opening the next chunk completes the CRLF instead of making a
 * blank line. */
static const char *line_end(lmx_SSE *p, const char *s, const char *end, const char **nl,
                            const char **le) {
  const char *lim, *cr;
  if (*nl && *nl < s) *nl = memchr(s, '\n', (size_t)(end - s));
  lim = *nl ? *nl : end;
  cr = memchr(s, '\r', (size_t)(lim - s));
  if (cr) {
    *le = cr;
    if (cr + 1 == end) {
      p->cr = 1;
      return end;
    }
    return cr[1] == '\n' ? cr + 2 : cr + 1;
  }
  *le = *nl;
  return *nl ? *nl + 1 : end;
}

int lmx_sse_feed(lmx_SSE *p, const char *buf, size_t len, size_t *used, lmx_SSECallback cb,
                 void *ud) {
  const char *s = buf, *end = buf + len, *nl, *le, *next;
  int rc = LMX_SSE_OK;
  if (used) *used = 0;
  if (p->status != LMX_SSE_OK) return p->status;
  if (len == 0) return LMX_SSE_OK;

  /* An optional BOM opens the stream, maybe split across feeds. A prefix of it that turns out
   * not to be one is ordinary line bytes. */
  while (!p->started && s < end) {
    if ((unsigned char)*s == BOM[p->bom]) {
      s++;
      if (++p->bom == 3) p->started = 1;
    } else {
      p->started = 1;
      if (p->bom && carry(p, (const char *)BOM, (size_t)p->bom) != LMX_SSE_OK) goto out;
    }
  }
  if (p->cr && s < end) {
    p->cr = 0;
    if (*s == '\n') s++;
  }

  nl = s < end ? memchr(s, '\n', (size_t)(end - s)) : NULL;
  if (p->line.n && s < end) {   /* finish the line the last chunk cut */
    next = line_end(p, s, end, &nl, &le);
    if (!le) {
      if (carry(p, s, (size_t)(end - s)) == LMX_SSE_OK) s = end;
      goto out;
    }
    if (carry(p, s, (size_t)(le - s)) != LMX_SSE_OK) goto out;
    rc = line(p, p->line.p, p->line.n, 0, cb, ud);
    p->line.n = 0;
    if (rc != LMX_SSE_OK) {
      if (rc == LMX_SSE_STOPPED) s = next;
      goto out;
    }
    s = next;
  }

  while (s < end) {
    next = line_end(p, s, end, &nl, &le);
    if (!le) {   /* cut by the chunk's end: carried to the next feed */
      if (carry(p, s, (size_t)(end - s)) == LMX_SSE_OK) s = end;
      break;
    }
    if ((size_t)(le - s) > p->max_bytes) {
      fail(p, LMX_SSE_TOOLARGE, "line");
      break;
    }
    rc = line(p, s, (size_t)(le - s), 1, cb, ud);
    if (rc != LMX_SSE_OK) {
      if (rc == LMX_SSE_STOPPED) s = next;
      break;
    }
    s = next;
  }

out:
  /* nothing may point into buf once we return (after an error the event is dead anyway) */
  if (p->status != LMX_SSE_OK) p->ref = NULL;
  else if (p->ref) materialize(p);
  if (used) *used = (size_t)(s - buf);
  if (p->status != LMX_SSE_OK) return p->status;
  return rc;
}

int lmx_sse_finish(lmx_SSE *p) {
  int rc = p->status;
  if (rc == LMX_SSE_OK) {
    rc = p->line.n || p->data_len || (!p->started && p->bom) ? LMX_SSE_PARTIAL : LMX_SSE_OK;
    p->status = LMX_SSE_FINISHED;
  }
  lmx_sse_free(p);
  return rc;
}

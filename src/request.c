/* A Request: one easy handle in a Multi, its request header list, and the buffers its response
 * lands in. curl's callbacks only append to those buffers. */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "llmux.h"

static lmx_Request *notclosed(lua_State *L, lmx_Request *r) {
  if (r->state == LMX_R_CLOSED) luaL_error(L, "attempt to use a closed llmux.Request");
  return r;
}

static lmx_Request *checkrequest(lua_State *L, int i) {
  return notclosed(L, lmx_checkudata(L, i, LMX_REQUEST));
}

/* For the methods that may call curl (cancel, and the pops, which resume a paused transfer):
 * in a forked child a transfer of the parent's Multi is not ours to touch. Methods that only
 * read what is already here (done, result, head, idle, stream_stats) work anywhere. */
static lmx_Request *live(lua_State *L, lmx_Request *r) {
  if (r->multi && LMX_FORKED(r->multi))
    luaL_error(L, "llmux.Request: its Multi was made before fork(); it cannot be driven here");
  return r;
}

static lmx_Request *checklive(lua_State *L, int i) {
  return live(L, checkrequest(L, i));
}

/* The request of a body that guarded() runs (result, pop*): guarded has checked that
 * argument 1 is one, and the body may run in a pcall, as a function without the class
 * upvalue that makes lmx_checkudata cheap. */
static lmx_Request *guarded_arg(lua_State *L) {
  return notclosed(L, lua_touserdata(L, 1));
}

/* Event queue limits of a stream: over HIGH bytes unread by Lua the transfer pauses (the
 * kernel's socket buffer and TCP flow control then hold the sender back); it resumes once Lua
 * has drained the queue below LOW. */
#define EVQ_HIGH ((size_t)256 * 1024)
#define EVQ_LOW ((size_t)64 * 1024)

/* Queues r in its Multi when Lua asked to hear about the next header block, event or end. */
static void notify(lmx_Request *r) {
  if (r->want && r->multi) {
    r->want = 0;
    lmx_multi_enqueue(r->multi, r);
  }
}

/* SSE callback: appends {data_len, event_len, event, data, NUL} to the queue (the NUL is the
 * sentinel the JSON scanners stop on). Nonzero (stop) only when memory runs out; the queue is
 * then left as it was. */
static int on_event(void *ud, const lmx_SSEEvent *ev) {
  lmx_Buf *q = &((lmx_Request *)ud)->st->evq;
  uint32_t h[2] = { (uint32_t)ev->data_len, (uint32_t)ev->event_len };
  size_t n0 = q->n;
  /* An event without data ("data:" alone, a named keep-alive) carries nothing: like a comment
   * it neither queues nor counts as activity for the stall timer. Only "error" may be empty. */
  if (ev->data_len == 0 && !(ev->event_len == 5 && memcmp(ev->event, "error", 5) == 0))
    return 0;
  if (lmx_buf_append(q, h, sizeof h) != 0
      || (ev->event_len && lmx_buf_append(q, ev->event, ev->event_len) != 0)
      || (ev->data_len && lmx_buf_append(q, ev->data, ev->data_len) != 0)
      || lmx_buf_append(q, "", 1) != 0) {
    q->n = n0;
    return 1;
  }
  return 0;
}

/* The most bytes of an event stream's answer kept until its first event: the end of what came
 * instead of events, for the message of a stream that carried none (a gateway's JSON error
 * under a text/event-stream Content-Type). */
#define SSE_TAIL_MAX ((size_t)4096)

/* Keeps the last SSE_TAIL_MAX bytes of what b and p (n bytes) hold together, in b. Only a
 * diagnostic: out of memory, b keeps what it had. */
static void keep_tail(lmx_Buf *b, const char *p, size_t n) {
  if (n >= SSE_TAIL_MAX) {
    p += n - SSE_TAIL_MAX;
    n = SSE_TAIL_MAX;
    b->n = 0;
  } else if (b->n + n > SSE_TAIL_MAX) {
    size_t drop = b->n + n - SSE_TAIL_MAX;
    memmove(b->p, b->p + drop, b->n - drop);
    b->n -= drop;
  }
  (void)lmx_buf_append(b, p, n);
}

/* curl write callback: a short count makes curl fail the transfer with CURLE_WRITE_ERROR,
 * which finish() reports as "toolarge" (cap) or out of memory. An event stream goes through
 * the SSE parser instead of the body buffer, and pauses while Lua lags behind. The cap
 * (max_bytes) counts a stream's bytes too: its events and Lua's assembled answer grow with
 * them, and a stream that never ends must not take all memory. */
size_t lmx_request_writecb(char *p, size_t size, size_t nmemb, void *ud) {
  lmx_Request *r = ud;
  size_t n = size * nmemb;
  if (r->discard) return n;   /* see lmx_request_finish */
  if (r->sse) {   /* only a stream's answer is one: r->st is there */
    lmx_Stream *st = r->st;
    /* busy: a pop is reading the queue and a finalizer stepped the Multi; appending could
     * move the bytes it reads. Hold the bytes back until it is done (guarded resumes). */
    if (r->busy || st->evq.n - st->evq_off > EVQ_HIGH) {
      r->paused = 1;
      return CURL_WRITEFUNC_PAUSE;   /* curl keeps these bytes and hands them back later */
    }
    if (r->max_bytes && n > r->max_bytes - st->stream_bytes) {   /* stream_bytes <= max_bytes */
      r->toolarge = 1;
      return 0;
    }
    size_t before = st->evq.n;
    int rc = lmx_sse_feed(&st->parser, p, n, NULL, on_event, r);
    st->stream_bytes += n;
    if (rc != LMX_SSE_OK) {
      if (rc == LMX_SSE_TOOLARGE) r->toolarge = 1;
      r->why = rc == LMX_SSE_STOPPED ? "out of memory" : lmx_sse_error(&st->parser);
      return 0;
    }
    if (st->evq.n != before) {
      if (!st->queued_any) {
        st->queued_any = 1;
        lmx_buf_free(&r->body);
      }
      r->last_event = lmx_now();
      notify(r);
    } else if (!st->queued_any) {
      keep_tail(&r->body, p, n);
    }
    return n;
  }
  if (r->max_bytes && n > r->max_bytes - r->body.n) {
    r->toolarge = 1;
    return 0;
  }
  if (lmx_buf_append(&r->body, p, n) == 0) return n;
  /* A body that does not fit in memory is too large to take; the part read goes, or result()
   * would run out of memory pushing it. */
  lmx_buf_free(&r->body);
  r->toolarge = 1;
  r->why = "out of memory for the response body";
  return 0;
}

static int contains_nocase(const char *s, const char *word) {
  size_t n = strlen(word);
  for (; *s; s++)
    if (strncasecmp(s, word, n) == 0) return 1;
  return 0;
}

/* The most bytes a response's header block may have (head.n never passes it). */
#define LMX_HEAD_MAX ((size_t)256 * 1024)

/* Keeps only the last response's header block (redirect or 1xx blocks come first). For a
 * stream, the blank line that ends the final block announces the headers and decides whether
 * the body is an event stream (2xx and text/event-stream) or an ordinary body. */
size_t lmx_request_headercb(char *p, size_t size, size_t nitems, void *ud) {
  lmx_Request *r = ud;
  size_t n = size * nitems;
  if (r->discard) return n;
  if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) lmx_buf_reset(&r->head);
  /* curl 7.88 as released keeps any number of header bytes (Debian's and curl 8 stop at
   * 300 KiB with a receive error, which reads as a broken connection and is retried) */
  if (n > LMX_HEAD_MAX - r->head.n) {
    r->toolarge = 1;
    r->why = "response headers larger than 256 KiB";
    return 0;
  }
  if (lmx_buf_append(&r->head, p, n) != 0) return 0;
  if (r->stream && (n == 2 || n == 1) && (p[0] == '\r' || p[0] == '\n')) {
    long status = 0;
    char *ct = NULL;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200) {
      r->status = status;
      r->hdr_done = 1;
      r->last_event = lmx_now();
      curl_easy_getinfo(r->easy, CURLINFO_CONTENT_TYPE, &ct);
      if (status / 100 == 2 && ct && contains_nocase(ct, "text/event-stream")) r->sse = 1;
      notify(r);
    }
  }
  return n;
}

/* Pushes spec[k], read raw: the strings kept as pointers must stay referenced by the spec
 * itself, which a value made by an __index function would not be (a GC before use frees it). */
static int specfield(lua_State *L, int t, const char *k) {
  t = lua_absindex(L, t);
  lua_pushstring(L, k);
  return lua_rawget(L, t);
}

static double optseconds(lua_State *L, int t, const char *k) {
  double v = 0;
  int ty = specfield(L, t, k);
  if (ty != LUA_TNIL) {
    if (ty != LUA_TNUMBER) luaL_error(L, "llmux.request: '%s' must be a number (seconds)", k);
    v = lua_tonumber(L, -1);
    if (!(v >= 0)) luaL_error(L, "llmux.request: '%s' must not be negative", k);
  }
  lua_pop(L, 1);
  return v;
}

static const char *optstring(lua_State *L, int t, const char *k, size_t *len) {
  int ty = specfield(L, t, k);
  const char *s = NULL;
  if (ty == LUA_TSTRING) s = lua_tolstring(L, -1, len);
  else if (ty != LUA_TNIL) luaL_error(L, "llmux.request: '%s' must be a string", k);
  lua_pop(L, 1);   /* the string stays alive: spec still references it */
  return s;
}

static long ms(double s) {
  double v = ceil(s * 1000.0);
  return v >= (double)LONG_MAX ? LONG_MAX : (long)v;   /* (double)LONG_MAX is 2^63: not a long */
}

/* What a transfer is asked to do, read from a spec table or a Template. Strings point into Lua
 * strings that stay referenced (by the spec table, the Template or the Request). */
typedef struct Plan {
  const char *url, *method, *body, *ca;
  size_t bodylen;
  double timeout, ctimeout;
  lua_Integer maxb, maxev;
  int stream;
  struct curl_slist *hdrs;      /* the list to send (a Request's own, or its Template's) */
  int form;                     /* stack index of spec.form, 0: none */
  uint64_t conf;                /* its Template's serial, unique in the process; 0: none */
} Plan;

/* The string field k (or NULL when nil), raising when it holds a byte of bad: curl takes C
 * strings, so a NUL cut the value short unseen (a URL with "\0/elsewhere" went to the part
 * before), and a CR or LF in a header line or the method would split the request. */
static const char *cleanstring(lua_State *L, int t, const char *k, const char *bad,
                               const char *what) {
  size_t len;
  const char *s = optstring(L, t, k, &len);
  if (s && (strlen(s) != len || strpbrk(s, bad)))
    luaL_error(L, "llmux.request: '%s' must not contain %s", k, what);
  return s;
}

/* Appends line to *hl, a list some userdata owns (its __gc frees it, even after a raise). */
static void append(lua_State *L, struct curl_slist **hl, const char *line) {
  struct curl_slist *nl = curl_slist_append(*hl, line);
  if (!nl) luaL_error(L, "llmux.request: out of memory");
  *hl = nl;
}

/* Reads spec (a table at index t) into P, raising for misuse. The header list is built in
 * *owned, a field of a userdata already made (Request or Template), so no raise can leak it.
 * body and form are read only when per_request (a Template has neither). */
static void plan_read(lua_State *L, int t, Plan *P, int per_request, struct curl_slist **owned) {
  memset(P, 0, sizeof *P);
  P->url = cleanstring(L, t, "url", "\r\n", "NUL, CR or LF bytes");
  P->method = cleanstring(L, t, "method", " \t\r\n", "NUL bytes, blanks or line breaks");
  P->ca = cleanstring(L, t, "ca_file", "", "NUL bytes");
  if (P->ca) {   /* curl opens it as it is: a FIFO blocked step() until a writer came */
    const char *kind = lmx_file_kind(P->ca);
    if (kind && strcmp(kind, "file") != 0)
      luaL_error(L, "llmux.request: 'ca_file' %s is a %s, not a regular file", P->ca, kind);
  }
  P->timeout = optseconds(L, t, "timeout");
  P->ctimeout = optseconds(L, t, "connect_timeout");
  if (!P->url) luaL_error(L, "llmux.request: 'url' is required");
  /* http(s) only (curl is told so too): any other scheme is misuse, raised here, so that
   * curl's "unsupported protocol" afterwards only ever means a reply it cannot read as HTTP */
  if (strncasecmp(P->url, "http://", 7) != 0 && strncasecmp(P->url, "https://", 8) != 0)
    luaL_error(L, "llmux.request: 'url' must be http:// or https://");
  if (specfield(L, t, "max_response_bytes") != LUA_TNIL) {
    int ok;
    P->maxb = lmx_count(L, -1, &ok);
    if (!ok || P->maxb < 0)
      luaL_error(L, "llmux.request: 'max_response_bytes' must be an integer >= 0");
  }
  lua_pop(L, 1);
  if (specfield(L, t, "http2") != LUA_TNIL)
    luaL_error(L, "llmux.request: 'http2' is chosen per Multi (core.multi{http2 = false}), "
               "not per request");
  lua_pop(L, 1);
  if (specfield(L, t, "stream") != LUA_TNIL) P->stream = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (specfield(L, t, "max_event_bytes") != LUA_TNIL) {
    int ok;
    P->maxev = lmx_count(L, -1, &ok);
    if (!ok || P->maxev < 1 || P->maxev > (lua_Integer)1 << 30)   /* queue entries: u32 sizes */
      luaL_error(L, "llmux.request: 'max_event_bytes' must be an integer in [1, 2^30]");
  }
  lua_pop(L, 1);
  if (per_request) P->body = optstring(L, t, "body", &P->bodylen);

  /* header list: validated before any curl resource is taken */
  if (specfield(L, t, "headers") != LUA_TNIL) {
    if (!lua_istable(L, -1)) luaL_error(L, "llmux.request: 'headers' must be a table");
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      size_t len;
      const char *line;
      if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
        luaL_error(L, "llmux.request: headers[%d] must be a string", (int)i);
      line = lua_tolstring(L, -1, &len);
      if (strlen(line) != len || strpbrk(line, "\r\n"))
        luaL_error(L, "llmux.request: headers[%d] must not contain NUL, CR or LF bytes", (int)i);
      append(L, owned, line);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  P->hdrs = *owned;
  if (!per_request) return;

  /* form: an array of parts {name =, data =[, filename =][, type =]}, checked before any
   * curl resource is taken. Read raw, as the spec is, here and in start(): a metamethod run
   * there (after the check, with a pooled handle taken) could raise and leak the handle, hand
   * over other values than those checked, or close the Multi. */
  if (specfield(L, t, "form") == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1) || P->body)
    luaL_error(L, "llmux.request: 'form' must be a table of parts, and not with 'body'");
  P->form = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, P->form);
  for (lua_Integer i = 1; i <= n; i++) {
    int ok = lua_rawgeti(L, P->form, i) == LUA_TTABLE;
    if (ok) {
      int tn = specfield(L, -1, "name"), td = specfield(L, -2, "data");
      int tf = specfield(L, -3, "filename"), tt = specfield(L, -4, "type");
      ok = tn == LUA_TSTRING && td == LUA_TSTRING && (tf == LUA_TNIL || tf == LUA_TSTRING)
           && (tt == LUA_TNIL || tt == LUA_TSTRING);
      lua_pop(L, 4);
    }
    lua_pop(L, 1);
    if (!ok)
      luaL_error(L, "llmux.request: form[%d] must be {name = s, data = s[, filename = s]"
                 "[, type = s]}", (int)i);
  }
}

/* A new Request userdata on the stack, closed: a raise before it runs leaves only memory its
 * __gc frees. reqmt: the index of its metatable. */
static lmx_Request *newrequest(lua_State *L, int reqmt) {
  lmx_Request *r = lua_newuserdatauv(L, sizeof *r, 3);
  memset(r, 0, sizeof *r);
  r->ref = LUA_NOREF;
  r->state = LMX_R_CLOSED;
  lua_pushvalue(L, reqmt);
  lua_setmetatable(L, -2);
  return r;
}

/* Undoes what start() did to a transfer that cannot start (its caller raises): the handle goes
 * back reset (it may hold r's form or a half-set option), then what curl would have read is
 * freed. */
static void unstarted(lmx_Multi *m, lmx_Request *r, CURL *e) {
  curl_slist_free_all(r->hdrs);
  r->hdrs = NULL;
  lmx_multi_release_easy(m, e, 1, 0, 0);
  curl_mime_free(r->mime);   /* after the handle let go of it */
  r->mime = NULL;
}

/* Sets string option opt (spec field what) of r's handle e. curl refuses one over
 * CURL_MAX_INPUT_LENGTH (8 MiB) and drops the value the handle had: a method that long went
 * out as POST, a CA file left curl's default trust store in charge. So the request raises. */
static void setstr(lua_State *L, lmx_Multi *m, lmx_Request *r, CURL *e, CURLoption opt,
                   const char *v, const char *what) {
  CURLcode cc = curl_easy_setopt(e, opt, v);
  if (cc != CURLE_OK) {
    unstarted(m, r, e);
    luaL_error(L, "llmux.request: curl refused '%s' (%s)", what, curl_easy_strerror(cc));
  }
}

/* Starts r (the new Request at ri) doing P and adds it to m (at mindex); the value at bodyidx
 * (0: none) is the body string, tplidx (0: none) a Template the Request keeps alive. Raises
 * on misuse and memory; r stays closed until the transfer is added. Leaves r on top. */
static lmx_Request *start(lua_State *L, lmx_Multi *m, int mindex, lmx_Request *r, int ri,
                          Plan *P, int bodyidx, int tplidx) {
  /* no "Expect: 100-continue" round trip: curl adds it to bodies over 1 MiB */
  if (P->bodylen > 1024 * 1024) {
    if (!r->hdrs)                   /* a Template's list: r gets a copy of its own */
      for (struct curl_slist *i = P->hdrs; i; i = i->next) append(L, &r->hdrs, i->data);
    append(L, &r->hdrs, "Expect:");
    P->hdrs = r->hdrs;
  }
  struct curl_slist *hl = P->hdrs;
  if (P->stream) {                  /* before the handle is taken: a raise leaks nothing */
    if (!(r->st = malloc(sizeof *r->st))) luaL_error(L, "llmux.request: out of memory");
    memset(r->st, 0, sizeof *r->st);
    lmx_sse_init(&r->st->parser, (size_t)P->maxev);
  }
  if (tplidx) {                     /* the Template's strings and list, read by curl */
    lua_pushvalue(L, tplidx);
    lua_setiuservalue(L, ri, 3);
  }

  uint64_t had;
  CURL *e = lmx_multi_easy(m, &had);
  if (!e) luaL_error(L, "llmux.request: out of memory");
  if (P->form) {
    /* curl copies each part's data; the parts' strings need not outlive this call */
    int form = P->form;
    curl_mime *mime = r->mime = curl_mime_init(e);
    int ok = mime != NULL;
    lua_Integer n = (lua_Integer)lua_rawlen(L, form);
    for (lua_Integer i = 1; ok && i <= n; i++) {
      size_t dl;
      lua_rawgeti(L, form, i);
      specfield(L, -1, "name");
      specfield(L, -2, "data");
      specfield(L, -3, "filename");
      specfield(L, -4, "type");
      const char *data = lua_tolstring(L, -3, &dl);
      curl_mimepart *part = curl_mime_addpart(mime);
      ok = part && curl_mime_name(part, lua_tostring(L, -4)) == CURLE_OK
           && curl_mime_data(part, data, dl) == CURLE_OK
           && (lua_isnil(L, -2) || curl_mime_filename(part, lua_tostring(L, -2)) == CURLE_OK)
           && (lua_isnil(L, -1) || curl_mime_type(part, lua_tostring(L, -1)) == CURLE_OK);
      lua_pop(L, 5);
    }
    if (!ok) {
      unstarted(m, r, e);
      luaL_error(L, "llmux.request: out of memory");
    }
    curl_easy_setopt(e, CURLOPT_MIMEPOST, mime);
    r->dirty = 1;   /* a pooled handle must not keep the MIMEPOST */
  }
  r->max_bytes = (size_t)P->maxb;
  r->stream = P->stream;
  r->want = P->stream;
  r->last_event = lmx_now();
  /* every option a previous transfer may have set is set again (pooled handles keep them),
   * except those of a Template when the handle's last transfer was of the same one: its own
   * options (its URL above all, which curl copies) are still there. Not when the request has
   * a header list of its own (see above): the handle then points at a list freed with it. */
  r->conf = r->hdrs ? 0 : P->conf;
  if (!r->conf || had != r->conf) {
    setstr(L, m, r, e, CURLOPT_URL, P->url, "url");
    /* HTTP/2 only when TLS negotiates it: this libcurl breaks on reused cleartext h2c.
     * Waiting for a connection to multiplex on (PIPEWAIT) only where HTTP/2 can come: on
     * plain HTTP it queued transfers behind the first connection, and curl 7.88 lets its
     * queue out one per finished transfer, so a batch could run one at a time on a single
     * connection. (A pooled handle is its Multi's: m->http2 is the same for it.) */
    int h2 = m->http2 && strncasecmp(P->url, "https:", 6) == 0;
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     h2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, (long)h2);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, P->ctimeout > 0 ? ms(P->ctimeout) : 0L);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)P->maxb);
  }
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, P->timeout > 0 ? ms(P->timeout) : 0L);
  if (P->ca) {
    setstr(L, m, r, e, CURLOPT_CAINFO, P->ca, "ca_file");
    r->dirty = 1;
  }
  const char *method = P->method;
  int plain = !method || strcmp(method, (P->body || P->form) ? "POST" : "GET") == 0;
  if (P->form) {
    /* the MIMEPOST set above makes it a POST */
  } else if (P->body) {
    /* zero copy: the body string is kept alive in the request's uservalue */
    lua_pushvalue(L, bodyidx);
    lua_setiuservalue(L, ri, 1);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)P->bodylen);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, P->body);
  } else {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  }
  if (!plain) {
    r->dirty = 1;
    if (strcmp(method, "HEAD") == 0) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else setstr(L, m, r, e, CURLOPT_CUSTOMREQUEST, method, "method");
  }
  r->errbuf[0] = '\0';
  if (curl_multi_add_handle(m->cm, e) != CURLM_OK) {   /* m->cm NULL: BAD_HANDLE */
    unstarted(m, r, e);
    /* a finalizer run by an allocation above (a wrapper's __gc) may have closed m */
    if (m->closed) luaL_error(L, "attempt to use a closed llmux.Multi");
    luaL_error(L, "llmux.request: cannot add the transfer");
  }
  r->easy = e;
  r->state = LMX_R_RUNNING;
  m->running++;
  /* curl 7.88 checks a transfer's timeout only once it has a connection: one queued for a
   * connection (max_host_connections, max_total_connections, a full HTTP/2 connection) waits
   * however long the queue takes. The Multi ends it itself at its due (see expire in multi.c),
   * a little after the time curl would, so curl still ends the transfers it does time out. */
  if (P->timeout > 0) {
    r->timeout_ms = ms(P->timeout);
    r->due = lmx_now() + (double)r->timeout_ms / 1000.0 + LMX_DUE_GRACE;
    if (m->next_due < 0 || r->due < m->next_due) m->next_due = r->due;
  }
  lmx_multi_attach(m, r);
  r->ref = lmx_multi_ref(L, m, mindex, ri);   /* the Multi holds the request while attached */
  lua_pushvalue(L, mindex);          /* and the request its Multi */
  lua_setiuservalue(L, ri, 2);
  lua_settop(L, ri);                 /* the request on top (a form table may sit above it) */
  return r;
}

/* A Template: the parts of a spec that many requests share (URL, method, headers, timeouts,
 * caps, CA file, stream), read and checked once and the header list built once. Its strings
 * are held in its uservalue, so the Plan's pointers stay valid whatever the spec table does. */
typedef struct Template { Plan P; } Template;   /* P.hdrs is the Template's own list */

/* Templates made so far, in every Lua state of the process: the next one's serial (P.conf). */
static atomic_uint_fast64_t templates;

/* core.template(spec) -> Template: spec as for m:request, without body and form (they are
 * per request: m:request(template, body[, timeout])). */
static int template_new(lua_State *L) {
  Template *t;
  luaL_checktype(L, 1, LUA_TTABLE);
  specfield(L, 1, "body");
  specfield(L, 1, "form");
  if (!lua_isnil(L, -1) || !lua_isnil(L, -2))
    luaL_error(L, "llmux.template: 'body' and 'form' are given per request, not here");
  lua_pop(L, 2);
  t = lua_newuserdatauv(L, sizeof *t, 1);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, LMX_TEMPLATE);
  plan_read(L, 1, &t->P, 0, &t->P.hdrs);   /* the list is t's from its first line */
  t->P.conf = (uint64_t)atomic_fetch_add(&templates, 1) + 1;
  lua_createtable(L, 3, 0);           /* the strings the plan points into */
  specfield(L, 1, "url");
  lua_rawseti(L, -2, 1);
  specfield(L, 1, "method");
  lua_rawseti(L, -2, 2);
  specfield(L, 1, "ca_file");
  lua_rawseti(L, -2, 3);
  lua_rawgeti(L, -1, 1);              /* point at the held strings themselves */
  t->P.url = lua_tostring(L, -1);
  lua_rawgeti(L, -2, 2);
  t->P.method = lua_tostring(L, -1);
  lua_rawgeti(L, -3, 3);
  t->P.ca = lua_tostring(L, -1);
  lua_pop(L, 3);
  if (!t->P.url) luaL_error(L, "llmux.template: 'url' must be a string");
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static int template_gc(lua_State *L) {
  Template *t = luaL_checkudata(L, 1, LMX_TEMPLATE);
  curl_slist_free_all(t->P.hdrs);
  t->P.hdrs = NULL;
  return 0;
}

/* m:request(spec) or m:request(template, body[, timeout]): pushes the new Request. reqmt
 * and tplmt are the indexes of the Request and Template metatables (m:request's upvalues: no
 * lookup by name per request). */
lmx_Request *lmx_request_start(lua_State *L, lmx_Multi *m, int mindex, int spec, int reqmt,
                               int tplmt) {
  Plan P;
  Template *t = NULL;
  if (lua_type(L, spec) == LUA_TUSERDATA && lua_getmetatable(L, spec)) {
    if (lua_rawequal(L, -1, tplmt)) t = lua_touserdata(L, spec);
    lua_pop(L, 1);
  }
  if (t) {
    P = t->P;                         /* no body nor form: plan_read left them zero */
    if (!lua_isnoneornil(L, spec + 1)) P.body = luaL_checklstring(L, spec + 1, &P.bodylen);
    if (!lua_isnoneornil(L, spec + 2)) {
      P.timeout = luaL_checknumber(L, spec + 2);
      luaL_argcheck(L, P.timeout >= 0, spec + 2, "timeout must not be negative");
    }
    lmx_Request *r = newrequest(L, reqmt);
    return start(L, m, mindex, r, lua_gettop(L), &P, spec + 1, spec);
  }
  luaL_checktype(L, spec, LUA_TTABLE);
  lmx_Request *r = newrequest(L, reqmt);
  int ri = lua_gettop(L);
  plan_read(L, spec, &P, 1, &r->hdrs);
  int bodyidx = 0;
  if (P.body) {                       /* for the Request to hold */
    specfield(L, spec, "body");
    bodyidx = lua_gettop(L);
  }
  return start(L, m, mindex, r, ri, &P, bodyidx, 0);
}

/* Ends a running transfer: records its result, gives the easy handle back, queues r. */
void lmx_request_finish(lmx_Request *r, CURLcode cc) {
  lmx_Multi *m = r->multi;
  CURL *e = r->easy;
  long nconn = 0, port = 0;
  curl_off_t t_retry = 0;
  int held = 0;
  r->cc = cc;
  /* A paused transfer leaves the body bytes curl held for it (CURL_WRITEFUNC_PAUSE) in its
   * easy handle: curl 7.88 frees them when the transfer is done only if its connection has
   * no other transfer, and curl_easy_reset and curl_easy_cleanup never do. So an HTTP/2
   * stream cut while paused (closed, stalled, a lagging reader) on a connection that carries
   * others left them there, and the next transfer on the pooled handle got them ahead of its
   * own bytes when it resumed from a pause: another response's events in its text. They are
   * taken out here, unpaused into the write callback, which drops them. When that cannot be
   * done (curl already ended the transfer) the handle is never pooled. */
  if (r->paused) {
    r->discard = 1;
    held = curl_easy_pause(e, CURLPAUSE_CONT) != CURLE_OK;
    r->discard = 0;
    r->paused = 0;
  }
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &r->httpver);
  curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nconn);
  curl_easy_getinfo(e, CURLINFO_LOCAL_PORT, &port);
  curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &r->t_total);
  curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &r->t_connect);
  curl_easy_getinfo(e, CURLINFO_STARTTRANSFER_TIME_T, &r->t_start);
  curl_easy_getinfo(e, CURLINFO_REDIRECT_TIME_T, &t_retry);   /* llmux never follows
      redirects: a redirect time means curl retried the request (a reused connection died) */
  r->reused = nconn == 0 && r->status != 0;  /* no connection at all is not reuse */
  r->conn_id = port;
  m->done++;
  m->connects += (uint64_t)nconn;
  curl_multi_remove_handle(m->cm, e);
  /* A handle whose transfer was retried by curl is reset too: curl 7.88 counts each retry after
   * a reused connection died in the handle, clearing the count only when it gives up, so a
   * pooled handle would fail a healthy transfer after a few such retries. A retry usually makes
   * a connection, but it may as well reuse another cached one (nconn stays 0): curl marks every
   * retry with a redirect time (Curl_follow, FOLLOW_RETRY). Steady keep-alive traffic makes no
   * connections and no retries, so this costs little. */
  lmx_multi_release_easy(m, e, r->dirty || nconn > 0 || t_retry > 0, held, r->conf);
  r->easy = NULL;
  curl_slist_free_all(r->hdrs);
  r->hdrs = NULL;
  curl_mime_free(r->mime);   /* after the handle let go of it (release resets a dirty one) */
  r->mime = NULL;
  if (r->st) lmx_sse_free(&r->st->parser);   /* no more bytes will come; queued events stay */
  /* the last running transfer ended: no due is left (expire() would find none), so an idle
   * Multi's timeout() says nil, not the finished transfer's due */
  if (--m->running == 0) m->next_due = -1.0;
  r->state = LMX_R_DONE;
  lmx_multi_enqueue(m, r);
}

/* A running transfer of a Multi inherited across fork() ends as closed without a curl call
 * (see multi_close): its handle and socket are the parent's business. */
void lmx_request_orphan(lmx_Request *r) {
  r->cc = CURLE_ABORTED_BY_CALLBACK;
  r->closed_by_multi = 1;
  r->easy = NULL;
  curl_slist_free_all(r->hdrs);   /* plain memory: freeing it calls no curl machinery */
  r->hdrs = NULL;
  curl_mime_free(r->mime);
  r->mime = NULL;
  if (r->st) lmx_sse_free(&r->st->parser);
  r->multi->running--;
  r->state = LMX_R_DONE;
}

/* r:cancel(): aborts a running transfer at once (socket freed); the request is then done with
 * code "cancelled" and is delivered by next() like any finished one. No-op when done. */
static int request_cancel(lua_State *L) {
  lmx_Request *r = checklive(L, 1);
  if (r->state == LMX_R_RUNNING) {
    if (r->multi->stepping) return luaL_error(L, "llmux.Request: cancel() during step()");
    r->cancelled = 1;
    lmx_request_finish(r, CURLE_ABORTED_BY_CALLBACK);
  }
  return 0;
}

/* Frees r's stream state (none: a no-op); the transfer no longer writes to it. */
static void free_stream(lmx_Request *r) {
  lmx_Stream *st = r->st;
  if (!st) return;
  lmx_buf_free(&st->evq);
  lmx_buf_free(&st->scratch);
  lmx_buf_free(&st->extras);
  lmx_buf_free(&st->last_extras);
  lmx_sse_free(&st->parser);
  free(st);
  r->st = NULL;
}

/* r:close() / __gc / __close: cancels if running, leaves the Multi, frees buffers.
 * Idempotent. In __gc a running request's Multi is garbage too (it held the request), but its
 * memory is intact until every finalizer of the cycle ran, and its own __gc clears r->multi. */
/* Closes the request at ri, leaving the stack as it found it. */
static void close_request(lua_State *L, int ri, lmx_Request *r) {
  int top = lua_gettop(L);
  if (r->state == LMX_R_CLOSED) {   /* never started: a raise left its list behind */
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    free_stream(r);
    return;
  }
  lmx_Multi *m = r->multi;
  if (m) {
    if (r->state == LMX_R_RUNNING && LMX_FORKED(m)) lmx_request_orphan(r);
    else if (r->state == LMX_R_RUNNING) {
      r->cancelled = 1;
      lmx_request_finish(r, CURLE_ABORTED_BY_CALLBACK);
    }
    int mi = 0;
    if (lua_getiuservalue(L, ri, 2) == LUA_TUSERDATA) mi = lua_gettop(L);
    lmx_multi_detach(L, m, r, mi);
    lua_settop(L, top);
  }
  lmx_buf_free(&r->body);
  lmx_buf_free(&r->head);
  free_stream(r);
  r->state = LMX_R_CLOSED;
  lua_pushnil(L);
  lua_setiuservalue(L, ri, 1);
  lua_pushnil(L);
  lua_setiuservalue(L, ri, 2);
}

/* Closes r (at index 1) as r:close() asks, leaving the stack as it found it. */
static void close_asked(lua_State *L, lmx_Request *r) {
  if (r->busy) {   /* a finalizer run by an allocation inside result/pop*: at their end */
    r->close_pending = 1;
    return;
  }
  if (r->multi && r->state != LMX_R_CLOSED && r->multi->stepping)
    luaL_error(L, "llmux.Request: close() during step()");
  close_request(L, 1, r);
}

static int request_close(lua_State *L) {
  close_asked(L, lmx_checkudata(L, 1, LMX_REQUEST));
  return 0;
}

/* Runs f (result/pop*: they read r's buffers across allocations, which can run finalizers)
 * with r marked busy, protected: a close() asked for meanwhile happens after, keeping f's
 * results, and an error (memory, a forked child) cannot leave r marked. A pop* re-entered on
 * the same request from such a finalizer raises (it could free what the outer one reads);
 * result only reads, so it may. */
static void maybe_resume(lmx_Request *r);
static int guarded(lua_State *L, lua_CFunction f, int reader_only) {
  lmx_Request *r = lmx_checkudata(L, 1, LMX_REQUEST);
  if (r->state == LMX_R_CLOSED) return f(L);   /* raises "closed" (or has nothing to read) */
  if (r->busy) {
    if (!reader_only) return luaL_error(L, "llmux.Request: pop re-entered from a finalizer");
    return f(L);
  }
  int nargs = lua_gettop(L);
  lua_pushvalue(L, 1);                /* [r, f, args...]: r stays below f's results */
  lua_insert(L, 1);
  lua_pushcfunction(L, f);
  lua_insert(L, 2);
  r->busy = 1;
  int st = lua_pcall(L, nargs, LUA_MULTRET, 0);
  r->busy = 0;
  if (r->paused && !r->close_pending) maybe_resume(r);
  if (r->close_pending) {
    r->close_pending = 0;
    close_request(L, 1, r);
  }
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L) - 1;
}

/* r:done() -> boolean */
static int request_done(lua_State *L) {
  lua_pushboolean(L, checkrequest(L, 1)->state == LMX_R_DONE);
  return 1;
}

/* Pushes a raw header block as {lower-case name = value}; repeated names join with ", ".
 * Status lines and lines without a colon are skipped. */
static void pushheaders(lua_State *L, const char *p, size_t n) {
  lua_createtable(L, 0, 8);
  const char *end = p + n;
  char name[128];
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *le = eol ? eol : end;
    const char *colon = memchr(p, ':', (size_t)(le - p));
    if (colon && colon > p && (size_t)(colon - p) < sizeof name && memcmp(p, "HTTP/", 5) != 0) {
      size_t nl = (size_t)(colon - p);
      for (size_t i = 0; i < nl; i++) name[i] = (char)tolower((unsigned char)p[i]);
      const char *v = colon + 1, *ve = le;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_pushlstring(L, name, nl);
      if (lua_rawget(L, -2) == LUA_TSTRING) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_pushlstring(L, name, nl);
      lua_insert(L, -2);
      lua_rawset(L, -3);
    }
    p = le + 1;
  }
}

/* core.parse_headers(raw) -> {lower-case name = value} */
static int core_parse_headers(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n);
  pushheaders(L, p, n);
  return 1;
}

/* Whether b's first byte past JSON whitespace opens an object. */
static int json_object(const lmx_Buf *b) {
  size_t i = 0;
  while (i < b->n && b->p[i] && strchr(" \t\r\n", b->p[i])) i++;
  return i < b->n && b->p[i] == '{';
}

/* The field names of r:result's table, interned once in an array in the registry (at
 * &result_keys): the table is filled with lua_rawset, without the string lookup per field
 * that lua_setfield makes. */
enum { K_STATUS = 1, K_HEAD, K_BODY, K_HTTPVER, K_REUSED, K_PORT, K_TOTAL, K_CONNECT, K_START,
       K_CODE, K_CURLCODE, K_ERROR };
static const char *const result_keys[] = { "status", "head", "body", "http_version", "reused",
  "local_port", "time_total", "time_connect", "time_starttransfer", "code", "curl_code",
  "error", NULL };

/* t[key k] = v: t at index 3, the keys at 4 (request_result_body's stack) */
static void setnum(lua_State *L, int k, double v) {
  lua_rawgeti(L, 4, k);
  lua_pushnumber(L, v);
  lua_rawset(L, 3);
}

static void setint(lua_State *L, int k, lua_Integer v) {
  lua_rawgeti(L, 4, k);
  lua_pushinteger(L, v);
  lua_rawset(L, 3);
}

/* r:result([decode[, close]]) -> table[, value] | nil (while running). Fields: status, head
 * (the raw header block of the last response: core.parse_headers makes the table, only when
 * someone needs it), body, http_version (1.0, 1.1, 2, 3), reused, local_port, time_total,
 * time_connect, time_starttransfer (s); on failure also code (llmux code), error (curl's
 * message), curl_code. With decode, a 2xx body holding a JSON object is returned decoded as
 * the second value and the table has no body; any other body (an array too: decoded, [] and {}
 * would look alike) stays a string. With close, r is closed once read, as by r:close() right
 * after (a call fewer for the caller that is done with it). */
static int request_result_body(lua_State *L) {
  lmx_Request *r = guarded_arg(L);
  int decoded = 0;
  if (r->state != LMX_R_DONE) return 0;
  lua_settop(L, 2);
  lua_createtable(L, 0, 16);   /* 3: the result */
  lua_rawgetp(L, LUA_REGISTRYINDEX, result_keys);   /* 4: its keys */
  setint(L, K_STATUS, r->status);
  lua_rawgeti(L, 4, K_HEAD);
  lua_pushlstring(L, r->head.p ? r->head.p : "", r->head.n);
  lua_rawset(L, 3);
  /* decode: a 2xx body that is a JSON object comes back decoded, straight from the buffer,
   * instead of as a string (the decoder wants a NUL after the bytes) */
  if (lua_toboolean(L, 2) && r->status / 100 == 2 && r->cc == CURLE_OK && json_object(&r->body)
      && lmx_buf_append(&r->body, "", 1) == 0) {
    r->body.n--;
    if (lmx_json_decode(L, r->body.p, r->body.n) && lua_istable(L, -1)) {
      lua_replace(L, 2);
      decoded = 1;
    } else {
      lua_pop(L, 1);
    }
  }
  if (!decoded) {
    lua_rawgeti(L, 4, K_BODY);
    lua_pushlstring(L, r->body.p ? r->body.p : "", r->body.n);
    lua_rawset(L, 3);
  }
  switch (r->httpver) {
    case CURL_HTTP_VERSION_1_0: setnum(L, K_HTTPVER, 1.0); break;
    case CURL_HTTP_VERSION_1_1: setnum(L, K_HTTPVER, 1.1); break;
    case CURL_HTTP_VERSION_2_0: setint(L, K_HTTPVER, 2); break;
    case CURL_HTTP_VERSION_3: setint(L, K_HTTPVER, 3); break;
    default: break;
  }
  lua_rawgeti(L, 4, K_REUSED);
  lua_pushboolean(L, r->reused);
  lua_rawset(L, 3);
  setint(L, K_PORT, r->conn_id);
  setnum(L, K_TOTAL, (double)r->t_total / 1e6);
  setnum(L, K_CONNECT, (double)r->t_connect / 1e6);
  setnum(L, K_START, (double)r->t_start / 1e6);
  const char *code = r->closed_by_multi ? "closed"
                                        : lmx_curl_code(r->cc, r->toolarge, r->cancelled);
  if (!code && r->cc != CURLE_OK) code = "connect";
  /* cut after the response began (a status came): "truncated" whatever the protocol. HTTP/1.1
   * closing before its Content-Length is CURLE_PARTIAL_FILE already; a reset mid-body, or an
   * HTTP/2 stream not closed cleanly, read as a broken connection */
  if (r->status >= 200 && code && strcmp(code, "connect") == 0
      && (r->cc == CURLE_RECV_ERROR || r->cc == CURLE_HTTP2 || r->cc == CURLE_HTTP2_STREAM))
    code = "truncated";
  if (code) {
    lua_rawgeti(L, 4, K_CODE);
    lua_pushstring(L, code);
    lua_rawset(L, 3);
    setint(L, K_CURLCODE, r->cc);
    lua_rawgeti(L, 4, K_ERROR);
    if (r->closed_by_multi) lua_pushliteral(L, "the llmux.Multi was closed");
    else if (r->cancelled) lua_pushliteral(L, "cancelled");
    else if (r->why) lua_pushstring(L, r->why);
    else if (r->toolarge || r->cc == CURLE_FILESIZE_EXCEEDED)   /* curl's own check, on a
        Content-Length over the cap, said only "Maximum file size exceeded" */
      lua_pushfstring(L, "response larger than max_response_bytes (%I)",
                      (lua_Integer)r->max_bytes);
    else if (r->cc == CURLE_OUT_OF_MEMORY)
      lua_pushliteral(L, "a response header line over curl's limit (100 KiB), or out of memory");
    else if (r->errbuf[0]) lua_pushstring(L, r->errbuf);
    else lua_pushstring(L, curl_easy_strerror(r->cc));
    lua_rawset(L, 3);
  }
  lua_settop(L, 3);
  if (!decoded) return 1;
  lua_pushvalue(L, 2);
  return 2;
}

static int request_result(lua_State *L) {
  int close = lua_toboolean(L, 3);
  int n = guarded(L, request_result_body, 1);   /* r stays at index 1 */
  if (close) close_asked(L, lua_touserdata(L, 1));
  return n;
}

/* r:head() -> status, raw header block, sse | nothing while the headers are not all in.
 * sse: the body goes to the event parser (a stream's 2xx text/event-stream answer). A stream
 * whose headers never ended (its transfer failed first: a timeout, a reset) has none, even
 * done: its status line alone would open a Stream on a failed transfer. */
static int request_head(lua_State *L) {
  lmx_Request *r = checkrequest(L, 1);
  if (!r->hdr_done && (r->stream || r->state != LMX_R_DONE)) return 0;
  lua_pushinteger(L, r->status);
  lua_pushlstring(L, r->head.p ? r->head.p : "", r->head.n);
  lua_pushboolean(L, r->sse);
  return 3;
}

/* Resumes a paused stream once Lua has drained its queue below the low mark. curl may hand
 * back the bytes it kept right here, through the write callback (which only queues). */
static void maybe_resume(lmx_Request *r) {
  if (r->paused && r->state == LMX_R_RUNNING && r->st->evq.n - r->st->evq_off < EVQ_LOW) {
    r->paused = 0;
    r->last_event = lmx_now();   /* the time spent paused was the reader's, not the server's */
    CURLcode rc = curl_easy_pause(r->easy, CURLPAUSE_CONT);
    /* the bytes curl held went through the write callback just now; if it refused them
     * (event too large, out of memory) the transfer ends here with that error */
    if (rc != CURLE_OK) lmx_request_finish(r, rc);
  }
}

/* The oldest queued event: *data (NUL-terminated), *dl, *ev, *el. 0 when the queue is empty
 * (always, for a request that is no stream): then it is reset and the notification armed (the
 * next header block, event or end of the transfer queues r in its Multi again). */
static int peek_event(lmx_Request *r, const char **data, uint32_t *dl, const char **ev,
                      uint32_t *el) {
  lmx_Stream *st = r->st;
  if (!st || st->evq_off >= st->evq.n) {
    if (st) {
      st->evq_off = 0;
      if (st->evq.cap > EVQ_LOW) lmx_buf_free(&st->evq); else lmx_buf_reset(&st->evq);
    }
    r->want = 1;
    maybe_resume(r);
    return 0;
  }
  uint32_t h[2];
  memcpy(h, st->evq.p + st->evq_off, sizeof h);
  *dl = h[0];
  *el = h[1];
  *ev = st->evq.p + st->evq_off + sizeof h;
  *data = *ev + h[1];
  return 1;
}

/* Drops the event peek_event returned (its bytes must not be used after). */
static void drop_event(lmx_Request *r, uint32_t dl, uint32_t el) {
  lmx_Stream *st = r->st;
  st->evq_off += 2 * sizeof(uint32_t) + dl + el + 1;
  if (st->evq_off == st->evq.n) {
    st->evq_off = 0;
    lmx_buf_reset(&st->evq);
  } else if (st->evq_off > EVQ_LOW && st->evq_off * 2 > st->evq.n) {
    memmove(st->evq.p, st->evq.p + st->evq_off, st->evq.n - st->evq_off);
    st->evq.n -= st->evq_off;
    st->evq_off = 0;
  }
  maybe_resume(r);
}

/* Pushes the oldest event whole (data, event) and drops it from the queue. */
static int push_whole(lua_State *L, lmx_Request *r, const char *data, uint32_t dl,
                      const char *ev, uint32_t el) {
  lua_pushlstring(L, data, dl);
  if (el) lua_pushlstring(L, ev, el); else lua_pushnil(L);
  drop_event(r, dl, el);
  return 2;
}

/* r:pop() -> data, event | nothing: the oldest queued event of a stream (event is nil for
 * the default type); nothing when none is queued (see peek_event). Lua decodes it whole, so
 * the extras the fast path compares with are no longer the last ones Lua has seen (a reader
 * may change between chunks() and deltas(): a chunk repeating the extras before this one's
 * must be decoded again). */
static int request_pop_body(lua_State *L) {
  lmx_Request *r = live(L, guarded_arg(L));
  const char *data, *ev;
  uint32_t dl, el;
  if (!peek_event(r, &data, &dl, &ev, &el)) return 0;
  lmx_buf_reset(&r->st->last_extras);
  return push_whole(L, r, data, dl, ev, el);
}

static int request_pop(lua_State *L) { return guarded(L, request_pop_body, 0); }

static void pushspan(lua_State *L, const char *p, size_t n) {
  if (p && n) lua_pushlstring(L, p, n); else lua_pushnil(L);
}

/* The fast path on a queued event of r: 1 when it is the simple chunk shape and brings no
 * member the fast path would drop (its extras are none, or the same as those of the last
 * chunk Lua decoded fully, whose values Lua keeps); 2 when it is that shape but brings new
 * extras; 0 when it is not that shape. */
static int fast_chunk(lmx_Request *r, const char *data, uint32_t dl, lmx_JChunk *c) {
  lmx_Stream *st = r->st;
  if (!lmx_json_chunk(data, dl, &st->scratch, &st->extras, c)) return 0;
  if (st->extras.n == 0) return 1;
  return st->extras.n == st->last_extras.n
    && memcmp(st->extras.p, st->last_extras.p, st->extras.n) == 0 ? 1 : 2;
}

/* r:pop_text() -> text | nothing: pops the oldest event only when it is the simple chunk
 * shape with content text and no finish_reason (the bulk of a stream); anything else stays
 * queued for pop/pop_delta. */
static int request_pop_text_body(lua_State *L) {
  lmx_Request *r = live(L, guarded_arg(L));
  const char *data, *ev;
  uint32_t dl, el;
  lmx_JChunk c;
  if (!peek_event(r, &data, &dl, &ev, &el) || el != 0) return 0;
  if (fast_chunk(r, data, dl, &c) != 1 || !c.has_text || c.text.n == 0
      || c.finish.p || c.finish.off >= 0)
    return 0;
  lua_pushlstring(L, c.text.p, c.text.n);
  drop_event(r, dl, el);
  return 1;
}

static int request_pop_text(lua_State *L) { return guarded(L, request_pop_text_body, 0); }

/* r:pop_delta([ids]) -> true, text, finish[, id, model, created]
 *                     | false, data, event | nothing
 * Like pop, but an event of the common chat-chunk shape is read in C (lmx_json_chunk) and
 * only its content text and finish_reason come back (nil when absent or empty); with ids also
 * its id, model and created. Any other event comes back whole, for a full decode. */
static int request_pop_delta_body(lua_State *L) {
  lmx_Request *r = live(L, guarded_arg(L));
  int ids = lua_toboolean(L, 2);
  const char *data, *ev;
  uint32_t dl, el;
  lmx_JChunk c;
  if (!peek_event(r, &data, &dl, &ev, &el)) return 0;
  int fast = el == 0 ? fast_chunk(r, data, dl, &c) : 0;
  if (fast == 1) {
    lua_pushboolean(L, 1);
    pushspan(L, c.text.p, c.text.n);
    pushspan(L, c.finish.p, c.finish.n);
    if (ids) {   /* an empty id is "" (Azure's first chunks), an absent one nil, as decoded */
      if (c.id) lua_pushlstring(L, c.id, c.id_len); else lua_pushnil(L);
      pushspan(L, c.model, c.model_len);
      if (c.created >= 0) lua_pushinteger(L, (lua_Integer)c.created); else lua_pushnil(L);
    }
    drop_event(r, dl, el);
    return ids ? 6 : 3;
  }
  /* Lua decodes this one: its extras are the last ones Lua has seen, or (not the simple
   * shape, extras unread) none are known, so the next chunk with any goes the full way too */
  if (fast == 2) {
    lmx_Buf t = r->st->last_extras;
    r->st->last_extras = r->st->extras;
    r->st->extras = t;
  } else {
    lmx_buf_reset(&r->st->last_extras);
  }
  lua_pushboolean(L, 0);
  return 1 + push_whole(L, r, data, dl, ev, el);
}

static int request_pop_delta(lua_State *L) { return guarded(L, request_pop_delta_body, 0); }

/* r:idle() -> seconds since the last real event (or the headers, or the start) */
static int request_idle(lua_State *L) {
  lmx_Request *r = checkrequest(L, 1);
  lua_pushnumber(L, lmx_now() - r->last_event);
  return 1;
}

/* r:stream_stats() -> events, comments, bytes, paused: what the event stream carried */
static int request_stream_stats(lua_State *L) {
  lmx_Request *r = checkrequest(L, 1);
  const lmx_Stream *st = r->st;
  lua_pushinteger(L, st ? (lua_Integer)st->parser.dispatched : 0);
  lua_pushinteger(L, st ? (lua_Integer)st->parser.comments : 0);
  lua_pushinteger(L, st ? (lua_Integer)st->stream_bytes : 0);
  lua_pushboolean(L, r->paused);
  return 4;
}

static int request_tostring(lua_State *L) {
  lmx_Request *r = luaL_checkudata(L, 1, LMX_REQUEST);
  static const char *const names[] = { "running", "done", "closed" };
  lua_pushfstring(L, "llmux.Request (%s)", names[r->state]);
  return 1;
}

void lmx_request_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"cancel", request_cancel}, {"close", request_close}, {"done", request_done},
    {"result", request_result}, {"head", request_head}, {"pop", request_pop},
    {"pop_delta", request_pop_delta}, {"pop_text", request_pop_text},
    {"idle", request_idle}, {"stream_stats", request_stream_stats}, {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", request_close}, {"__close", request_close}, {"__tostring", request_tostring},
    {NULL, NULL}
  };
  lmx_newclass(L, LMX_REQUEST, meta, methods);
  lua_createtable(L, (int)(sizeof result_keys / sizeof *result_keys) - 1, 0);
  for (int i = 0; result_keys[i]; i++) {
    lua_pushstring(L, result_keys[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, result_keys);
  lua_pushcfunction(L, core_parse_headers);
  lua_setfield(L, -2, "parse_headers");
  luaL_newmetatable(L, LMX_TEMPLATE);
  lua_pushcfunction(L, template_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, template_new);
  lua_setfield(L, -2, "template");
}

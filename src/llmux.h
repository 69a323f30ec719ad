/* llmux internal header: shared types and helpers of the C core.
 * Only luaopen_llmux_core is exported (LMX_API); everything else is hidden. */
#ifndef LLMUX_H
#define LLMUX_H

#include <locale.h>
#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

/* Lua 5.4 or later (the rockspec's lua >= 5.4). Older headers (Debian's luarocks defaults to
 * Lua 5.1) would fail deep inside the sources; say why at once. */
#if !defined(LUA_VERSION_NUM) || LUA_VERSION_NUM < 504
#error "llmux needs the Lua 5.4 headers (LUA_INCDIR; luarocks: --lua-version=5.4)"
#endif

#include "buf.h"
#include "sse.h"

#define LMX_API __attribute__((visibility("default")))

#include "pool.h"
#define LMX_VERSION "0.1.0"

#define LMX_MULTI "llmux.Multi"
#define LMX_REQUEST "llmux.Request"
#define LMX_TEMPLATE "llmux.Template"

/* Easy handles kept for reuse by a Multi, so steady load allocates little. */
#define LMX_FREE_EASY 128

typedef struct lmx_Multi lmx_Multi;
typedef struct lmx_Request lmx_Request;

typedef enum { LMX_R_RUNNING, LMX_R_DONE, LMX_R_CLOSED } lmx_RState;

/* Seconds past a transfer's timeout before the Multi ends it itself (expire in multi.c): curl
 * ends the ones it times out first, with its own message. */
#define LMX_DUE_GRACE 0.05

/* What only a stream (spec.stream) needs, malloc'd when it starts and freed when it is
 * closed: kept out of lmx_Request, the common non-streamed request's userdata is some 360
 * bytes smaller, which is less to clear and less for the collector, whose pace counts bytes. */
typedef struct lmx_Stream {
  lmx_SSE parser;
  lmx_Buf evq;                /* queued events: {u32 data_len, u32 event_len, event, data, NUL} */
  size_t evq_off;             /* read position in evq */
  lmx_Buf scratch;            /* unescaped strings of the chunk fast path */
  lmx_Buf extras, last_extras;  /* a chunk's members the fast path does not read, and those
                                 of the last chunk Lua decoded fully (see fast_chunk) */
  uint64_t stream_bytes;      /* bytes of the event stream */
  int queued_any;             /* an event was queued: the bytes are an event stream */
} lmx_Stream;

struct lmx_Request {
  lmx_RState state;
  CURL *easy;                 /* owned while running; back to the Multi's free list after */
  lmx_Multi *multi;           /* set while attached (running or queued), cleared both ways */
  lmx_Request *prev, *next;   /* the Multi's list of attached requests */
  lmx_Request *qnext;         /* completion queue link */
  int ref;                    /* its key in the Multi's uservalue (lmx_multi_ref) or LUA_NOREF */
  int queued;                 /* in the completion queue */
  int toolarge, cancelled, closed_by_multi;
  int dirty;                  /* set options a reused handle must not keep (CA, custom method) */
  uint64_t conf;              /* the serial of the Template whose options its handle has, 0:
                                 none (see lmx_multi_easy) */
  struct curl_slist *hdrs;
  curl_mime *mime;            /* multipart body (spec.form), freed when the transfer ends */
  /* streams (spec.stream): events parsed in the write callback queue here for Lua to pop */
  int stream;                 /* a stream: headers and events are announced through next() */
  int sse;                    /* the response is a 2xx event stream: bytes go to the parser */
  int hdr_done;               /* the final response's headers are complete */
  int want;                   /* Lua waits: the next header/event/end queues r in its Multi */
  int paused;                 /* the write callback paused the transfer (queue over the mark) */
  int discard;                /* ending: bytes curl held for the pause are dropped unread */
  int busy;                   /* result/pop* is reading r's buffers: a close() from a finalizer
                                 that runs meanwhile is deferred to their end (close_pending) */
  int close_pending;
  lmx_Stream *st;             /* a stream's parser and queue; NULL for other requests */
  double last_event;          /* monotonic time of the last real event (or of the start) */
  double due;                 /* monotonic time its timeout ends (spec.timeout), 0: none */
  long timeout_ms;
  const char *why;            /* static message for a failure llmux itself caused */
  lmx_Buf body;               /* response body (for streams: only a non-event-stream body) */
  lmx_Buf head;               /* raw header lines of the last response only */
  size_t max_bytes;           /* 0: no cap */
  CURLcode cc;
  long status, httpver, conn_id;
  int reused;
  curl_off_t t_total, t_connect, t_start;   /* microseconds */
  char errbuf[CURL_ERROR_SIZE];
};

struct lmx_Multi {
  CURLM *cm;
  CURLSH *sh;
  int epfd;                   /* epoll set of curl's sockets (curl's timer: timer_due below) */
  int wfd;                    /* one more fd in the set, not curl's (watch()); -1: none */
  int stepping, closed;
  int running;                /* transfers in flight */
  long timer_ms;              /* curl's last timer request, -1 when none */
  double timer_due;           /* monotonic seconds when curl wants a timeout action */
  double next_due;            /* the earliest due of its running requests (-1: none); see
                                 expire() in multi.c */
  lmx_Request *attached;      /* running and queued requests */
  int *free_refs;             /* keys of the uservalue's array free for reuse (lmx_multi_ref) */
  int nfree_refs, cap_refs, max_ref;
  lmx_Request *qhead, *qtail; /* completion queue */
  CURL *free_easy[LMX_FREE_EASY];  /* reusable handles, their fixed options already set */
  uint64_t free_conf[LMX_FREE_EASY];  /* each one's Template serial (see lmx_multi_easy) */
  int nfree;
  uint64_t done, connects, ctls;   /* counters for stats() (ctls: epoll_ctl on curl's sockets) */
  int env_proxy;              /* the environment named a proxy when m was made */
  unsigned char *parked;      /* by fd: PARKED, OPENED and REG_* bits (multi.c's
                                 multi_sockcb); parked_n entries */
  int parked_n;
  int http2;                  /* HTTP/2 over TLS when offered (else HTTP/1.1 everywhere): one
                                 choice per Multi, since curl 7.88 can hand one HTTP/1.1
                                 connection to two transfers when a host gets both wishes */
  unsigned forks;             /* lmx_forks when made: another value means a forked child */
};

/* m was inherited across fork(): its epoll set and connections are the parent's too, so the
 * child must not run, change or even cleanly close them (TLS shutdown writes to the socket). */
#define LMX_FORKED(m) ((m)->forks != lmx_forks)

double lmx_now(void);
void lmx_newclass(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods);
void *lmx_checkudata(lua_State *L, int i, const char *name);
const char *lmx_curl_code(CURLcode cc, int toolarge, int cancelled);
const char *lmx_file_kind(const char *path);

/* multi.c */
void lmx_multi_open(lua_State *L);
CURL *lmx_multi_easy(lmx_Multi *m, uint64_t *conf);
void lmx_multi_release_easy(lmx_Multi *m, CURL *easy, int dirty, int held, uint64_t conf);
void lmx_multi_detach(lua_State *L, lmx_Multi *m, lmx_Request *r, int mindex);
void lmx_multi_attach(lmx_Multi *m, lmx_Request *r);
int lmx_multi_ref(lua_State *L, lmx_Multi *m, int mindex, int vi);
void lmx_multi_enqueue(lmx_Multi *m, lmx_Request *r);

/* request.c */
void lmx_request_open(lua_State *L);
lmx_Request *lmx_request_start(lua_State *L, lmx_Multi *m, int mindex, int spec, int reqmt,
                               int tplmt);
void lmx_request_finish(lmx_Request *r, CURLcode cc);
void lmx_request_orphan(lmx_Request *r);
/* curl's callbacks of every transfer, set once per easy handle (multi.c's easy_setup) */
size_t lmx_request_writecb(char *p, size_t size, size_t nmemb, void *ud);
size_t lmx_request_headercb(char *p, size_t size, size_t nitems, void *ud);

void lmx_json_open(lua_State *L);   /* json.c: core.json_decode */
/* json.c: the "C" locale for numbers (strtod_l, uselocale): JSON's '.' whatever LC_NUMERIC
 * the host set; (locale_t)0 only if it could not be made (out of memory) */
locale_t lmx_c_locale(void);
void lmx_json_encode_open(lua_State *L);   /* json_encode.c: core.json_encode */
/* The integer at index i of an option that counts something: *ok is nonzero only for a number
 * with an integral value (4 or 4.0; a JSON config's 4), not for "4", which lua_tointegerx
 * converts. */
static inline lua_Integer lmx_count(lua_State *L, int i, int *ok) {
  lua_Integer v = lua_tointegerx(L, i, ok);
  if (lua_type(L, i) != LUA_TNUMBER) *ok = 0;
  return v;
}
/* The metatable that marks a table as a JSON array (registry name; core.json_array_mt): the
 * encoder writes it as one even when empty, and the decoder gives it to every empty array it
 * reads, so a decoded [] goes back out as [] and not as {}. */
#define LMX_JSON_ARRAY "llmux.json.array"
/* 8 bytes at a time: nonzero when any byte is '"', '\\' or below 0x20 (what a JSON string
 * cannot hold as is). Borrows can only flag bytes above a real hit, so a zero answer is exact
 * and a nonzero one is resolved bytewise. */
static inline uint64_t lmx_json_special8(uint64_t w) {
  const uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;
  uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
  return (((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b)) & high;
}
int lmx_json_decode(lua_State *L, const char *s, size_t len);
/* json.c: the chat-chunk fast path (see there). A string value: a span of the input, or
 * (off >= 0) of the scratch buffer. */
typedef struct { const char *p; size_t n; long off; } lmx_JStr;
typedef struct {
  lmx_JStr text, finish;      /* finish.p NULL: no finish_reason; text: has_text */
  int has_text, choices, seen;
  const char *id, *model;     /* spans of the input; NULL when absent */
  size_t id_len, model_len;
  long long created;          /* -1 when absent */
} lmx_JChunk;
int lmx_json_chunk(const char *s, size_t len, lmx_Buf *scratch, lmx_Buf *extras,
                   lmx_JChunk *c);
void lmx_sse_open(lua_State *L);    /* sse_lua.c: core.sse */
void lmx_b64_open(lua_State *L);    /* b64_lua.c: core.b64_encode, core.b64_decode */
void lmx_image_open(lua_State *L);  /* image_lua.c: llmux.Image, core.image_* */
void lmx_pool_open(lua_State *L);   /* pool_lua.c: llmux.Job, core.job_* */

/* For pool_lua.c, which runs the work of b64_lua.c and image_lua.c on worker threads and
 * must hand back the same values. */
struct lmx_B64Err;
struct lmx_Image;
struct lmx_ImgErr;
struct lmx_Pin;
int lmx_b64_error(lua_State *L, const char *s, size_t n, const struct lmx_B64Err *err);
/* The optional prefix of an encode at i (a data: URL's head), "" when absent; raises past
 * LMX_B64_PREFIX_MAX bytes, so a job can hold it in place. */
#define LMX_B64_PREFIX_MAX 64
const char *lmx_b64_prefix(lua_State *L, int i, size_t *pn);
struct lmx_Image *lmx_image_push(lua_State *L);           /* a new, closed Image */
struct lmx_Image *lmx_image_check(lua_State *L, int i);   /* raises when closed */
struct lmx_Pin *lmx_image_pin(struct lmx_Image *im);
int lmx_image_result(lua_State *L, int r, const struct lmx_ImgErr *e);
#endif

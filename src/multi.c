/* The Multi: one CURLM driven through curl's socket interface and an epoll set, plus a share
 * handle for DNS and TLS sessions. It is pollable (pollfd/timeout/step/next) and never calls
 * Lua from a curl callback: callbacks only touch C state, finished requests go to a queue that
 * Lua drains with next(). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "llmux.h"

#define LMX_EVENTS 64

static lmx_Multi *checkmulti(lua_State *L, int i) {
  lmx_Multi *m = lmx_checkudata(L, i, LMX_MULTI);
  if (m->closed) luaL_error(L, "attempt to use a closed llmux.Multi");
  if (LMX_FORKED(m))
    luaL_error(L, "llmux.Multi: made before fork(): a child process needs a Multi of its own");
  return m;
}

/* m->parked[fd] bits: PARKED (1) the socket waits in the epoll set though curl let go of it;
 * OPENED (2) curl made it through multi_opensock, so it closes it through multi_closesock;
 * REG_IN (4) and REG_OUT (8), of an OPENED socket only: the events its entry in the set has.
 * Sets fd's byte to v; 0 when that could not be recorded (no memory). */
enum { PARKED = 1, OPENED = 2, REG_IN = 4, REG_OUT = 8 };

static int set_parked(lmx_Multi *m, curl_socket_t fd, unsigned char v) {
  if (fd < 0) return 0;
  if (fd >= m->parked_n) {
    if (!v) return 1;
    int n = m->parked_n ? m->parked_n : 64;
    while (n <= fd) n *= 2;
    unsigned char *p = realloc(m->parked, (size_t)n);
    if (!p) return 0;
    memset(p + m->parked_n, 0, (size_t)(n - m->parked_n));
    m->parked = p;
    m->parked_n = n;
  }
  m->parked[fd] = v;
  return 1;
}

/* epoll_ctl on one of curl's sockets, counted for stats() */
static int ctl(lmx_Multi *m, int op, curl_socket_t fd, struct epoll_event *ev) {
  m->ctls++;
  return epoll_ctl(m->epfd, op, fd, ev);
}

static int is_parked(const lmx_Multi *m, curl_socket_t fd) {
  return fd >= 0 && fd < m->parked_n && (m->parked[fd] & PARKED);
}

static int is_opened(const lmx_Multi *m, curl_socket_t fd) {
  return fd >= 0 && fd < m->parked_n && (m->parked[fd] & OPENED);
}

/* curl tells which socket to watch for what. socketp marks sockets curl watches now.
 * A socket curl lets go of (its transfer ended; the keep-alive connection waits for the
 * next) is parked: left in the epoll set, so that the next transfer on it costs no syscall
 * when it watches for what the entry already has (the usual case: the last transfer waited
 * to read, and so does the next once its request is sent), one MOD otherwise, instead of a
 * DEL now and an ADD then. A parked socket that fires (the server closed it) is taken out in
 * step(), and one curl closes is taken out first (multi_closesock: a forked child may hold
 * the socket open, and epoll drops an entry on close only when no process does). So only
 * sockets curl opened through multi_opensock are parked, and their entries' events are
 * known (REG_*): multi_closesock and multi_opensock clear what a number recorded, so a
 * reused number never inherits an entry it does not have. The resolver's socketpair, which
 * curl closes without the callback, leaves the set at once, as before. A MOD that finds no
 * entry (ENOENT) is an ADD. */
static int multi_sockcb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp) {
  lmx_Multi *m = userp;
  (void)e;
  if (LMX_FORKED(m)) return 0;   /* the epoll set is the parent's too */
  if (what == CURL_POLL_REMOVE) {
    /* a socket that cannot be parked leaves the set now; it may already be closed (epoll
     * dropped it then): the error is ignored */
    if (socketp) {
      if (is_opened(m, s)) m->parked[s] |= PARKED;
      else ctl(m, EPOLL_CTL_DEL, s, NULL);
    }
    curl_multi_assign(m->cm, s, NULL);
    return 0;
  }
  unsigned char reg = ((what & CURL_POLL_IN) ? REG_IN : 0) | ((what & CURL_POLL_OUT) ? REG_OUT : 0);
  int op = socketp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  /* A first watch of a number whose OPENED byte still records an entry is a socket curl did
   * not make through multi_opensock (that clears the byte): the one before was closed without
   * the close-socket callback, as curl 7.88 closes a socket that never finished connecting.
   * It is not ours to park (curl closes it without telling, as its resolver's socketpair). */
  if (!socketp && !is_parked(m, s) && is_opened(m, s) && (m->parked[s] & (REG_IN | REG_OUT)))
    m->parked[s] = 0;
  if (is_parked(m, s)) {
    unsigned char had = m->parked[s];
    m->parked[s] = OPENED | reg;
    if ((had & (REG_IN | REG_OUT)) == reg) {   /* the entry is already what curl asks for */
      curl_multi_assign(m->cm, s, m);
      return 0;
    }
    op = EPOLL_CTL_MOD;
  }
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.data.fd = s;
  ev.events = ((reg & REG_IN) ? EPOLLIN : 0) | ((reg & REG_OUT) ? EPOLLOUT : 0);
  int rc = ctl(m, op, s, &ev), gone = 0;
  if (rc != 0 && errno == ENOENT) {
    /* the entry went with a socket closed behind our back; this number's socket is another,
     * not made by multi_opensock (that clears the byte): not ours to park (see above) */
    gone = 1;
    rc = ctl(m, EPOLL_CTL_ADD, s, &ev);
  } else if (rc != 0 && errno == EEXIST) {
    rc = ctl(m, EPOLL_CTL_MOD, s, &ev);
  }
  if (gone) (void)set_parked(m, s, 0);
  else if (is_opened(m, s)) m->parked[s] = OPENED | (rc == 0 ? reg : 0);
  if (!socketp) curl_multi_assign(m->cm, s, m);
  return 0;
}

/* curl asks for a timeout action in timeout_ms (-1: none). Only recorded: step() waits no
 * longer than this and timeout() reports it, so no syscall is spent per update. */
static int multi_timercb(CURLM *cm, long timeout_ms, void *userp) {
  lmx_Multi *m = userp;
  (void)cm;
  m->timer_ms = timeout_ms;
  m->timer_due = timeout_ms < 0 ? -1.0 : lmx_now() + (double)timeout_ms / 1000.0;
  return 0;
}

/* Whether the environment names a proxy for http or https, as curl reads it: http_proxy
 * (lower case only), https_proxy / HTTPS_PROXY, all_proxy / ALL_PROXY; empty means unset. */
static int env_proxy(void) {
  static const char *const names[] = { "http_proxy", "https_proxy", "HTTPS_PROXY",
                                       "all_proxy", "ALL_PROXY", NULL };
  for (int i = 0; names[i]; i++) {
    const char *v = getenv(names[i]);
    if (v && *v) return 1;
  }
  return 0;
}

/* The options every transfer of m shares; callbacks and per-transfer ones are request.c's.
 * Without a proxy in the environment (read when m was made) the handle is told so: curl would
 * otherwise look up five environment variables for every transfer. */
/* curl closes a socket: a parked one leaves the epoll set first (see multi_sockcb). */
static int multi_closesock(void *clientp, curl_socket_t s) {
  lmx_Multi *m = clientp;
  if (!LMX_FORKED(m)) {
    if (is_parked(m, s)) ctl(m, EPOLL_CTL_DEL, s, NULL);
    set_parked(m, s, 0);
  }
  return close(s);
}

/* curl opens a connection's socket: marked OPENED, so it may be parked (see multi_sockcb).
 * Close-on-exec: curl closes a socket that never finished connecting (a cancel or connect
 * timeout meanwhile, a happy-eyeballs loser) without the close callback, so its entry stays in
 * the epoll set while any other process holds the socket, firing for a number that is closed
 * or reused: a child of io.popen or os.execute inherited it, and step() spun until that child
 * ended. */
static curl_socket_t multi_opensock(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *a) {
  lmx_Multi *m = clientp;
  (void)purpose;
  curl_socket_t s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (s >= 0 && !LMX_FORKED(m)) (void)set_parked(m, s, OPENED);   /* unmarked: never parked */
  return s;
}

static void easy_setup(lmx_Multi *m, CURL *e) {
  if (!m->env_proxy) {
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
  }
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  /* No CA directory: curl 7.88 keeps the parsed CA store in the multi (CURLOPT_CA_CACHE_TIMEOUT,
   * 24 h) only when no CApath is set, and Debian's libcurl sets /etc/ssl/certs beside its bundle
   * (the same certificates, hashed). With it, every new TLS connection parsed the whole bundle
   * inside step(): about 20 ms of a frame per connection for Debian's 140 certificates, and a
   * burst of HTTP/1.1 streams opened one connection each. Trust comes from the bundle (or the
   * ca_file given), read once per engine. */
  curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
  /* A transfer that ends while its name is being resolved (cancel, close, a connect timeout)
   * makes curl 7.88 join the resolver thread (Curl_resolver_kill), which blocks the caller
   * until getaddrinfo returns: seconds with a silent DNS server. Quick exit detaches the
   * thread instead; it frees its own state when the lookup ends. */
  curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, lmx_request_writecb);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, lmx_request_headercb);
  curl_easy_setopt(e, CURLOPT_SHARE, m->sh);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, multi_closesock);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, m);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, multi_opensock);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, m);
}

/* An easy handle for a new transfer, its shared options set. Pooled handles keep every option
 * of their last transfer (a reset costs more than the setup itself), so lmx_request_start sets
 * each per-transfer option every time; *conf is the serial of the Template whose own options
 * (URL, headers, ...) the handle still has from that transfer, 0 when none. */
CURL *lmx_multi_easy(lmx_Multi *m, uint64_t *conf) {
  *conf = 0;
  if (m->nfree > 0) {
    m->nfree--;
    *conf = m->free_conf[m->nfree];
    return m->free_easy[m->nfree];
  }
  CURL *e = curl_easy_init();
  if (e) easy_setup(m, e);
  return e;
}

/* Takes ownership of an easy handle that is no longer in the multi; conf: the serial of the
 * Template whose options it has (0: none). A dirty handle (a CA file or a custom method was
 * set, or curl kept state of its transfer) is reset, so none of that can leak into a later
 * transfer. A held one (its transfer ended paused) is never pooled: curl may still hold body
 * bytes in it (see lmx_request_finish). */
void lmx_multi_release_easy(lmx_Multi *m, CURL *easy, int dirty, int held, uint64_t conf) {
  if (!m->closed && !held && m->nfree < LMX_FREE_EASY) {
    if (dirty) {
      curl_easy_reset(easy);
      easy_setup(m, easy);
      conf = 0;
    }
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);   /* no pointer into a freed request */
    m->free_conf[m->nfree] = conf;
    m->free_easy[m->nfree++] = easy;
  } else {
    curl_easy_cleanup(easy);
  }
}

static void unqueue(lmx_Multi *m, lmx_Request *r) {
  lmx_Request **pp = &m->qhead, *prev = NULL;
  while (*pp && *pp != r) { prev = *pp; pp = &(*pp)->qnext; }
  if (*pp) {
    *pp = r->qnext;
    if (m->qtail == r) m->qtail = prev;
  }
  r->qnext = NULL;
  r->queued = 0;
}

/* Queues r for next(): once finished, or as a stream's update. A no-op when already queued
 * (a stream that ends while its update waits is delivered once, as finished). */
void lmx_multi_enqueue(lmx_Multi *m, lmx_Request *r) {
  if (r->queued) return;
  r->qnext = NULL;
  if (m->qtail) m->qtail->qnext = r; else m->qhead = r;
  m->qtail = r;
  r->queued = 1;
}

/* m's uservalue 1 holds its attached requests (so that one in flight is never collected) at
 * integer keys: an array, with no hashing and no rehash churn. The keys are handed out here,
 * freed ones first, as luaL_ref would, but without its free list kept inside the table (a
 * dozen API calls per request). Stores the value at vi (an absolute index) in the uservalue of
 * m (at mindex) and returns its key. */
int lmx_multi_ref(lua_State *L, lmx_Multi *m, int mindex, int vi) {
  int ref = m->nfree_refs > 0 ? m->free_refs[--m->nfree_refs] : ++m->max_ref;
  lua_getiuservalue(L, mindex, 1);
  lua_pushvalue(L, vi);
  lua_rawseti(L, -2, ref);
  lua_pop(L, 1);
  return ref;
}

/* Clears key ref of m's uservalue (at mindex) and keeps the key for reuse; without the memory
 * to keep it, it is just never used again. */
static void unref(lua_State *L, lmx_Multi *m, int mindex, int ref) {
  lua_getiuservalue(L, mindex, 1);
  lua_pushnil(L);
  lua_rawseti(L, -2, ref);
  lua_pop(L, 1);
  if (m->nfree_refs == m->cap_refs) {
    int cap = m->cap_refs ? 2 * m->cap_refs : 64;
    int *p = realloc(m->free_refs, (size_t)cap * sizeof *p);
    if (!p) return;
    m->free_refs = p;
    m->cap_refs = cap;
  }
  m->free_refs[m->nfree_refs++] = ref;
}

/* The uservalue was replaced by an empty table (close): no key is in use. */
static void forget_refs(lmx_Multi *m) {
  free(m->free_refs);
  m->free_refs = NULL;
  m->nfree_refs = m->cap_refs = m->max_ref = 0;
}

/* Unlinks r from m: list, queue and the strong reference in m's uservalue (when m's userdata is
 * at mindex; 0 skips that, for callers inside finalizers). Clears r->multi. */
void lmx_multi_detach(lua_State *L, lmx_Multi *m, lmx_Request *r, int mindex) {
  if (r->queued) unqueue(m, r);
  if (r->prev) r->prev->next = r->next; else if (m->attached == r) m->attached = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
  r->multi = NULL;
  if (mindex && r->ref != LUA_NOREF) unref(L, m, mindex, r->ref);
  r->ref = LUA_NOREF;
}

void lmx_multi_attach(lmx_Multi *m, lmx_Request *r) {
  r->multi = m;
  r->prev = NULL;
  r->next = m->attached;
  if (m->attached) m->attached->prev = r;
  m->attached = r;
}

static int getintfield(lua_State *L, int t, const char *k, long dflt, long lo, long hi) {
  int ty = lua_getfield(L, t, k);
  long v = dflt;
  if (ty != LUA_TNIL) {
    int ok;
    lua_Integer i = lmx_count(L, -1, &ok);
    if (!ok || i < lo || i > hi)
      luaL_error(L, "llmux.multi: option '%s' must be an integer in [%d, %d]", k, (int)lo, (int)hi);
    v = (long)i;
  }
  lua_pop(L, 1);
  return (int)v;
}

/* core.multi([opts]) -> Multi.  opts: max_host_connections, max_total_connections,
 * max_connects (connection cache size), max_concurrent_streams (per HTTP/2 connection),
 * http2 (default true: HTTP/2 over TLS when the server offers it; false: HTTP/1.1 only). */
static int multi_new(lua_State *L) {
  static const char *const known[] = { "max_host_connections", "max_total_connections",
                                       "max_connects", "max_concurrent_streams", "http2", NULL };
  int hasopts = !lua_isnoneornil(L, 1);
  if (hasopts) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
      int i = 0;
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      while (k && known[i] && strcmp(known[i], k) != 0) i++;
      if (!k || !known[i])
        return luaL_error(L, "llmux.multi: unknown option '%s'", k ? k : luaL_typename(L, -2));
      lua_pop(L, 1);
    }
  } else {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  long host = getintfield(L, 1, "max_host_connections", 0, 0, 100000);
  long total = getintfield(L, 1, "max_total_connections", 0, 0, 100000);
  long cache = getintfield(L, 1, "max_connects", 256, 1, 100000);
  long streams = getintfield(L, 1, "max_concurrent_streams", 100, 1, 2147483647);
  int ty = lua_getfield(L, 1, "http2");
  if (ty != LUA_TNIL && ty != LUA_TBOOLEAN)
    return luaL_error(L, "llmux.multi: option 'http2' must be a boolean");
  int http2 = ty == LUA_TNIL || lua_toboolean(L, -1);
  lua_pop(L, 1);

  /* closed first: a failure below leaves an object __gc can skip */
  lmx_Multi *m = lua_newuserdatauv(L, sizeof *m, 1);
  memset(m, 0, sizeof *m);
  m->closed = 1;
  m->epfd = m->wfd = -1;
  luaL_setmetatable(L, LMX_MULTI);
  lua_newtable(L);              /* requests in flight or queued (lmx_multi_ref) */
  lua_setiuservalue(L, -2, 1);

  m->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (m->epfd < 0) return luaL_error(L, "llmux.multi: epoll_create1: %s", strerror(errno));
  m->cm = curl_multi_init();
  m->sh = curl_share_init();
  if (!m->cm || !m->sh) {
    if (m->cm) curl_multi_cleanup(m->cm);
    if (m->sh) curl_share_cleanup(m->sh);
    close(m->epfd);
    return luaL_error(L, "llmux.multi: out of memory");
  }
  /* Connections are pooled by the multi itself (that pool is what HTTP/2 multiplexing uses);
   * the share adds the DNS cache and TLS session resumption across easy handles. */
  curl_share_setopt(m->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(m->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_multi_setopt(m->cm, CURLMOPT_SOCKETFUNCTION, multi_sockcb);
  curl_multi_setopt(m->cm, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->cm, CURLMOPT_TIMERFUNCTION, multi_timercb);
  curl_multi_setopt(m->cm, CURLMOPT_TIMERDATA, m);
  curl_multi_setopt(m->cm, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  curl_multi_setopt(m->cm, CURLMOPT_MAX_HOST_CONNECTIONS, host);
  curl_multi_setopt(m->cm, CURLMOPT_MAX_TOTAL_CONNECTIONS, total);
  curl_multi_setopt(m->cm, CURLMOPT_MAXCONNECTS, cache);
  curl_multi_setopt(m->cm, CURLMOPT_MAX_CONCURRENT_STREAMS, streams);
  m->timer_ms = -1;
  m->timer_due = -1.0;
  m->next_due = -1.0;
  m->env_proxy = env_proxy();
  m->http2 = http2;
  m->forks = lmx_forks;
  m->closed = 0;
  return 1;
}

/* m:request(spec) or m:request(template, body[, timeout]) -> Request: starts a transfer (see
 * request.c for spec and core.template). Upvalues: the Multi, Request and Template
 * metatables (lmx_multi_open). */
static int multi_request(lua_State *L) {
  lmx_Multi *m = checkmulti(L, 1);
  if (m->stepping) return luaL_error(L, "llmux.Multi: request() during step()");
  lmx_request_start(L, m, 1, 2, lua_upvalueindex(2), lua_upvalueindex(3));
  return 1;
}

/* m:pollfd() -> fd: an epoll fd, readable when a transfer's socket has work */
static int multi_pollfd(lua_State *L) {
  lua_pushinteger(L, checkmulti(L, 1)->epfd);
  return 1;
}

/* m:watch(fd | nil): adds fd (the job pool's eventfd) to the epoll set, replacing the fd
 * watched before, so step() returns as soon as it is readable; step() neither passes it to
 * curl nor reads it (its owner does). fd must stay open while watched. */
static int multi_watch(lua_State *L) {
  lmx_Multi *m = checkmulti(L, 1);
  lua_Integer n = lua_isnoneornil(L, 2) ? -1 : luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= -1 && n <= INT_MAX, 2, "not a file descriptor");
  int fd = (int)n;
  struct epoll_event ev;
  if (fd == m->wfd) return 0;
  if (m->wfd >= 0) epoll_ctl(m->epfd, EPOLL_CTL_DEL, m->wfd, NULL);
  m->wfd = -1;
  if (fd >= 0) {
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(m->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
      return luaL_error(L, "llmux.Multi: watch(%d): %s", fd, strerror(errno));
    m->wfd = fd;
  }
  return 0;
}

/* m:timeout() -> seconds | nil: when step() is due even without socket activity;
 * 0 when completions are queued, nil when nothing is due */
static int multi_timeout(lua_State *L) {
  lmx_Multi *m = checkmulti(L, 1);
  double due = m->timer_due;
  if (m->next_due >= 0 && (due < 0 || m->next_due < due)) due = m->next_due;
  if (m->qhead) lua_pushnumber(L, 0);
  else if (due < 0) lua_pushnil(L);
  else {
    double d = due - lmx_now();
    lua_pushnumber(L, d > 0 ? d : 0);
  }
  return 1;
}

static int queued(const lmx_Multi *m) {
  int q = 0;
  for (const lmx_Request *r = m->qhead; r; r = r->qnext) q++;
  return q;
}

static void drain(lmx_Multi *m) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(m->cm, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *e = msg->easy_handle;
    CURLcode cc = msg->data.result;   /* copied: msg dies with remove_handle */
    lmx_Request *r = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
    if (r) lmx_request_finish(r, cc);
  }
}

/* Ends the running transfers whose timeout passed (their due) as curl's timeout would:
 * curl 7.88 never times out a transfer still queued for a connection (see start in
 * request.c), so with a connection cap a request could wait past its timeout for as long as
 * the requests ahead of it took. Run when the earliest due passed; recomputes it. */
static void expire(lmx_Multi *m) {
  double now = lmx_now(), next = -1;
  for (lmx_Request *r = m->attached; r; r = r->next) {
    if (r->state != LMX_R_RUNNING || r->due <= 0) continue;
    if (r->due <= now) {
      lmx_request_finish(r, CURLE_OPERATION_TIMEDOUT);
      snprintf(r->errbuf, sizeof r->errbuf, "Operation timed out after %ld milliseconds",
               r->timeout_ms);
    } else if (next < 0 || r->due < next) {
      next = r->due;
    }
  }
  m->next_due = next;
}

/* m:step([t]) -> queued: waits at most t seconds (default 0) for socket activity, performs the
 * due transfers' work and queues the finished ones. Never raises for network errors. */
static int multi_step(lua_State *L) {
  lmx_Multi *m = checkmulti(L, 1);
  double t = luaL_optnumber(L, 2, 0);
  if (m->stepping) return luaL_error(L, "llmux.Multi: step() is not re-entrant");
  m->stepping = 1;
  double now = lmx_now(), wait = t;
  if (m->qhead) wait = 0;
  if (m->timer_due >= 0 && m->timer_due - now < wait) wait = m->timer_due - now;
  if (m->next_due >= 0 && m->next_due - now < wait) wait = m->next_due - now;
  if (wait < 0 || wait != wait) wait = 0;
  int ms = wait > 86400.0 ? 86400000 : (int)ceil(wait * 1000.0);
  struct epoll_event evs[LMX_EVENTS];
  int n = epoll_wait(m->epfd, evs, LMX_EVENTS, ms);
  int running = 0;
  for (int i = 0; i < n; i++) {
    uint32_t ev = evs[i].events;
    if (evs[i].data.fd == m->wfd) continue;   /* its owner reads it, not curl */
    if (is_parked(m, evs[i].data.fd)) {        /* an idle connection closed or broke: out */
      ctl(m, EPOLL_CTL_DEL, evs[i].data.fd, NULL);
      m->parked[evs[i].data.fd] = OPENED;
      continue;
    }
    int flags = ((ev & (EPOLLIN | EPOLLHUP)) ? CURL_CSELECT_IN : 0) |
                ((ev & EPOLLOUT) ? CURL_CSELECT_OUT : 0) | ((ev & EPOLLERR) ? CURL_CSELECT_ERR : 0);
    curl_multi_socket_action(m->cm, evs[i].data.fd, flags, &running);
  }
  if (m->timer_due >= 0 && lmx_now() >= m->timer_due) {
    m->timer_due = -1.0;
    curl_multi_socket_action(m->cm, CURL_SOCKET_TIMEOUT, 0, &running);
  }
  drain(m);
  if (m->next_due >= 0 && lmx_now() >= m->next_due) expire(m);
  m->stepping = 0;
  lua_pushinteger(L, queued(m));
  return 1;
}

/* m:next() -> Request | nil: pops one finished request (the Multi no longer holds it) or one
 * running stream with news (headers, events), which stays in flight */
static int multi_next(lua_State *L) {
  lmx_Multi *m = checkmulti(L, 1);
  lmx_Request *r = m->qhead;
  if (!r) return 0;
  lua_getiuservalue(L, 1, 1);
  lua_rawgeti(L, -1, r->ref);
  if (r->state == LMX_R_RUNNING) {
    m->qhead = r->qnext;
    if (!m->qhead) m->qtail = NULL;
    r->qnext = NULL;
    r->queued = 0;
    return 1;
  }
  lmx_multi_detach(L, m, r, 1);
  lua_pushnil(L);               /* drop the request's own reference to the Multi */
  lua_setiuservalue(L, -2, 2);
  return 1;
}

/* m:empty() -> true when nothing is in flight and nothing is queued */
static int multi_empty(lua_State *L) {
  lmx_Multi *m = checkmulti(L, 1);
  lua_pushboolean(L, m->running == 0 && m->qhead == NULL);
  return 1;
}

/* m:stats() -> {running, queued, done, connects, free_easy, epoll_ctl} */
static int multi_stats(lua_State *L) {
  lmx_Multi *m = checkmulti(L, 1);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, m->running); lua_setfield(L, -2, "running");
  lua_pushinteger(L, queued(m)); lua_setfield(L, -2, "queued");
  lua_pushinteger(L, (lua_Integer)m->done); lua_setfield(L, -2, "done");
  lua_pushinteger(L, (lua_Integer)m->connects); lua_setfield(L, -2, "connects");
  lua_pushinteger(L, m->nfree); lua_setfield(L, -2, "free_easy");
  lua_pushinteger(L, (lua_Integer)m->ctls); lua_setfield(L, -2, "epoll_ctl");
  return 1;
}

/* m:close() / __gc / __close: aborts transfers in flight (their result says "closed"), frees
 * curl and the epoll fd. Idempotent; never raises from __gc. */
static int multi_close(lua_State *L) {
  lmx_Multi *m = luaL_checkudata(L, 1, LMX_MULTI);
  if (m->closed) return 0;
  if (m->stepping) return luaL_error(L, "llmux.Multi: close() during step()");
  m->closed = 1;   /* from here release_easy cleans up instead of pooling */
  if (LMX_FORKED(m)) {
    /* In a forked child: let go without a curl call. Cleaning up would close connections the
     * parent still uses (a TLS shutdown reads and writes their sockets) and edit its epoll
     * set; the handles are left to the child's exit. Transfers end as closed. */
    while (m->attached) {
      lmx_Request *r = m->attached;
      if (r->state == LMX_R_RUNNING) lmx_request_orphan(r);
      lmx_multi_detach(L, m, r, 0);
    }
    m->qhead = m->qtail = NULL;
    m->nfree = 0;
    m->cm = NULL;
    m->sh = NULL;
    close(m->epfd);     /* the child's descriptor only: the parent's set lives on */
    m->epfd = -1;
    free(m->parked);
    m->parked = NULL;
    m->parked_n = 0;
    lua_newtable(L);
    lua_setiuservalue(L, 1, 1);
    forget_refs(m);
    return 0;
  }
  while (m->attached) {
    lmx_Request *r = m->attached;
    if (r->state == LMX_R_RUNNING) {
      r->closed_by_multi = 1;
      lmx_request_finish(r, CURLE_ABORTED_BY_CALLBACK);
    }
    lmx_multi_detach(L, m, r, 0);
  }
  m->qhead = m->qtail = NULL;
  for (int i = 0; i < m->nfree; i++) curl_easy_cleanup(m->free_easy[i]);
  m->nfree = 0;
  curl_multi_cleanup(m->cm);
  curl_share_cleanup(m->sh);
  m->cm = NULL;
  m->sh = NULL;
  if (m->epfd >= 0) close(m->epfd);
  m->epfd = -1;
  free(m->parked);
  m->parked = NULL;
  m->parked_n = 0;
  lua_newtable(L);
  lua_setiuservalue(L, 1, 1);
  forget_refs(m);
  return 0;
}

static int multi_tostring(lua_State *L) {
  lmx_Multi *m = luaL_checkudata(L, 1, LMX_MULTI);
  if (m->closed) lua_pushliteral(L, "llmux.Multi (closed)");
  else lua_pushfstring(L, "llmux.Multi (%d running)", m->running);
  return 1;
}

void lmx_multi_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"request", multi_request}, {"pollfd", multi_pollfd}, {"timeout", multi_timeout},
    {"step", multi_step}, {"next", multi_next}, {"watch", multi_watch}, {"empty", multi_empty},
    {"stats", multi_stats}, {"close", multi_close}, {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", multi_close}, {"__close", multi_close}, {"__tostring", multi_tostring},
    {NULL, NULL}
  };
  lmx_newclass(L, LMX_MULTI, meta, methods);
  /* m:request makes Requests, many from Templates: their metatables ride along as its
   * upvalues 2 and 3, after the Multi's own (request.c made them: lmx_request_open runs
   * first) */
  luaL_getmetatable(L, LMX_MULTI);
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, -2);
  luaL_getmetatable(L, LMX_REQUEST);
  luaL_getmetatable(L, LMX_TEMPLATE);
  lua_pushcclosure(L, multi_request, 3);
  lua_setfield(L, -2, "request");
  lua_pop(L, 2);
  lua_pushcfunction(L, multi_new);
  lua_setfield(L, -2, "multi");
}

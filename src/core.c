/* luaopen_llmux_core: builds the classes and module functions of llmux.core. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "llmux.h"
#include "pool.h"

double lmx_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Maps a finished transfer's curl code to llmux's closed code set (DESIGN.md section 3).
 * Returns NULL for success. Anything that looks like a broken connection is "connect", so the
 * retry policy treats it as a transport failure. */
const char *lmx_curl_code(CURLcode cc, int toolarge, int cancelled) {
  if (cancelled) return "cancelled";
  if (toolarge) return "toolarge";
  switch (cc) {
    case CURLE_OK: return NULL;
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST: case CURLE_COULDNT_RESOLVE_PROXY: return "resolve";
    case CURLE_FILESIZE_EXCEEDED: return "toolarge";
    case CURLE_PARTIAL_FILE: return "truncated";
    /* curl 7.88 says out of memory for a response header line over its 100 KiB limit too
     * (nothing tells the two apart): no retry cures either */
    case CURLE_OUT_OF_MEMORY: return "toolarge";
    /* a URL curl cannot parse: not a transport failure, never retried (other schemes raise
     * in request(), so CURLE_UNSUPPORTED_PROTOCOL is a reply that is not HTTP: connect) */
    case CURLE_URL_MALFORMAT: return "badrequest";
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_CRL_BADFILE: case CURLE_USE_SSL_FAILED: case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED: case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_INVALIDCERTSTATUS: case CURLE_SSL_CLIENTCERT:
      return "tls";
    default: return "connect";
  }
}

/* core.now() -> monotonic seconds */
static int core_now(lua_State *L) {
  lua_pushnumber(L, lmx_now());
  return 1;
}

/* core.sleep(s): plain nanosleep, for drivers that have nothing to poll. A day at a time: a
 * huge s (math.huge, 1e19) does not fit time_t, and nanosleep's EINVAL for the wrapped value
 * made the EINTR loop spin at full CPU instead of sleeping. math.huge sleeps for ever. */
static int core_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  while (s > 0) {
    double step = s > 86400.0 ? 86400.0 : s;
    struct timespec ts = { (time_t)step, (long)((step - (double)(time_t)step) * 1e9) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    s -= step;
  }
  return 0;
}

/* core.yieldable() -> the running coroutine when it can yield (not the main thread, no C call
 * in between), else nothing: what coroutine.running plus coroutine.isyieldable tell, in one
 * call instead of two (the scheduler asks once per wait) */
static int core_yieldable(lua_State *L) {
  if (lua_pushthread(L) || !lua_isyieldable(L)) return 0;
  return 1;
}

/* core.isatty(fd) -> boolean (progress bars draw only on a terminal) */
static int core_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)) == 1);
  return 1;
}

/* What path names, links followed: "file", "directory", "FIFO", "socket", "character device",
 * "block device" or "special file"; NULL when stat fails (errno says why). Files llmux reads
 * by path (a CA file, images) must be regular: opening a FIFO blocks until a writer comes, and
 * a device may never end. */
const char *lmx_file_kind(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return NULL;
  if (S_ISREG(st.st_mode)) return "file";
  if (S_ISDIR(st.st_mode)) return "directory";
  if (S_ISFIFO(st.st_mode)) return "FIFO";
  if (S_ISSOCK(st.st_mode)) return "socket";
  if (S_ISCHR(st.st_mode)) return "character device";
  if (S_ISBLK(st.st_mode)) return "block device";
  return "special file";
}

/* core.file_kind(path) -> kind | nil, message (see lmx_file_kind) */
static int core_file_kind(lua_State *L) {
  const char *kind = lmx_file_kind(luaL_checkstring(L, 1));
  if (!kind) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushstring(L, kind);
  return 1;
}

/* Registers metatable name with meta's metamethods and methods as its __index. Both get the
 * metatable as upvalue 1, for lmx_checkudata (a Request's __gc runs once per request). */
void lmx_newclass(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  lua_pushvalue(L, -1);
  luaL_setfuncs(L, meta, 1);
  lua_newtable(L);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, methods, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

/* luaL_checkudata without its registry lookup by name (a string hash per call) when the
 * calling function carries the class's metatable as upvalue 1, as methods of lmx_newclass do;
 * anything else takes luaL_checkudata's path and its error message. (A function without
 * upvalues needs no test of its own: lua_rawequal finds no valid value to compare there.) */
void *lmx_checkudata(lua_State *L, int i, const char *name) {
  void *p = lua_touserdata(L, i);
  if (p && lua_getmetatable(L, i)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same) return p;
  }
  return luaL_checkudata(L, i, name);
}

/* core.forks() -> n: fork()s this process went through; a change means "I am a child" */
static int core_forks(lua_State *L) {
  lua_pushinteger(L, lmx_forks);
  return 1;
}

/* Process-wide, once, whichever state and thread loads the module first (a host may require
 * llmux in several lua_States on several threads at the same time): curl_global_init, which is
 * thread-safe only in a libcurl whose curl_version_info says CURL_VERSION_THREADSAFE (7.84 and
 * later when built with atomics; Debian's 7.88 is), and curl_version(), which rebuilds its text
 * in a static buffer on every call (initialising libldap's globals unguarded on the way): two
 * states loading at once read each other's half-written text. The text is kept here, copied
 * once. A failed init stays failed (no memory, no TLS library): every require says so. */
static CURLcode global_rc;
static char curl_text[512];   /* curl_version builds at most 300 bytes */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static void global_init(void) {
  global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (global_rc == CURLE_OK) snprintf(curl_text, sizeof curl_text, "%s", curl_version());
}

LMX_API int luaopen_llmux_core(lua_State *L);
LMX_API int luaopen_llmux_core(lua_State *L) {
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK)
    return luaL_error(L, "llmux: curl_global_init failed: %s", curl_easy_strerror(global_rc));
  lmx_pool_init();
  lua_newtable(L);
  lmx_request_open(L);   /* before the Multi: m:request holds the Request and Template classes */
  lmx_multi_open(L);
  lmx_json_open(L);
  lmx_json_encode_open(L);
  lmx_sse_open(L);
  lmx_b64_open(L);
  lmx_image_open(L);
  lmx_pool_open(L);
  lua_pushcfunction(L, core_forks);
  lua_setfield(L, -2, "forks");
  lua_pushcfunction(L, core_now);
  lua_setfield(L, -2, "now");
  lua_pushcfunction(L, core_sleep);
  lua_setfield(L, -2, "sleep");
  lua_pushcfunction(L, core_yieldable);
  lua_setfield(L, -2, "yieldable");
  lua_pushcfunction(L, core_isatty);
  lua_setfield(L, -2, "isatty");
  lua_pushcfunction(L, core_file_kind);
  lua_setfield(L, -2, "file_kind");
  lua_pushliteral(L, LMX_VERSION);
  lua_setfield(L, -2, "_VERSION");
  lua_pushstring(L, curl_text);
  lua_setfield(L, -2, "curl_version");
  return 1;
}

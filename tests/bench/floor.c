/* The benchmark floor: the leanest client we know how to write for llmux's workload, so the
 * bench can say how much CPU llmux spends per request on top of libcurl itself.
 *
 *   floor URL N CONCURRENCY [json|http]
 *
 * POSTs N small chat requests to URL (the full .../chat/completions address) with CONCURRENCY
 * transfers in flight over keep-alive HTTP/1.1, driven by the textbook curl_multi_perform +
 * curl_multi_poll loop. That loop measured cheaper here than the socket API with epoll (which
 * llmux's core uses): poll hands back every ready socket in one call, while with the socket
 * API every transfer costs an EPOLL_CTL_ADD and an EPOLL_CTL_DEL, as curl starts and stops
 * watching its connection. Each transfer slot keeps its easy handle and response buffer for
 * the whole run.
 *
 * json (the default, the floor of the CPU target): the work llmux does for a chat, in C. The
 * request body is built as a tree and printed with cJSON (the smallest of Debian's C JSON
 * libraries; jansson measured 1.4x its instructions here), the answer is parsed into a cJSON
 * tree, and the request passes when it ends with status 200 and choices[1].message.content is
 * the echo of its own message.
 *
 * http: the HTTP part alone, a lower bound no JSON client reaches: the body is one snprintf
 * into the slot and the answer passes when its bytes hold the quoted echo (memmem), nothing
 * is decoded.
 *
 * Prints one line of key=value pairs on stdout:
 *   requests= failures= wall_s= cpu_us_per_req= sys_us_per_req= peak_rss_kib=
 * where CPU is user+sys of this process over the request loop only (sys: the kernel part).
 * Exit status 0 when every request passed, 1 when some failed, 2 on a setup error. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <curl/curl.h>
#include <cjson/cJSON.h>

#define SHOW_FAILURES 3   /* failures described on stderr; the rest are only counted */

typedef struct {
  CURL *easy;
  long idx;               /* request number, which its message and echo carry */
  char body[128];         /* http: the request body; CURLOPT_POSTFIELDS points here */
  char *jbody;            /* json: the printed request body, freed at the next request */
  char want[64];          /* http: the quoted echo a correct answer holds; json: the echo */
  size_t wantlen;
  char *resp;             /* response body, kept across requests */
  size_t n, cap;
} Slot;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double tv_us(struct timeval tv) {
  return (double)tv.tv_sec * 1e6 + (double)tv.tv_usec;
}

/* CPU time of this process so far, user and kernel, in microseconds. */
static void cpu_us(double *user, double *sys) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  *user = tv_us(ru.ru_utime);
  *sys = tv_us(ru.ru_stime);
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
  Slot *s = ud;
  size_t len = size * nmemb;
  if (len > s->cap - s->n) {
    size_t cap = s->cap ? s->cap : 1024;
    while (cap - s->n < len) cap *= 2;
    char *np = realloc(s->resp, cap);
    if (!np) return 0;   /* a short count fails the transfer */
    s->resp = np;
    s->cap = cap;
  }
  memcpy(s->resp + s->n, p, len);
  s->n += len;
  return len;
}

static int use_json = 1;

/* json: the request body of message `text`, printed by cJSON from a tree, as a C client
 * builds its request (NULL when out of memory). */
static char *json_body(const char *text) {
  cJSON *root = cJSON_CreateObject(), *msgs, *m;
  if (!root || !cJSON_AddStringToObject(root, "model", "m")
      || !(msgs = cJSON_AddArrayToObject(root, "messages")) || !(m = cJSON_CreateObject())) {
    cJSON_Delete(root);
    return NULL;
  }
  cJSON_AddItemToArray(msgs, m);
  char *out = cJSON_AddStringToObject(m, "role", "user")
              && cJSON_AddStringToObject(m, "content", text) ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  return out;
}

/* Points slot s at request idx and hands its easy handle to the multi. */
static int start(CURLM *cm, Slot *s, long idx) {
  size_t len;
  s->idx = idx;
  s->n = 0;
  if (use_json) {
    char text[32];
    snprintf(text, sizeof text, "q%ld", idx);
    s->wantlen = (size_t)snprintf(s->want, sizeof s->want, "echo: %s", text);
    free(s->jbody);
    if (!(s->jbody = json_body(text))) return -1;
    len = strlen(s->jbody);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->jbody);
  } else {
    len = (size_t)snprintf(s->body, sizeof s->body,
                     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q%ld\"}]}",
                     idx);
    s->wantlen = (size_t)snprintf(s->want, sizeof s->want, "\"echo: q%ld\"", idx);
  }
  curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE, (long)len);
  return curl_multi_add_handle(cm, s->easy) == CURLM_OK ? 0 : -1;
}

/* json: whether body (n bytes) parses and its choices[1].message.content is want. */
static int json_passes(const char *body, size_t n, const char *want) {
  cJSON *res = cJSON_ParseWithLength(body, n);
  cJSON *choice = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(res, "choices"), 0);
  cJSON *content = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(choice, "message"), "content");
  int ok = cJSON_IsString(content) && strcmp(content->valuestring, want) == 0;
  cJSON_Delete(res);
  return ok;
}

/* Judges one finished transfer: 0 passed, 1 failed. */
static int judge(Slot *s, CURLcode rc, long *shown) {
  long status = 0;
  curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
  if (rc == CURLE_OK && status == 200
      && (use_json ? json_passes(s->resp, s->n, s->want)
                   : memmem(s->resp, s->n, s->want, s->wantlen) != NULL)) return 0;
  if ((*shown)++ < SHOW_FAILURES)
    fprintf(stderr, "floor: request %ld failed: %s, status %ld, body %.*s\n", s->idx,
            curl_easy_strerror(rc), status, (int)(s->n < 200 ? s->n : 200),
            s->resp ? s->resp : "");
  return 1;
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[4], "http") == 0) use_json = 0;
  if (argc != 4 && !(argc == 5 && (!use_json || strcmp(argv[4], "json") == 0))) {
    fprintf(stderr, "usage: %s URL N CONCURRENCY [json|http]\n", argv[0]);
    return 2;
  }
  const char *url = argv[1];
  long n = strtol(argv[2], NULL, 10), conc = strtol(argv[3], NULL, 10);
  if (n < 1 || conc < 1) {
    fprintf(stderr, "floor: N and CONCURRENCY must be >= 1\n");
    return 2;
  }
  if (conc > n) conc = n;

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 2;
  CURLM *cm = curl_multi_init();
  if (!cm) return 2;

  /* The header lines llmux's client sends: the bench's key, JSON, and a User-Agent as long as
   * llmux's ("llmux/0.1.0"). curl 7.88 writes a request's headers byte by byte through its
   * printf, so each byte fewer would be work the floor skips and llmux does not. */
  struct curl_slist *hdrs = curl_slist_append(NULL, "Authorization: Bearer sk-bench");
  hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
  hdrs = curl_slist_append(hdrs, "User-Agent: llmux-floor");
  Slot *slots = calloc((size_t)conc, sizeof *slots);
  if (!hdrs || !slots) return 2;
  /* Options are set once: a handle keeps them across remove/add, only the body size changes. */
  for (long i = 0; i < conc; i++) {
    Slot *s = &slots[i];
    if (!(s->easy = curl_easy_init())) return 2;
    curl_easy_setopt(s->easy, CURLOPT_URL, url);
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(s->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->easy, CURLOPT_PRIVATE, (char *)s);
    curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
  }

  double t0 = now_s(), u0, s0;
  cpu_us(&u0, &s0);
  long next = 0, done = 0, failures = 0, shown = 0;
  int running = 0;
  for (long i = 0; i < conc; i++) {
    if (start(cm, &slots[i], next++) != 0) return 2;
  }
  while (done < n) {
    if (curl_multi_perform(cm, &running) != CURLM_OK) return 2;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(cm, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      Slot *s;
      CURLcode rc = msg->data.result;   /* copied: msg dies with remove_handle */
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
      curl_multi_remove_handle(cm, s->easy);
      failures += judge(s, rc, &shown);
      done++;
      if (next < n && start(cm, s, next++) != 0) return 2;
    }
    /* The timeout only bounds a stall: the loop ends on the request count, not on time. */
    if (done < n && curl_multi_poll(cm, NULL, 0, 1000, NULL) != CURLM_OK) return 2;
  }
  double wall = now_s() - t0, u1, s1;
  cpu_us(&u1, &s1);

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("requests=%ld failures=%ld wall_s=%.3f cpu_us_per_req=%.2f sys_us_per_req=%.2f "
         "peak_rss_kib=%ld\n", n, failures, wall, (u1 - u0 + s1 - s0) / (double)n,
         (s1 - s0) / (double)n, ru.ru_maxrss);

  for (long i = 0; i < conc; i++) {
    curl_easy_cleanup(slots[i].easy);
    free(slots[i].resp);
    free(slots[i].jbody);
  }
  free(slots);
  curl_slist_free_all(hdrs);
  curl_multi_cleanup(cm);
  curl_global_cleanup();
  return failures ? 1 : 0;
}

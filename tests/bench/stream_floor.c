/* The streaming benchmark floor: libcurl multi reading chat event streams with framing only
 * (events are counted at their blank lines, nothing is decoded), so the bench can say what
 * llmux spends per event on top of libcurl.
 *
 *   stream_floor URL MODEL N CONCURRENCY EVENTS
 *
 * POSTs N streaming chat requests for MODEL to URL with CONCURRENCY in flight over keep-alive
 * HTTP/1.1. A stream passes when it ends with status 200 after exactly EVENTS events.
 * Prints: streams= failures= events= wall_s= cpu_us_per_event= peak_rss_kib=
 * Exit status 0 when every stream passed, 1 when some failed, 2 on a setup error. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <curl/curl.h>

typedef struct {
  CURL *easy;
  long events;
  int nl;        /* the last byte seen was an LF: another LF ends an event */
} Slot;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_us(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec * 1e6 + (double)ru.ru_utime.tv_usec
         + (double)ru.ru_stime.tv_sec * 1e6 + (double)ru.ru_stime.tv_usec;
}

/* Framing only: an event ends at "\n\n" (the mock writes LF line ends). */
static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
  Slot *s = ud;
  size_t len = size * nmemb;
  const char *q = p, *end = p + len;
  if (s->nl && len && *q == '\n') { s->events++; q++; }
  s->nl = 0;
  while (q < end && (q = memchr(q, '\n', (size_t)(end - q)))) {
    if (q + 1 < end) {
      if (q[1] == '\n') { s->events++; q += 2; continue; }
    } else {
      s->nl = 1;
    }
    q++;
  }
  return len;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s URL MODEL N CONCURRENCY EVENTS\n", argv[0]);
    return 2;
  }
  const char *url = argv[1], *model = argv[2];
  long n = strtol(argv[3], NULL, 10), conc = strtol(argv[4], NULL, 10);
  long want = strtol(argv[5], NULL, 10);
  if (n < 1 || conc < 1) return 2;
  if (conc > n) conc = n;
  char body[256];
  snprintf(body, sizeof body, "{\"model\":\"%s\",\"stream\":true,\"messages\":"
           "[{\"role\":\"user\",\"content\":\"bench\"}]}", model);

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 2;
  CURLM *cm = curl_multi_init();
  struct curl_slist *hdrs = curl_slist_append(NULL, "Authorization: Bearer sk-bench-floor");
  hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
  Slot *slots = calloc((size_t)conc, sizeof *slots);
  if (!cm || !hdrs || !slots) return 2;
  for (long i = 0; i < conc; i++) {
    Slot *s = &slots[i];
    if (!(s->easy = curl_easy_init())) return 2;
    curl_easy_setopt(s->easy, CURLOPT_URL, url);
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(s->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->easy, CURLOPT_PRIVATE, (char *)s);
    curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
  }
  double t0 = now_s(), c0 = cpu_us();
  long started = 0, done = 0, failures = 0, events = 0;
  int running = 0;
  for (long i = 0; i < conc; i++, started++) {
    slots[i].events = 0;
    slots[i].nl = 0;
    if (curl_multi_add_handle(cm, slots[i].easy) != CURLM_OK) return 2;
  }
  while (done < n) {
    if (curl_multi_perform(cm, &running) != CURLM_OK) return 2;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(cm, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      Slot *s;
      CURLcode rc = msg->data.result;
      long status = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
      curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
      curl_multi_remove_handle(cm, s->easy);
      if (rc != CURLE_OK || status != 200 || s->events != want) {
        if (failures++ < 3)
          fprintf(stderr, "stream_floor: %s, status %ld, %ld events\n", curl_easy_strerror(rc),
                  status, s->events);
      }
      events += s->events;
      done++;
      if (started < n) {
        s->events = 0;
        s->nl = 0;
        started++;
        if (curl_multi_add_handle(cm, s->easy) != CURLM_OK) return 2;
      }
    }
    if (done < n && curl_multi_poll(cm, NULL, 0, 1000, NULL) != CURLM_OK) return 2;
  }
  double wall = now_s() - t0, cpu = cpu_us() - c0;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("streams=%ld failures=%ld events=%ld wall_s=%.3f cpu_us_per_event=%.3f "
         "peak_rss_kib=%ld\n", n, failures, events, wall, cpu / (double)(events ? events : 1),
         ru.ru_maxrss);
  for (long i = 0; i < conc; i++) curl_easy_cleanup(slots[i].easy);
  free(slots);
  curl_slist_free_all(hdrs);
  curl_multi_cleanup(cm);
  curl_global_cleanup();
  return failures ? 1 : 0;
}

/* C test of base64's first use from several threads at once (make pooltest runs it under
 * ThreadSanitizer): the tables are built on first use, and 8 threads released together by a
 * barrier all make that first use. Whether two of them overlap is up to the scheduler, so each
 * of TRIALS forked children starts afresh, with unbuilt tables; a child that sees a wrong
 * result, or in which ThreadSanitizer reports a race (its exit code is then 66), fails the
 * test. Children are forked before any thread exists. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "b64.h"

#define THREADS 8
#define TRIALS 20

static pthread_barrier_t start;
static int wrong;

static void *first_use(void *arg) {
  char enc[4];
  unsigned char dec[3];
  lmx_B64Err err;
  (void)arg;
  pthread_barrier_wait(&start);
  lmx_b64_encode((const unsigned char *)"abc", 3, enc);
  if (memcmp(enc, "YWJj", 4) != 0 || lmx_b64_decode("YWJj", 4, dec, 0, &err) != 3 ||
      memcmp(dec, "abc", 3) != 0)
    __atomic_store_n(&wrong, 1, __ATOMIC_RELAXED);
  return NULL;
}

static int trial(void) {
  pthread_t t[THREADS];
  pthread_barrier_init(&start, NULL, THREADS);
  for (int i = 0; i < THREADS; i++)
    if (pthread_create(&t[i], NULL, first_use, NULL) != 0) return 2;
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  return wrong;
}

int main(void) {
  for (int i = 0; i < TRIALS; i++) {
    int st;
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) _exit(trial());
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "b64_threads_test: trial %d failed (status %d)\n", i, st);
      return 1;
    }
  }
  printf("b64_threads_test: %d trials of %d threads ok\n", TRIALS, THREADS);
  return 0;
}

// keep_warm (see keep_warm.h). Measured on a PVM guest (session 23; native-notes/fuse-lowlevel.md
// "A thread keeps the process warm"): a thread of an idle Node process, woken by a pipe right after
// another program's start-up (python3 -c ...), answered in 313-443 µs where one in a C program
// answered in 112, and in 56-81 µs once any thread of that Node process woke every 5-50 ms (every
// 250 ms: partly, every second: not at all). What makes it dear is the host's, not ours (the
// guest counts the time as the thread running); the daemon's first request after a build step
// or a shell's command waited that long (a second 1-byte append's OPEN: median 630 µs against
// fuse-overlayfs's 152-167; with a 100 ms tick, 120-149; 50 ms, 131-167). So while requests come,
// and for a while after, this thread wakes every LAYERFS_KEEP_WARM_MS (default 100; a wake costs
// ~136 µs of CPU here, the host's work again); after KEEP_WARM_TICKS ticks without one (10 s by
// default) it waits, costing nothing, until the reader's next request wakes it.
#define _GNU_SOURCE
#include "keep_warm.h"
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#define KEEP_WARM_TICKS 100

static void deadline_in(struct timespec *t, long ms) {
  clock_gettime(CLOCK_MONOTONIC, t);
  t->tv_sec += ms / 1000;
  t->tv_nsec += (ms % 1000) * 1000000L;
  if (t->tv_nsec >= 1000000000L) t->tv_sec++, t->tv_nsec -= 1000000000L;
}

static void *keep_warm_main(void *arg) {
  KeepWarm *k = arg;
  // signals for the process go to Node's threads, as the reader leaves them
  sigset_t mask;
  sigfillset(&mask);
  pthread_sigmask(SIG_SETMASK, &mask, NULL);
  uint64_t seen = atomic_load(k->requests);
  int idle = KEEP_WARM_TICKS; // starts asleep: a standby's prepared session has no requests yet
  pthread_mutex_lock(&k->lock);
  while (!atomic_load(&k->stopping)) {
    if (idle >= KEEP_WARM_TICKS) {
      atomic_store(&k->asleep, 1);
      // a request that came before the flag was up did not wake us: look once more
      if (atomic_load(k->requests) == seen) {
        while (atomic_load(&k->asleep) && !atomic_load(&k->stopping)) pthread_cond_wait(&k->cond, &k->lock);
      }
      atomic_store(&k->asleep, 0);
      seen = atomic_load(k->requests);
      idle = 0;
      continue;
    }
    struct timespec t;
    deadline_in(&t, k->tick_ms);
    pthread_cond_timedwait(&k->cond, &k->lock, &t); // the tick: the process runs, nothing more
    uint64_t now = atomic_load(k->requests);
    if (now != seen) seen = now, idle = 0;
    else idle++;
  }
  pthread_mutex_unlock(&k->lock);
  return NULL;
}

KeepWarm *keep_warm_start(const _Atomic uint64_t *requests) {
  const char *env = getenv("LAYERFS_KEEP_WARM_MS");
  long ms = env && *env ? atol(env) : 100;
  if (ms <= 0) return NULL;
  KeepWarm *k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->tick_ms = ms;
  k->requests = requests;
  atomic_init(&k->asleep, 1);
  atomic_init(&k->stopping, 0);
  pthread_mutex_init(&k->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&k->cond, &ca);
  pthread_condattr_destroy(&ca);
  if (pthread_create(&k->thread, NULL, keep_warm_main, k) != 0) {
    pthread_cond_destroy(&k->cond);
    pthread_mutex_destroy(&k->lock);
    free(k);
    return NULL;
  }
  pthread_setname_np(k->thread, "layerfs-warm"); // for ps -L and tests
  return k;
}

void keep_warm_wake(KeepWarm *k) {
  pthread_mutex_lock(&k->lock);
  atomic_store(&k->asleep, 0);
  pthread_cond_signal(&k->cond);
  pthread_mutex_unlock(&k->lock);
}

void keep_warm_stop(KeepWarm *k) {
  if (!k) return;
  pthread_mutex_lock(&k->lock);
  atomic_store(&k->stopping, 1);
  pthread_cond_signal(&k->cond);
  pthread_mutex_unlock(&k->lock);
  pthread_join(k->thread, NULL);
  pthread_cond_destroy(&k->cond);
  pthread_mutex_destroy(&k->lock);
  free(k);
}

// A thread that wakes the daemon's process every 100 ms (by default) while its mount is in
// use (see keep_warm.c for why). keep_warm_request() is on the reader's path: a counter and a flag.
#ifndef LAYERFS_KEEP_WARM_H
#define LAYERFS_KEEP_WARM_H
#include <pthread.h>
#include <stdatomic.h>

typedef struct {
  atomic_uint requests; // bumped per request; the thread ticks on while it moves
  atomic_int asleep;    // the thread waits for a request (no ticks)
  atomic_int stopping;
  long tick_ms;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_t thread;
} KeepWarm;

// Started asleep (it ticks once requests come); NULL when LAYERFS_KEEP_WARM_MS=0 or no thread.
KeepWarm *keep_warm_start(void);
void keep_warm_wake(KeepWarm *k);
// Ends the thread (at once, not at its next tick) and frees it; NULL is fine.
void keep_warm_stop(KeepWarm *k);

// A request came: the thread ticks on (woken if asleep).
static inline void keep_warm_request(KeepWarm *k) {
  if (!k) return;
  atomic_fetch_add(&k->requests, 1);
  if (atomic_load(&k->asleep)) keep_warm_wake(k);
}

#endif

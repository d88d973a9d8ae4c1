// Monotonic time in nanoseconds, for the reader's polling trials and its timings (fuse_ll.c) and
// copy_range's piece-size trials (copy_range.c), both built into one addon.
#ifndef LAYERFS_NOW_NS_H
#define LAYERFS_NOW_NS_H
#include <stdint.h>
#include <time.h>

static inline int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

#endif

// copy_range: a file's bytes copied from one descriptor to another by the kernel, the fastest way
// this machine has for where they lie (see copy_range.c). Shared by layerfs_sys (copy-ups run by
// JS on Node's thread) and layerfs_fuse (copy-ups the reader thread runs from a plan).
#ifndef LAYERFS_COPY_RANGE_H
#define LAYERFS_COPY_RANGE_H
#include <stdint.h>

// Copies `len` bytes from in@off_in to out@off_out: the count copied (less where the source ended
// early), or -1 with errno and *what naming the call that failed.
int64_t copy_range(int in, int64_t off_in, int out, int64_t off_out, int64_t len, const char **what);

#endif

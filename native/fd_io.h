// Whole reads and writes on a descriptor, through EINTR and short transfers (the launcher and the
// standby's gate speak the same framed protocol).
#ifndef LAYERFS_FD_IO_H
#define LAYERFS_FD_IO_H
#include <stddef.h>

// 0, or -1 on an error.
int write_all(int fd, const void *p, size_t n);
// 1: got n bytes; 0: end of stream before any byte; -1: an error or a short read.
int read_all(int fd, void *p, size_t n);

#endif

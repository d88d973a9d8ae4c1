#ifndef LAYERFS_SETIDS_H
#define LAYERFS_SETIDS_H
#include <stdint.h>

// What the VFS takes from a regular file's mode when a caller without CAP_FSETID writes to or
// truncates it (setattr_should_drop_sgid): set-user-ID always, set-group-ID where group execute is
// set or the caller (fsgid `gid`, process `pid`) is not in the file's group. Under
// HANDLE_KILLPRIV_V2 the kernel leaves that to the filesystem (native/fuse_ll.c io_writev), and
// the daemon's own syscalls keep the bits when it runs as root, so they are dropped here: on the
// file open at `fd`, or, with fd < 0, at `path` (not followed). 1 if bits went, 0 if there were
// none to drop, -errno if the file could not be looked at or changed.
int drop_setids(int fd, const char *path, uint32_t gid, uint32_t pid);

#endif

// copy_range (see copy_range.h). Measured here (ext4 on virtio, the source in the page cache;
// native-notes/fuse-lowlevel.md "Copy-up: how the bytes move"): a clone where the filesystem can
// (FICLONERANGE: xfs, btrfs), else sendfile(2), whose kernel loop moves 64 KiB at a time through
// the task's own pipe and takes the source at any offset (a tar member's data starts at any
// 512-byte boundary). A 64 MiB member: sendfile 17.4-18 ms whatever the machine did before, where
// a 1 MiB pipe of our own took 12-14 ms right after another copy but 110-190 ms after 3 s idle (the
// writes' 1 MiB folios then come from memory the balloon handed back to the host), and
// copy_file_range (which moves big chunks too) 89-157 ms; 1 GiB: 0.53-0.64 s against 1.3-3.0 s.
// The buffer where neither works, and for up to SMALL_COPY bytes: one pread and one pwrite cost
// less (a 4 KiB member took 16-40 µs through a pipe in a first copy-up).
#define _GNU_SOURCE
#include "copy_range.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <linux/fs.h>

#define SMALL_COPY (64 << 10)

// The buffer is kept per thread (Node's thread and the FUSE reader thread copy): a fresh 1 MiB
// buffer cost its page faults on every copy-up (1 MiB: 0.9-1.6 ms fresh, 0.25 ms warm).
static __thread char *buffer = NULL;

// The whole range cloned (shared blocks, nothing copied), where the filesystem can: 1, else 0.
static int clone_range(int in, int64_t off_in, int out, int64_t off_out, int64_t len) {
  struct file_clone_range r = { .src_fd = in, .src_offset = (uint64_t)off_in, .src_length = (uint64_t)len, .dest_offset = (uint64_t)off_out };
  return ioctl(out, FICLONERANGE, &r) == 0;
}

int64_t copy_range(int in, int64_t off_in, int out, int64_t off_out, int64_t len, const char **what) {
  if (len > SMALL_COPY && ((off_in ^ off_out) & 4095) == 0 && clone_range(in, off_in, out, off_out, len)) return len;
  int64_t done = 0;
  enum { SENDFILE, BUFFER } how = len <= SMALL_COPY ? BUFFER : SENDFILE;
  // sendfile writes at out's file position: set for the copy, and put back after it
  off_t kept = -1;
  if (how == SENDFILE && ((kept = lseek(out, 0, SEEK_CUR)) < 0 || lseek(out, off_out, SEEK_SET) < 0)) how = BUFFER;
  while (done < len) {
    ssize_t n;
    size_t want = (size_t)(len - done);
    if (how == SENDFILE) {
      off_t a = off_in + done;
      n = sendfile(out, in, &a, want > 0x7ffff000 ? 0x7ffff000 : want);
      // a descriptor sendfile cannot take: the buffer copies the rest, where the file now stands
      if (n < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) { how = BUFFER; continue; }
    } else {
      const size_t cap = 1 << 20;
      if (!buffer && !(buffer = malloc(cap))) { errno = ENOMEM; *what = "copyRange"; return -1; }
      if (want > cap) want = cap;
      n = pread(in, buffer, want, off_in + done);
      if (n > 0) {
        ssize_t w = 0;
        while (w < n) { ssize_t k = pwrite(out, buffer + w, n - w, off_out + done + w); if (k < 0) { if (errno == EINTR) continue; n = -1; break; } w += k; }
      }
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      if (kept >= 0) lseek(out, kept, SEEK_SET);
      errno = e;
      *what = how == SENDFILE ? "sendfile" : "copyRange";
      return -1;
    }
    if (n == 0) break; // the source ended early
    done += n;
  }
  if (kept >= 0) lseek(out, kept, SEEK_SET);
  return done;
}

// copy_range (see copy_range.h). Measured on the bench's tar (ext4, page cache warm;
// native-notes/fuse-lowlevel.md "Copy-up"): where both offsets lie alike within a page,
// copy_file_range (the kernel copies, or clones where the filesystem can); where they do not (a tar
// member's data starts at any 512-byte boundary), splice through a 1 MiB pipe, which beats both
// copy_file_range (~40% slower there: 1 GiB 450 vs 295 ms, 64 MiB 28 vs 18.6) and a pread/pwrite
// buffer (64 MiB 19.7, 1 MiB 0.36 vs 0.29). The buffer where neither works, and for up to
// SMALL_COPY bytes: one pread and one pwrite cost less than two splices (a 4 KiB member took 16-40
// µs through the pipe in a first copy-up).
#define _GNU_SOURCE
#include "copy_range.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#define SMALL_COPY (64 << 10)

// The pipe and the buffer are kept per thread (Node's thread and the FUSE reader thread copy):
// a fresh 1 MiB buffer cost its page faults on every copy-up (1 MiB: 0.9-1.6 ms fresh, 0.25 ms
// warm). The pipe is -1 until first needed, and again after an error that may have left bytes in it.
static __thread int splice_pipe[2] = { -1, -1 };
static __thread size_t splice_pipe_size = 0;
static __thread char *buffer = NULL;

static void drop_splice_pipe(void) {
  if (splice_pipe[0] >= 0) { close(splice_pipe[0]); close(splice_pipe[1]); }
  splice_pipe[0] = splice_pipe[1] = -1;
}

// Up to `len` bytes through the kept pipe: the count copied, 0 at the source's end, or -1 with
// errno (the pipe is then dropped, as it may hold bytes).
static ssize_t splice_through_pipe(int in, int64_t off_in, int out, int64_t off_out, size_t len) {
  if (splice_pipe[0] < 0) {
    if (pipe2(splice_pipe, O_CLOEXEC) < 0) return -1;
    // 1 MiB is the default pipe-max-size; a smaller pipe only costs more round trips
    int got = fcntl(splice_pipe[1], F_SETPIPE_SZ, 1 << 20);
    if (got < 0) got = fcntl(splice_pipe[1], F_GETPIPE_SZ);
    splice_pipe_size = got > 0 ? (size_t)got : 65536;
  }
  loff_t a = off_in;
  ssize_t n = splice(in, &a, splice_pipe[1], NULL, len < splice_pipe_size ? len : splice_pipe_size, SPLICE_F_MOVE);
  if (n <= 0) { if (n < 0) { int e = errno; drop_splice_pipe(); errno = e; } return n; }
  for (ssize_t moved = 0; moved < n;) {
    loff_t b = off_out + moved;
    ssize_t k = splice(splice_pipe[0], NULL, out, &b, (size_t)(n - moved), SPLICE_F_MOVE);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) { int e = k < 0 ? errno : EIO; drop_splice_pipe(); errno = e; return -1; }
    moved += k;
  }
  return n;
}

int64_t copy_range(int in, int64_t off_in, int out, int64_t off_out, int64_t len, const char **what) {
  int64_t done = 0;
  enum { COPY_FILE_RANGE, SPLICE, BUFFER } how = len <= SMALL_COPY ? BUFFER : ((off_in ^ off_out) & 4095) == 0 ? COPY_FILE_RANGE : SPLICE;
  while (done < len) {
    ssize_t n;
    size_t want = (size_t)(len - done);
    if (how == COPY_FILE_RANGE) {
      loff_t a = off_in + done, b = off_out + done;
      n = copy_file_range(in, &a, out, &b, want, 0);
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) { how = BUFFER; continue; }
    } else if (how == SPLICE) {
      n = splice_through_pipe(in, off_in + done, out, off_out + done, want);
      // a descriptor that cannot splice (EINVAL), or no pipe to be had: the buffer copies the rest
      if (n < 0 && (errno == EINVAL || errno == EMFILE || errno == ENFILE || errno == ENOMEM)) { how = BUFFER; continue; }
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
      *what = how == SPLICE ? "splice" : how == BUFFER ? "copyRange" : "copy_file_range";
      return -1;
    }
    if (n == 0) break; // the source ended early
    done += n;
  }
  return done;
}

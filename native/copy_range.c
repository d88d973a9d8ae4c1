// copy_range (see copy_range.h). Measured here (ext4 on virtio, the source in the page cache;
// native-notes/fuse-lowlevel.md "Copy-up: how the bytes move"): a clone where the filesystem can
// (FICLONERANGE: xfs, btrfs), else splice through a pipe of our own in pieces of 64 KiB (or 256 KiB,
// below), each ending on a boundary of its size in the output. A tar member's data starts at any 512-byte boundary:
// sendfile(2)'s own 16-page pipe then takes a little less than 64 KiB per step and every write to
// the output starts inside a page; a 64 MiB member took 30-34 ms that way against 22-31 in
// aligned pieces, as much as sendfile of an extracted (aligned) file, what fuse-overlayfs copies.
// Bigger pieces cost less where a syscall is dear, and more where the output's page cache, which
// comes in folios the size of the writes, comes from memory the balloon handed back to the host
// (there, after the machine idled: a 1 MiB pipe 110-190 ms; 128 KiB pieces 42-276 ms in one hour
// where 64 KiB ones took 27-49; on another machine of the kind, 256 KiB pieces 12-18 ms where
// 64 KiB ones took 18-25). So a copy of up to WATCHED_COPY tries both sizes on its first 4 MiB,
// in alternate 512 KiB groups, and copies on in the cheaper. Longer copies are watched (session 29):
// pieces that end on the output's boundaries make big folios, and big folios come from free 2 MiB
// blocks, which this guest hands back to its host within a second of their freeing; a page of them
// then faults in the host at its first write (0.5 GB/s where 5.7 GB/s otherwise: 1 GiB in pieces
// 372 ms-1.1 s in session 26). copy_file_range of a tar member (the kernel's own splice loop; each
// of its writes starts inside a page) writes small folios, from memory never handed back: 1 GiB
// 206-297 ms whatever happened before. So a longer copy starts in 256 KiB pieces, times a 4 MiB
// group of them and then one by copy_file_range, and goes on in pieces until two groups in a row
// take more than 2.5x copy_file_range's (the first group, which also pays for the pipe, counts as
// one); copy_file_range takes the rest. Where no memory goes back to a host the pieces should run
// the whole copy, at the aligned pace. 1 GiB in the mount, rotating with copy_file_range alone
// and fuse-overlayfs: 193-214 ms against 207-234 (6 rounds), 189-229 against 207-212 after 3 s
// idle (4); right after a copy in big folios was freed (bare copies): 162-221 against 202-226
// (5). 64 and 128 MiB (bare, alternating): as the two-size trial (64 MiB 10-11, 9-12 after 2 s
// idle), where copy_file_range took 14-17.
// sendfile where no pipe is to be had, or copy_file_range refuses (another filesystem: EXDEV);
// the buffer where neither works, and for up to SMALL_COPY bytes: one pread
// and one pwrite cost less (a 4 KiB member took 16-40 µs through a pipe in a first copy-up).
// Before a longer copy into ext4, its blocks are allocated at once (fallocate, the size kept):
// each page written then finds its block mapped instead of reserving one (session 27, the tar's
// members into a fresh file after `sync`, alternating, median: 1 GiB 191 against 212 ms, 64 MiB
// 8.7 against 10.0, 1 MiB 0.139 against 0.151). Not on tmpfs, where it would zero every page first,
// nor where it was not measured.
#define _GNU_SOURCE
#include "copy_range.h"
#include "now_ns.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/vfs.h>
#include <linux/fs.h>
#include <linux/magic.h>

#define SMALL_COPY (64 << 10)
#define WATCHED_COPY (16LL << 20)   // longer copies are watched (see above)
#define PIECE (64 << 10)
#define BIG_PIECE (256 << 10)
#define GROUP (512 << 10)          // a trial's unit: pieces of either size end on its boundaries
#define TRIAL_GROUPS 8             // alternating, 64 KiB pieces first
#define WATCHED_GROUP (4 << 20)    // a long copy's pieces are timed in groups of this much
#define SLOW_PIECES_X2 5           // a group of pieces slower than this many halves of copy_file_range's is slow

// The pipe and the buffer are kept per thread (Node's thread and the FUSE reader thread copy): a
// fresh 1 MiB buffer cost its page faults on every copy-up (1 MiB: 0.9-1.6 ms fresh, 0.25 ms warm).
// The pipe is -1 until first needed, and again after an error that may have left bytes in it. Both
// go when their thread ends (a reader thread ends with its mount).
static __thread int piece_pipe[2] = { -1, -1 };
static __thread int pipe_takes_big = 0; // the pipe holds an unaligned BIG_PIECE
static __thread int big_won = 0;        // what this thread's last trial chose, for copies too short to try
static __thread char *buffer = NULL;
static pthread_key_t kept_key;
static pthread_once_t kept_once = PTHREAD_ONCE_INIT;

static void drop_piece_pipe(void) {
  if (piece_pipe[0] >= 0) { close(piece_pipe[0]); close(piece_pipe[1]); }
  piece_pipe[0] = piece_pipe[1] = -1;
}

static void drop_kept(void *unused) {
  (void)unused;
  drop_piece_pipe();
  free(buffer);
  buffer = NULL;
}

static void make_kept_key(void) { pthread_key_create(&kept_key, drop_kept); }

// This thread keeps a pipe or a buffer: dropped when it ends.
static void keeping(void) {
  pthread_once(&kept_once, make_kept_key);
  pthread_setspecific(kept_key, (void *)1);
}

// The whole range cloned (shared blocks, nothing copied), where the filesystem can: 1, else 0.
static int clone_range(int in, int64_t off_in, int out, int64_t off_out, int64_t len) {
  struct file_clone_range r = { .src_fd = in, .src_offset = (uint64_t)off_in, .src_length = (uint64_t)len, .dest_offset = (uint64_t)off_out };
  return ioctl(out, FICLONERANGE, &r) == 0;
}

// One piece of up to `len` bytes (at most BIG_PIECE) into the pipe and out of it: the count copied, 0
// at the source's end, or -1 with errno (the pipe dropped where it may hold bytes).
static ssize_t splice_piece(int in, int64_t off_in, int out, int64_t off_out, size_t len) {
  if (piece_pipe[0] < 0) {
    if (pipe2(piece_pipe, O_CLOEXEC) < 0) return -1;
    // a piece that starts inside a page spans one page more than its size; a pipe has 16 unless
    // told (a user's pipes may be held to less than 2 * BIG_PIECE: 64 KiB pieces only, then)
    pipe_takes_big = fcntl(piece_pipe[1], F_SETPIPE_SZ, 2 * BIG_PIECE) >= 2 * BIG_PIECE;
    if (!pipe_takes_big && fcntl(piece_pipe[1], F_SETPIPE_SZ, 2 * PIECE) < 2 * PIECE) { int e = errno; drop_piece_pipe(); errno = e; return -1; }
    keeping();
  }
  size_t held = 0;
  while (held < len) {
    loff_t a = off_in + (int64_t)held;
    ssize_t n = splice(in, &a, piece_pipe[1], NULL, len - held, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && held == 0) return -1; // the pipe is still empty
    if (n <= 0) break; // the source ended, or fails: what the pipe holds goes out first
    held += (size_t)n;
  }
  for (size_t moved = 0; moved < held;) {
    loff_t b = off_out + (int64_t)moved;
    ssize_t k = splice(piece_pipe[0], NULL, out, &b, held - moved, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) { int e = k < 0 ? errno : EIO; drop_piece_pipe(); errno = e; return -1; }
    moved += (size_t)k;
  }
  return (ssize_t)held;
}

// A copy's trial of the two piece sizes: TRIAL_GROUPS groups of the output, timed, alternating;
// once a copy (one of up to WATCHED_COPY has no room for a second).
typedef struct {
  int tried;         // the trial has run
  int group;         // the group being timed, -1: none
  int64_t group_end, started, ns[2];
} PieceTrial;

// The piece size to copy with at `at` (output offset), `left` bytes to go; times the trial's groups.
static size_t piece_size(PieceTrial *t, int64_t at, int64_t left) {
  if (!pipe_takes_big) return PIECE;
  if (t->group >= 0 && at >= t->group_end) {
    t->ns[t->group & 1] += now_ns() - t->started;
    if (++t->group == TRIAL_GROUPS) { big_won = t->ns[1] < t->ns[0]; t->group = -1; t->tried = 1; }
  }
  // a trial starts on a group's boundary (every group then is whole)
  if (t->group < 0 && !t->tried && at % GROUP == 0 && left >= TRIAL_GROUPS * GROUP) t->group = 0, t->group_end = at;
  if (t->group < 0) return big_won ? BIG_PIECE : PIECE;
  if (at >= t->group_end) { t->group_end = (at / GROUP + 1) * GROUP; t->started = now_ns(); }
  return t->group & 1 ? BIG_PIECE : PIECE;
}

// The output's blocks for [off, off + len) allocated ahead of the copy, its size kept, where the
// output is ext4 (see above); anything else, or a failure (no space: the copy will say), does nothing.
static void allocate_ahead(int out, int64_t off, int64_t len) {
  struct statfs fs;
  if (fstatfs(out, &fs) == 0 && fs.f_type == EXT4_SUPER_MAGIC) (void)fallocate(out, FALLOC_FL_KEEP_SIZE, off, len);
}

// A long copy's watch (see above): pieces, then copy_file_range on a group each, timed; then pieces
// until two groups in a row take more than 2.5x copy_file_range's group; then copy_file_range.
// Noise moved a group by up to 2x here, a group on memory handed back by ~10x. The first group of
// pieces took 1.0-1.3 ms where the next took 0.6-0.7 and copy_file_range's 1.0: a plain comparison
// of the two first groups chose copy_file_range, 16 ms for 64 MiB where pieces took 11.
typedef struct {
  enum { TRY_PIECES, TRY_KERNEL, PIECES, KERNEL_ON } phase;
  int64_t group_end; // output offset where the timed group ends
  int64_t started, pieces_ns, kernel_ns;
  int slow_groups;   // slow groups of pieces in a row
} LongCopy;

// The bytes the long copy may take at `at` (output offset) by its present way before its group ends;
// first closes the group that ended there, which may change the way.
static int64_t long_copy_step(LongCopy *c, int64_t at, int64_t left) {
  if (c->phase != KERNEL_ON && at >= c->group_end) {
    int64_t took = now_ns() - c->started;
    if (c->phase == TRY_PIECES) c->pieces_ns = took, c->phase = TRY_KERNEL;
    else if (c->phase == TRY_KERNEL) c->kernel_ns = took, c->phase = PIECES, c->slow_groups = c->pieces_ns * 2 > took * SLOW_PIECES_X2;
    else if (took * 2 <= c->kernel_ns * SLOW_PIECES_X2) c->slow_groups = 0;
    else if (++c->slow_groups == 2) c->phase = KERNEL_ON;
    c->group_end = at + WATCHED_GROUP;
    c->started = now_ns();
  }
  return c->phase == KERNEL_ON || c->group_end - at > left ? left : c->group_end - at;
}

int64_t copy_range(int in, int64_t off_in, int out, int64_t off_out, int64_t len, const char **what) {
  if (len > SMALL_COPY && ((off_in ^ off_out) & 4095) == 0 && clone_range(in, off_in, out, off_out, len)) return len;
  int64_t done = 0;
  enum { WATCHED, PIPE, SENDFILE, BUFFER } how = len <= SMALL_COPY ? BUFFER : len > WATCHED_COPY ? WATCHED : PIPE;
  if (how != BUFFER) allocate_ahead(out, off_out, len);
  // sendfile writes at out's file position: set for the copy, and put back after it
  off_t kept = -1;
  PieceTrial trial = { .group = -1 };
  LongCopy watch = { .phase = TRY_PIECES, .group_end = off_out + WATCHED_GROUP, .started = how == WATCHED ? now_ns() : 0 };
  while (done < len) {
    ssize_t n;
    size_t want = (size_t)(len - done);
    int by_pieces = 0; // for the error's name
    if (how == WATCHED || how == PIPE) {
      if (how == WATCHED) want = (size_t)long_copy_step(&watch, off_out + done, len - done);
      by_pieces = how == PIPE || watch.phase == TRY_PIECES || watch.phase == PIECES;
      if (!by_pieces) {
        loff_t a = off_in + done, b = off_out + done;
        n = copy_file_range(in, &a, out, &b, want, 0);
      } else {
        size_t piece = how == WATCHED ? (pipe_takes_big ? BIG_PIECE : PIECE) : piece_size(&trial, off_out + done, len - done);
        size_t to_boundary = piece - (size_t)((off_out + done) % piece);
        n = splice_piece(in, off_in + done, out, off_out + done, want < to_boundary ? want : to_boundary);
      }
      // this way cannot copy these descriptors (copy_file_range: another filesystem, EXDEV; splice:
      // one it cannot take, EINVAL, or no pipe of that size): sendfile goes on from here
      if (n < 0 && errno != EINTR && errno != EIO && errno != ENOSPC && errno != EDQUOT && errno != EFBIG) {
        how = SENDFILE;
        if ((kept = lseek(out, 0, SEEK_CUR)) < 0 || lseek(out, off_out + done, SEEK_SET) < 0) how = BUFFER;
        continue;
      }
    } else if (how == SENDFILE) {
      off_t a = off_in + done;
      n = sendfile(out, in, &a, want > 0x7ffff000 ? 0x7ffff000 : want);
      // a descriptor sendfile cannot take: the buffer copies the rest, where the file now stands
      if (n < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) { how = BUFFER; continue; }
    } else {
      const size_t cap = 1 << 20;
      if (!buffer && (buffer = malloc(cap))) keeping();
      if (want > cap) want = cap;
      if (!buffer) { errno = ENOMEM; n = -1; }
      else if ((n = pread(in, buffer, want, off_in + done)) > 0) {
        ssize_t w = 0;
        while (w < n) { ssize_t k = pwrite(out, buffer + w, n - w, off_out + done + w); if (k < 0) { if (errno == EINTR) continue; n = -1; break; } w += k; }
      }
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      *what = how == WATCHED || how == PIPE ? (by_pieces ? "splice" : "copy_file_range") : how == SENDFILE ? "sendfile" : "copyRange";
      done = -1;
      break;
    }
    if (n == 0) break; // the source ended early
    done += n;
  }
  // the one way out: the output's position back where sendfile found it (errno kept)
  if (kept >= 0) { int e = errno; lseek(out, kept, SEEK_SET); errno = e; }
  return done;
}

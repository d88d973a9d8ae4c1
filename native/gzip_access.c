// gzip_access: random access into gzip data (the zran method). A cursor inflates forward from a
// checkpoint: a compressed offset, the bits of a byte a deflate block boundary splits, and the
// 32 KiB window of output before it. A scanning cursor records such checkpoints as it goes.
// Node's zlib binding cannot start mid-stream (no inflatePrime), hence this addon.
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
// The system's zlib (zlib1g-dev), linked with -lz: Node's own headers describe a zlib whose
// symbols the node binary exports only under a Cr_z_ prefix.
#include "/usr/include/zlib.h"

#define WINDOW 32768
#define INBUF (256 * 1024)
#define DISCARD (64 * 1024)

enum { MODE_GZIP = 0, MODE_RAW = 1 };
enum { KIND_MEMBER = 0, KIND_BLOCK = 1 };

typedef struct {
  int64_t out, in;
  int bits, prev_byte, kind;
  unsigned char *window;
  unsigned window_len;
} Checkpoint;

typedef struct {
  z_stream zs;
  int fd;
  int64_t base, limit;     // the gzip data is bytes [base, base + limit) of fd
  int64_t in_read;         // compressed bytes read into inbuf so far (relative to base)
  int64_t out_pos;         // uncompressed offset of the next byte inflate produces
  int last_byte;           // the compressed byte before zs.next_in (for a checkpoint's pending bits)
  int mode, ended, scan_started;
  unsigned char *inbuf, *discard;
  // scanning only
  int64_t span, last_checkpoint;
  Checkpoint *pending;
  size_t npending, cap;
  char error[200];
} Cursor;

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, "napi call failed: " #call); return NULL; } } while (0)

static void set_error(Cursor *c, const char *fmt, const char *detail) {
  snprintf(c->error, sizeof c->error, fmt, detail ? detail : "");
}

static int64_t in_pos(const Cursor *c) { return c->in_read - c->zs.avail_in; }

// Makes compressed input available; returns 0 at the end of the data, -1 on a read error.
static int refill(Cursor *c) {
  if (c->zs.avail_in > 0) return 1;
  if (c->zs.next_in != NULL && c->zs.next_in > c->inbuf) c->last_byte = c->zs.next_in[-1];
  int64_t left = c->limit - c->in_read;
  if (left <= 0) return 0;
  size_t want = left < INBUF ? (size_t)left : INBUF;
  ssize_t n;
  do n = pread(c->fd, c->inbuf, want, c->base + c->in_read); while (n < 0 && errno == EINTR);
  if (n < 0) { set_error(c, "read failed: %s", strerror(errno)); return -1; }
  if (n == 0) return 0;
  c->in_read += n;
  c->zs.next_in = c->inbuf;
  c->zs.avail_in = (uInt)n;
  return 1;
}

// Consumes `n` compressed bytes (a gzip trailer after raw inflation); -1 when they are not there.
static int skip_input(Cursor *c, unsigned n) {
  while (n > 0) {
    int r = refill(c);
    if (r <= 0) { if (r == 0) set_error(c, "unexpected end of compressed data%s", NULL); return -1; }
    unsigned k = c->zs.avail_in < n ? c->zs.avail_in : n;
    c->zs.next_in += k; c->zs.avail_in -= k; n -= k;
  }
  return 0;
}

static int record(Cursor *c, int kind) {
  if (c->npending == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 16;
    Checkpoint *p = realloc(c->pending, cap * sizeof *p);
    if (!p) { set_error(c, "out of memory%s", NULL); return -1; }
    c->pending = p; c->cap = cap;
  }
  Checkpoint *cp = &c->pending[c->npending];
  memset(cp, 0, sizeof *cp);
  cp->out = c->out_pos; cp->in = in_pos(c); cp->kind = kind;
  if (kind == KIND_BLOCK) {
    cp->bits = c->zs.data_type & 7;
    cp->prev_byte = c->zs.next_in > c->inbuf ? c->zs.next_in[-1] : c->last_byte;
    cp->window = malloc(WINDOW);
    if (!cp->window) { set_error(c, "out of memory%s", NULL); return -1; }
    uInt len = WINDOW;
    inflateGetDictionary(&c->zs, cp->window, &len);
    cp->window_len = len;
  }
  c->npending++;
  c->last_checkpoint = c->out_pos;
  return 0;
}

// After the end of a gzip member: another member follows, or the data ends (zero padding and
// other trailing bytes are ignored, as gzip -d does). Returns -1 on error.
static int next_member(Cursor *c, int scanning) {
  if (c->mode == MODE_RAW && skip_input(c, 8) < 0) return -1; // the trailer raw inflation leaves
  int r = refill(c);
  if (r < 0) return -1;
  if (r == 0) { c->ended = 1; return 0; }
  unsigned char b0 = c->zs.next_in[0], b1;
  if (c->zs.avail_in >= 2) b1 = c->zs.next_in[1];
  else {
    // the magic straddles a read: peek the next byte directly
    unsigned char pb;
    if (pread(c->fd, &pb, 1, c->base + c->in_read) != 1) { c->ended = 1; return 0; }
    b1 = pb;
  }
  if (b0 != 0x1f || b1 != 0x8b) { c->ended = 1; return 0; }
  if (inflateReset2(&c->zs, 31) != Z_OK) { set_error(c, "inflateReset2 failed%s", NULL); return -1; }
  c->mode = MODE_GZIP;
  if (scanning && c->out_pos - c->last_checkpoint >= c->span) return record(c, KIND_MEMBER);
  return 0;
}

// Inflates forward: drops `skip` bytes, then fills out[0..want). Returns the bytes put in out (fewer
// only at the end of the data), or -1 with c->error set.
static int64_t pump(Cursor *c, unsigned char *out, size_t want, int64_t skip, int scanning) {
  size_t produced = 0;
  while ((produced < want || skip > 0) && !c->ended) {
    int r = refill(c); // 0: no input left, but inflate may still hold output to give
    if (r < 0) return -1;
    unsigned char *dst; size_t room;
    if (skip > 0) { dst = c->discard; room = skip < DISCARD ? (size_t)skip : DISCARD; }
    else { dst = out + produced; room = want - produced; }
    if (room > 0x40000000) room = 0x40000000;
    c->zs.next_out = dst; c->zs.avail_out = (uInt)room;
    int ret = inflate(&c->zs, scanning ? Z_BLOCK : Z_NO_FLUSH);
    size_t got = room - c->zs.avail_out;
    c->out_pos += got;
    if (skip > 0) skip -= got; else produced += got;
    if (ret == Z_NEED_DICT || ret == Z_DATA_ERROR || ret == Z_STREAM_ERROR || ret == Z_MEM_ERROR) {
      set_error(c, "corrupt gzip data (%s)", c->zs.msg ? c->zs.msg : "inflate failed");
      return -1;
    }
    if (ret == Z_STREAM_END) { if (next_member(c, scanning) < 0) return -1; continue; }
    if (ret == Z_BUF_ERROR || (r == 0 && got == 0)) {
      if (r == 0) { set_error(c, "unexpected end of compressed data (truncated gzip)%s", NULL); return -1; }
    }
    if (scanning && (c->zs.data_type & 128) && !(c->zs.data_type & 64) && c->out_pos - c->last_checkpoint >= c->span) {
      if (record(c, KIND_BLOCK) < 0) return -1;
    }
  }
  return (int64_t)produced;
}

static void cursor_free(Cursor *c) {
  inflateEnd(&c->zs);
  for (size_t i = 0; i < c->npending; i++) free(c->pending[i].window);
  free(c->pending); free(c->inbuf); free(c->discard); free(c);
}

static void finalize_cursor(napi_env env, void *data, void *hint) { cursor_free(data); }

static Cursor *cursor_arg(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p) { napi_throw_type_error(env, NULL, "not a gzip cursor"); return NULL; }
  return p;
}

static int64_t int64_arg(napi_env env, napi_value v) {
  int64_t x = 0; napi_get_value_int64(env, v, &x); return x;
}

static napi_value throw_cursor_error(napi_env env, Cursor *c) {
  napi_throw_error(env, "EGZIP", c->error[0] ? c->error : "gzip error");
  return NULL;
}

// gzOpen(fd, base, length, span) -> cursor at the start of the data (a gzip member header).
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Cursor *c = calloc(1, sizeof *c);
  if (!c) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  int32_t fd = -1; napi_get_value_int32(env, argv[0], &fd);
  c->fd = fd; c->base = int64_arg(env, argv[1]); c->limit = int64_arg(env, argv[2]); c->span = int64_arg(env, argv[3]);
  c->inbuf = malloc(INBUF); c->discard = malloc(DISCARD);
  if (!c->inbuf || !c->discard || inflateInit2(&c->zs, 31) != Z_OK) {
    free(c->inbuf); free(c->discard); free(c);
    napi_throw_error(env, NULL, "cannot set up inflate");
    return NULL;
  }
  napi_value ext;
  CHECK(napi_create_external(env, c, finalize_cursor, NULL, &ext));
  return ext;
}

// gzSeek(cursor, out, in, kind, bits, prevByte, window): restarts inflation at a checkpoint.
static napi_value js_seek(napi_env env, napi_callback_info info) {
  size_t argc = 7; napi_value argv[7];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Cursor *c = cursor_arg(env, argv[0]);
  if (!c) return NULL;
  int64_t out = int64_arg(env, argv[1]), in = int64_arg(env, argv[2]);
  int32_t kind = 0, bits = 0, prev = 0;
  napi_get_value_int32(env, argv[3], &kind); napi_get_value_int32(env, argv[4], &bits); napi_get_value_int32(env, argv[5], &prev);
  c->in_read = in; c->zs.avail_in = 0; c->zs.next_in = NULL; c->out_pos = out; c->ended = 0; c->error[0] = 0;
  int ok;
  if (kind == KIND_MEMBER) {
    c->mode = MODE_GZIP;
    ok = inflateReset2(&c->zs, 31) == Z_OK;
  } else {
    c->mode = MODE_RAW;
    ok = inflateReset2(&c->zs, -15) == Z_OK;
    if (ok && bits) ok = inflatePrime(&c->zs, bits, prev >> (8 - bits)) == Z_OK;
    void *win; size_t len;
    if (ok && napi_get_buffer_info(env, argv[6], &win, &len) == napi_ok && len > 0) ok = inflateSetDictionary(&c->zs, win, (uInt)len) == Z_OK;
  }
  if (!ok) { napi_throw_error(env, "EGZIP", "cannot restore inflate state at a checkpoint"); return NULL; }
  return NULL;
}

// gzRead(cursor, buf, skip) -> bytes written at buf[0..]: skips `skip` bytes, then fills buf.
static napi_value js_read(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Cursor *c = cursor_arg(env, argv[0]);
  if (!c) return NULL;
  void *buf; size_t len;
  CHECK(napi_get_buffer_info(env, argv[1], &buf, &len));
  int64_t n = pump(c, buf, len, int64_arg(env, argv[2]), 0);
  if (n < 0) return throw_cursor_error(env, c);
  napi_value v; CHECK(napi_create_int64(env, n, &v));
  return v;
}

// gzScan(cursor, buf, checkpoints[]) -> bytes written at buf[0..]; pushes the checkpoints passed
// on the way ({out, in, kind, bits, prevByte, window}) onto the array.
static napi_value js_scan(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Cursor *c = cursor_arg(env, argv[0]);
  if (!c) return NULL;
  void *buf; size_t len;
  CHECK(napi_get_buffer_info(env, argv[1], &buf, &len));
  if (!c->scan_started) {
    c->scan_started = 1;
    if (record(c, KIND_MEMBER) < 0) return throw_cursor_error(env, c); // the start of the data
  }
  int64_t n = pump(c, buf, len, 0, 1);
  if (n < 0) return throw_cursor_error(env, c);
  uint32_t at; CHECK(napi_get_array_length(env, argv[2], &at));
  for (size_t i = 0; i < c->npending; i++) {
    Checkpoint *cp = &c->pending[i];
    napi_value o, v;
    CHECK(napi_create_object(env, &o));
    CHECK(napi_create_int64(env, cp->out, &v)); CHECK(napi_set_named_property(env, o, "out", v));
    CHECK(napi_create_int64(env, cp->in, &v)); CHECK(napi_set_named_property(env, o, "in", v));
    CHECK(napi_create_int32(env, cp->kind, &v)); CHECK(napi_set_named_property(env, o, "kind", v));
    CHECK(napi_create_int32(env, cp->bits, &v)); CHECK(napi_set_named_property(env, o, "bits", v));
    CHECK(napi_create_int32(env, cp->prev_byte, &v)); CHECK(napi_set_named_property(env, o, "prevByte", v));
    if (cp->window) CHECK(napi_create_buffer_copy(env, cp->window_len, cp->window, NULL, &v));
    else CHECK(napi_create_buffer(env, 0, NULL, &v));
    CHECK(napi_set_named_property(env, o, "window", v));
    CHECK(napi_set_element(env, argv[2], at++, o));
    free(cp->window); cp->window = NULL;
  }
  c->npending = 0;
  napi_value v; CHECK(napi_create_int64(env, n, &v));
  return v;
}

// gzState(cursor) -> [out, in, ended]: where the cursor stands.
static napi_value js_state(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Cursor *c = cursor_arg(env, argv[0]);
  if (!c) return NULL;
  napi_value arr, v;
  CHECK(napi_create_array_with_length(env, 3, &arr));
  CHECK(napi_create_int64(env, c->out_pos, &v)); CHECK(napi_set_element(env, arr, 0, v));
  CHECK(napi_create_int64(env, in_pos(c), &v)); CHECK(napi_set_element(env, arr, 1, v));
  CHECK(napi_get_boolean(env, c->ended, &v)); CHECK(napi_set_element(env, arr, 2, v));
  return arr;
}

typedef struct {
  napi_async_work work;
  napi_ref buf_ref, cb_ref;
  Cursor *c;
  unsigned char *buf;
  size_t len;
  int64_t skip, result;
} ReadJob;

static void read_execute(napi_env env, void *data) {
  ReadJob *j = data;
  j->result = pump(j->c, j->buf, j->len, j->skip, 0);
}

static void read_complete(napi_env env, napi_status status, void *data) {
  ReadJob *j = data;
  napi_value cb, argv[2], undefined;
  napi_get_reference_value(env, j->cb_ref, &cb);
  napi_get_undefined(env, &undefined);
  if (j->result < 0) {
    napi_value msg, code;
    napi_create_string_utf8(env, j->c->error[0] ? j->c->error : "gzip error", NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, "EGZIP", NAPI_AUTO_LENGTH, &code);
    napi_create_error(env, code, msg, &argv[0]);
    argv[1] = undefined;
  } else {
    argv[0] = undefined;
    napi_create_int64(env, j->result, &argv[1]);
  }
  napi_delete_reference(env, j->buf_ref);
  napi_delete_reference(env, j->cb_ref);
  napi_delete_async_work(env, j->work);
  free(j);
  napi_call_function(env, undefined, cb, 2, argv, NULL);
}

// gzReadAsync(cursor, buf, skip, cb(err, n)): gzRead on a worker thread. The caller must not touch
// the cursor until cb runs.
static napi_value js_read_async(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Cursor *c = cursor_arg(env, argv[0]);
  if (!c) return NULL;
  ReadJob *j = calloc(1, sizeof *j);
  if (!j) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  void *buf;
  CHECK(napi_get_buffer_info(env, argv[1], &buf, &j->len));
  j->buf = buf; j->c = c; j->skip = int64_arg(env, argv[2]);
  CHECK(napi_create_reference(env, argv[1], 1, &j->buf_ref));
  CHECK(napi_create_reference(env, argv[3], 1, &j->cb_ref));
  napi_value name;
  CHECK(napi_create_string_utf8(env, "layerfs:gzread", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, read_execute, read_complete, j, &j->work));
  CHECK(napi_queue_async_work(env, j->work));
  return NULL;
}

napi_value gzip_access_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "gzOpen", NULL, js_open, NULL, NULL, NULL, napi_default, NULL },
    { "gzSeek", NULL, js_seek, NULL, NULL, NULL, napi_default, NULL },
    { "gzRead", NULL, js_read, NULL, NULL, NULL, napi_default, NULL },
    { "gzReadAsync", NULL, js_read_async, NULL, NULL, NULL, napi_default, NULL },
    { "gzScan", NULL, js_scan, NULL, NULL, NULL, napi_default, NULL },
    { "gzState", NULL, js_state, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

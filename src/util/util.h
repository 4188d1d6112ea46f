/*
 * util — tern's general library: memory, byte buffers, logging, time, files,
 * hashing, randomness and a blocking TCP client. It knows nothing about mail
 * and includes no other tern module; every other module may include it.
 *
 * Conventions used across tern (and started here):
 *  - Functions return -1 on error, 0 on success, 1 for "yes/more/done" where
 *    a third answer is needed. Output parameters end in _r. Errors that a
 *    caller may show are returned as `const char **error_r` pointing to a
 *    static string or to thread-local storage valid until the next call.
 *  - Allocation never fails: x*alloc() abort the process on OOM and return
 *    zeroed memory. xfree(&p) frees and sets p to NULL.
 *  - fatal() is for trouble in the environment or configuration: it logs and
 *    exits with status 1. panic() and ASSERT() are for bugs: they log and
 *    abort() for a core. Invariant checks stay on in release builds.
 *  - Every fsync in tern goes through util_fsync()/util_fdatasync() with a
 *    reason string, so the count is observable (XSTATS, benchmarks) and a
 *    fault can be injected for tests (TERN_FAULT, see below).
 */
#ifndef TERN_UTIL_H
#define TERN_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TERN_NORETURN     __attribute__((noreturn))
#define TERN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define ARRAY_SIZE(a)     (sizeof(a) / sizeof((a)[0]))

/* ---- memory ---------------------------------------------------------- */

/* Zeroed allocation; aborts on OOM. Never returns NULL (n == 0 gives 1 byte). */
void *xmalloc(size_t n);
/* Like calloc(nmemb, size) with overflow check; aborts on OOM or overflow. */
void *xcalloc(size_t nmemb, size_t size);
/* realloc that aborts on OOM. New bytes are NOT zeroed. */
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) TERN_PRINTF(1, 2);
/* Frees *pp (a pointer to any pointer) and sets it to NULL. */
#define xfree(pp)                                                                                  \
    do {                                                                                           \
        free(*(pp));                                                                               \
        *(pp) = NULL;                                                                              \
    } while (0)

/* ---- byte buffer with an optional hard maximum ------------------------ */

/* A growable byte buffer. `max` (0 = unlimited) is a structural limit: an
 * append that would exceed it fails and leaves the buffer unchanged. The
 * data is always NUL-terminated one past `len` for convenience. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
};

void buf_init(struct buf *b, size_t max);
/* Returns 0, or -1 (buffer unchanged) if the result would exceed b->max. */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_puts(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) TERN_PRINTF(2, 3);
/* Drops the first n bytes. */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
void buf_free(struct buf *b);

/* ---- logging ---------------------------------------------------------- */

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Names this process in every log line ("serve", "store:s1", "cli"). Logs go
 * to stderr, one line each: "2026-11-21T05:40:00.123Z store:s1[pid] info
 * ctx: message". TERN_LOG_LEVEL=debug|info|warn|error sets the threshold. */
void log_init(const char *role);
/* Sets the threshold (TERN_LOG_LEVEL, read by log_init, still wins). */
void log_set_level(enum log_level level);
void log_msg(enum log_level level, const char *ctx, const char *fmt, ...) TERN_PRINTF(3, 4);
void log_vmsg(enum log_level level, const char *ctx, const char *fmt, va_list ap);
#define log_debug(ctx, ...) log_msg(LOG_DEBUG, ctx, __VA_ARGS__)
#define log_info(ctx, ...)  log_msg(LOG_INFO, ctx, __VA_ARGS__)
#define log_warn(ctx, ...)  log_msg(LOG_WARN, ctx, __VA_ARGS__)
#define log_error(ctx, ...) log_msg(LOG_ERROR, ctx, __VA_ARGS__)

/* Environment/config trouble: log and exit(1). */
TERN_NORETURN void fatal(const char *fmt, ...) TERN_PRINTF(1, 2);
/* A bug: log and abort(). */
TERN_NORETURN void panic(const char *fmt, ...) TERN_PRINTF(1, 2);

#define ASSERT(x)                                                                                  \
    do {                                                                                           \
        if (!(x))                                                                                  \
            panic("assertion failed: %s (%s:%d)", #x, __FILE__, __LINE__);                         \
    } while (0)

/* ---- time ------------------------------------------------------------- */

int64_t time_now_ms(void);  /* wall clock, ms since the epoch */
int64_t time_mono_ms(void); /* monotonic, ms */
/* RFC 3339 UTC "2026-11-21T05:40:00Z" into out (at least 21 bytes). */
void time_format_utc(int64_t unix_secs, char *out, size_t outlen);

/* ---- files and durability --------------------------------------------- */

/* write() all of it, retrying on EINTR/short writes. 0 or -1 (errno set). */
int write_full(int fd, const void *p, size_t n);
/* pread() exactly n bytes. 0, or -1 (errno set; EIO-like on short read). */
int pread_full(int fd, void *p, size_t n, off_t off);
/* fsync/fdatasync with a reason for the log on failure; counted, and subject
 * to fault injection. 0 or -1 (errno set). */
int util_fsync(int fd, const char *why);
int util_fdatasync(int fd, const char *why);
/* fsync the directory that holds `path` (or `path` itself if it is a
 * directory), so a create/rename/unlink inside it is durable. */
int util_fsync_dir(const char *dirpath, const char *why);
/* Number of fsync/fdatasync calls this process has made. */
uint64_t util_fsync_count(void);
/* Number of writes counted for TERN_FAULT=write:N (write_full() calls and
 * util_fault_write() checks) this process has made. */
uint64_t util_write_count(void);
/* mkdir -p with `mode`. 0 or -1 (errno set). */
int mkdir_p(const char *path, unsigned mode);
/* Reads a whole file of at most max bytes into out (appended). 0 or -1 with
 * *error_r (static text; errno preserved). */
int file_read_all(const char *path, size_t max, struct buf *out, const char **error_r);

/* Takes an exclusive, non-blocking flock() on `path` (created if needed) and
 * writes our pid into it. Returns 0 with *fd_r (keep it open to hold the
 * lock), 1 if another process holds it (*holder_r = its pid, or 0 if
 * unknown), -1 on error (errno set). The lock dies with the process, so a
 * kill -9 never leaves a stale lock behind. */
int lockfile_acquire(const char *path, int *fd_r, pid_t *holder_r);

/* Fault injection for tests. TERN_FAULT is a comma-separated list of up to
 * 8 faults, each KIND:ARG, optionally @ROLE to restrict it to the process
 * whose log_init() role is ROLE ("mover", "mta", "store:s2"):
 *   fsync:N     the process's Nth util_fsync/util_fdatasync/util_fsync_dir
 *               fails (EIO);
 *   write:N     the process's Nth write_full() or util_fault_write() check
 *               fails (EIO);
 *   crash:NAME  util_fault_point("NAME") calls _exit(137) (a simulated kill -9);
 *   pause:NAME  util_fault_point("NAME") creates the file TERN_FAULT_PAUSE
 *               names and waits until it is removed (at most 600 s), so a
 *               test can act (kill -9 a process, arm a fault) at that point;
 *   fail:NAME   util_fault_active("NAME") is true.
 * TERN_FAULT_ONCE=PATH: a crash or pause fires only in the first process to
 * create its marker file (PATH for the list's first fault, PATH.K for the
 * Kth after it), so a role restarted with the same environment goes on.
 * TERN_FAULT_ARMED=PATH: every fault but a pause fires only while PATH
 * exists, and fsync:N / write:N count only the calls made while it does
 * ("fsync:1" = the first fsync after PATH appeared).
 * A malformed entry is logged and ignored. Each call below is a getenv()
 * when TERN_FAULT is unset. util_fault_point returns false (a crash never
 * returns). */
bool util_fault_point(const char *name);
/* TERN_FAULT="fail:NAME": true while set, for simulating an outage of a
 * dependency (e.g. "dir_resolve": the directory cannot be reached). */
bool util_fault_active(const char *name);
/* Counts one write for "write:N", for writers that do not use write_full()
 * (the store's pwritev of bodies): true if this one must fail, and the
 * caller fails it with EIO. */
bool util_fault_write(void);

/* ---- strings and numbers ---------------------------------------------- */

/* Parses a decimal unsigned integer that must be entirely digits and <= max.
 * 0 or -1. */
int parse_u64(const char *s, uint64_t max, uint64_t *out_r);
/* "HOST:PORT" or "[V6]:PORT" into host (size hostlen) and port. 0 or -1. */
int parse_hostport(const char *s, char *host, size_t hostlen, int *port_r);
/* Lowercases ASCII in place. */
void str_lower(char *s);
/* Copies at most dstlen-1 bytes and NUL-terminates; returns strlen(src) so
 * truncation is detectable (>= dstlen). */
size_t str_copy(char *dst, const char *src, size_t dstlen);
/* Lowercase hex of n bytes into out (2n+1 bytes). */
void hex_encode(const void *in, size_t n, char *out);
/* Parses exactly 2n hex digits into out. 0 or -1. */
int hex_decode(const char *in, void *out, size_t n);

/* ---- blocking TCP client ---------------------------------------------- */

/* A blocking TCP client connection over a non-blocking socket (sock.c).
 * Every wait goes through poll() bounded by the connection's timeout:
 *  - sock_connect() must finish within one timeout;
 *  - sock_send() waits at most one timeout for each bit of progress, so a
 *    large write to a slow but live peer is not cut off;
 *  - sock_read_line() must get its whole line within one timeout (from the
 *    call, or by an explicit deadline with sock_read_line_until());
 *  - sock_read_exact()/sock_read_buf() wait one timeout for each piece.
 * Functions returning int give 0, or -1 with sock_why() describing the
 * failure (I/O error, timeout, peer closed) for a log line; after -1 the
 * stream position is undefined and the caller should give up on it. The
 * socket ignores SIGPIPE (MSG_NOSIGNAL). Knows nothing of any protocol. */
struct sock;

/* Connects to a numeric "IPv4:PORT" or "[IPv6]:PORT" with TCP_NODELAY.
 * NULL with "ENDPOINT: reason" in err (if not NULL) on failure. */
struct sock *sock_connect(const char *endpoint, unsigned timeout_ms, char *err, size_t errlen);
/* Closes and frees *s (NULL is fine) and sets it to NULL. */
void sock_close(struct sock **s);
/* Sends all n bytes. */
int sock_send(struct sock *s, const void *p, size_t n);
/* Best effort, never waits, no error reported (e.g. a QUIT before close). */
void sock_send_nowait(struct sock *s, const void *p, size_t n);
/* Reads one line up to LF into line (cap >= 2 bytes incl. the NUL) without
 * its CRLF; *len_r its length. The line must end in CRLF (else -1). A line
 * that does not fit (CR included) is cut to cap-1 bytes but consumed whole:
 * 1 is returned then, 0 for a line that fit. */
int sock_read_line(struct sock *s, char *line, size_t cap, size_t *len_r);
/* The same with a deadline in time_mono_ms() terms (e.g. one for several
 * lines). */
int sock_read_line_until(struct sock *s, int64_t deadline, char *line, size_t cap, size_t *len_r);
/* Reads exactly n bytes into p. */
int sock_read_exact(struct sock *s, void *p, size_t n);
/* Reads exactly n bytes appended to b; -1 if that would exceed b->max. */
int sock_read_buf(struct sock *s, struct buf *b, size_t n);
/* True if input is pending or the peer closed/failed, without waiting (the
 * peer spoke while the connection was idle). */
bool sock_readable_now(struct sock *s);
/* Waits up to ms (>= 0) for input on s (or its peer closing: what
 * sock_readable_now says) or on other_fd (if >= 0, e.g. a client that may
 * interrupt a long wait). 1: s is readable (checked first), 2: other_fd is
 * readable, 0: neither within ms, -1: poll failed (sock_why). */
int sock_wait_readable(struct sock *s, int other_fd, int ms);
/* The last failure, for the log ("" if none). */
const char *sock_why(const struct sock *s);

/* ---- TLS client (tls.c; OpenSSL stays inside util) --------------------- */

/* Starts TLS as a client on s, a connection on which nothing was read yet
 * (implicit TLS, as imaps) or right after a STARTTLS answer. TLS 1.2 or
 * later; the server's certificate must chain to the system's CA store, or,
 * when ca_file is not NULL or "", to the certificates in that PEM file
 * instead (a private CA, or a self-signed server certificate itself), and
 * must be for host: a DNS name (also sent as SNI; no partial wildcards) or
 * an IP address literal. There is no way to skip the check. The handshake
 * must finish within the socket's timeout. 0: every later sock_* call goes
 * through TLS with the same timeouts. -1 (s stays usable only for
 * sock_close) with err (and sock_why) saying which of:
 *   "certificate verify failed: <OpenSSL's reason>" (untrusted, expired...),
 *   "hostname mismatch: the server's certificate is not for <host>",
 *   "handshake failed: <reason>" (no common protocol, not TLS, timeout,
 *                                 the server closed the connection),
 *   "TLS: cannot load the CA file <path>: <reason>". */
int sock_start_tls(struct sock *s, const char *host, const char *ca_file, char *err, size_t errlen);
/* True once sock_start_tls succeeded. */
bool sock_is_tls(const struct sock *s);

/* ---- TLS server (tls.c; OpenSSL stays inside util) --------------------- */

/* The server side, for a role that accepts connections (the imap role's
 * STARTTLS and implicit-TLS listener). A struct tls_server holds one
 * certificate chain and its private key, loaded once and shared by every
 * connection and thread: TLS 1.2 or later, OpenSSL's default ciphers (the
 * server's order), no renegotiation, no client certificates, a session
 * cache. A struct tls_conn is one connection's TLS on a connected fd that
 * the caller owns (tls_conn_free does not close it).
 *
 * Errors are for the log (they name files and OpenSSL's reason); a caller
 * never sends them to its peer. */
struct tls_server;
struct tls_conn;

/* Loads the PEM certificate chain in cert_file (the server's certificate
 * first, then intermediates) and the PEM private key in key_file. NULL with
 * err saying which of:
 *   "cannot read the certificate file PATH: <errno text>",
 *   "cannot read the private key file PATH: <errno text>",
 *   "no certificate in PATH: <OpenSSL's reason>" (not PEM, garbage),
 *   "no private key in PATH: <OpenSSL's reason>",
 *   "the private key in PATH does not match the certificate in PATH". */
struct tls_server *tls_server_new(const char *cert_file, const char *key_file, char *err,
                                  size_t errlen);
/* Drops the caller's reference (*ts becomes NULL; NULL is fine). Connections
 * still open keep the shared context alive until they are freed. */
void tls_server_free(struct tls_server **ts);

/* Makes fd non-blocking and runs the server handshake on it, all of it
 * within timeout_ms. Nothing may have been read from fd after the point
 * where TLS starts (for STARTTLS the caller discards what it buffered).
 * Thread-safe with other connections of the same server. NULL with err:
 * "handshake failed: <reason>" (timeout, not TLS, no common protocol, the
 * client closed the connection, the client refused our certificate). */
struct tls_conn *tls_server_accept(struct tls_server *ts, int fd, unsigned timeout_ms, char *err,
                                   size_t errlen);
/* Reads up to n (> 0) decrypted octets into p, waiting up to ms (< 0:
 * forever) for them. > 0 octets read, 0 nothing arrived within ms, -1 the
 * connection ended: closed by the peer (tls_conn_why says "closed") or
 * failed (a TLS or socket error in tls_conn_why). */
ssize_t tls_conn_read(struct tls_conn *c, void *p, size_t n, int ms);
/* Writes all n octets, waiting at most timeout_ms for each bit of progress
 * (as sock_send). 0, or -1 with tls_conn_why. SIGPIPE never fires. */
int tls_conn_write(struct tls_conn *c, const void *p, size_t n, unsigned timeout_ms);
/* True if decrypted octets wait inside the TLS layer, where polling the fd
 * does not see them. */
bool tls_conn_pending(const struct tls_conn *c);
/* The negotiated protocol and cipher ("TLSv1.3 TLS_AES_256_GCM_SHA384"),
 * for the log; valid while c lives. */
const char *tls_conn_info(struct tls_conn *c);
/* The last failure, for the log ("" if none). */
const char *tls_conn_why(const struct tls_conn *c);
/* Sends close_notify if the socket takes it without waiting, frees *c and
 * sets it to NULL (NULL is fine). The fd stays open. */
void tls_conn_free(struct tls_conn **c);

/* ---- hashing and randomness (OpenSSL stays inside util) ---------------- */

#define SHA256_LEN 32
void sha256_buf(const void *p, size_t n, uint8_t out[SHA256_LEN]);
/* Incremental SHA-256, for data that is hashed in pieces (a folder's digest
 * over many messages) without holding it all: sha256_new(), any number of
 * sha256_update(), then sha256_final() writes the hash and frees the
 * context (*h becomes NULL). sha256_free() drops one unfinished. Never NULL;
 * an OpenSSL failure is a panic, as for sha256_buf(). */
struct sha256;
struct sha256 *sha256_new(void);
void sha256_update(struct sha256 *h, const void *p, size_t n);
void sha256_final(struct sha256 **h, uint8_t out[SHA256_LEN]);
void sha256_free(struct sha256 **h);
/* Cryptographically random bytes (getrandom). Aborts if the kernel fails. */
void rand_bytes(void *p, size_t n);

#endif

/* TFTP server for the files phones fetch at boot (RFC 1350 read requests,
 * options of RFC 2347/2348/2349/7440). Runs entirely on one libuv loop: no
 * thread or process per transfer. Files come from a capstan_filesource_t.
 *
 * Behaviour worth knowing:
 * - Read requests only. A write request gets error 2 "write requests are
 *   not supported". Unknown file: error 1 "File not found" (no path is
 *   ever disclosed); a name the source refuses (CAPSTAN_EACCES): error 2
 *   "Access violation"; any other source error: error 0.
 * - Modes octet and netascii (case-insensitive). Netascii is encoded on the
 *   fly (LF -> CR LF, CR -> CR NUL); its tsize is the size of the encoded
 *   stream (the number of bytes the client receives).
 * - Options: blksize (8..65464, clamped to max_blksize), timeout (1..255 s),
 *   tsize (RRQ: replied with the file size), windowsize (1..65535, clamped
 *   to max_windowsize). Options are matched case-insensitively. Unknown
 *   options, options without a value, non-decimal or out-of-range values
 *   and duplicated options are ignored (never an error 8): the OACK lists
 *   only what we accept, and no OACK is sent if nothing was accepted.
 * - Each transfer has its own UDP socket on an ephemeral port bound to the
 *   listener's address. Packets reaching it from another address/port get
 *   error 5 "Unknown transfer ID" and do not disturb the transfer.
 * - Retransmission: RTO per transfer from RTT samples (RFC 6298 estimator,
 *   Karn's rule), bounded by [min(min_timeout_ms, T), T] where T
 *   is the negotiated timeout or default_timeout_ms; exponential back-off;
 *   after max_retries resends without progress the transfer is abandoned
 *   (result "timeout"). A duplicate ACK never causes a resend. With
 *   windowsize > 1, an ACK of a block inside the window means "go back to
 *   the next block" (RFC 7440), at most once per window.
 * - Limits: a request beyond max_transfers in progress, or beyond
 *   max_transfers_per_address from one IP address (IPv4-mapped IPv6
 *   addresses count as IPv4), gets error 0 "server busy, retry in N s"
 *   (N: retry_after_seconds) and costs nothing more (no state is kept; the
 *   client may come back). The limits change live
 *   (capstan_tftp_server_set_limits); transfers already running are never
 *   cut. Each such refusal is logged at most once per limit per
 *   CAPSTAN_LOG_LIMIT_MS, with the number held back. Before refusing a
 *   client at either limit, the datagrams already waiting on its transfer
 *   sockets are handled, so that a client that ends a transfer (its last
 *   ACK, or an ERROR, to the transfer port) and at once asks again is not
 *   refused because the listener was read first. Malformed
 *   requests (truncated, no NUL, name empty, longer than 255 bytes or with
 *   control characters, unknown opcode or mode, larger than 1024 bytes) get
 *   error 4 "Illegal TFTP operation". A repeated RRQ from the same
 *   address and port as a transfer in progress is ignored (the client
 *   retransmitted its request).
 * - Memory: received datagrams land in one 64 KiB buffer per server, shared
 *   by the listener and every transfer socket and consumed at once. Octet
 *   transfers send straight from the blob (4-byte header + slice of the
 *   blob, no copy); the blocks of a window go out in one sendmmsg. Per
 *   packet the steady state is one recvmsg (the ACK) and one sendmsg (the
 *   DATA): the retransmit timer is not restarted on every ACK, only a
 *   deadline moves (see arm_timer in tftp.c). Netascii transfers keep a
 *   ring of |windowsize| encoded packets so that a go-back can resend them.
 *   Everything is released when the transfer ends.
 * - Metrics: capstan_tftp_requests_total{kind} (kind of the requested name,
 *   capstan_file_kind_of), capstan_tftp_transfers_total{kind,result} and
 *   capstan_tftp_bytes_sent_total{kind} and
 *   capstan_tftp_transfer_duration_seconds{kind} (kind the source answered;
 *   result ok|not_found|denied|error|timeout; "error" includes a client
 *   that aborted with an ERROR packet; bytes include resends),
 *   capstan_tftp_active_transfers, capstan_tftp_retransmits_total,
 *   capstan_tftp_timeouts_total (transfers abandoned),
 *   capstan_tftp_duplicate_acks_ignored_total,
 *   capstan_tftp_options_negotiated_total{option},
 *   capstan_tftp_rejections_total{reason} (limit_total, limit_per_address,
 *   malformed, oversized, bad_name, bad_mode, bad_opcode, write_request,
 *   resources), capstan_tftp_wrong_port_packets_total,
 *   capstan_tftp_large_requests_total (requests of 513..1024 bytes).
 * - Logs: event=tftp_transfer_done file=.. peer=.. kind=.. result=..
 *   bytes=.. ms=.. (debug when ok, info for not_found/denied, warn
 *   otherwise; the name is %-escaped outside printable ASCII);
 *   event=tftp_request_rejected at debug. */
#ifndef CAPSTAN_HANDLERS_TFTP_TFTP_H
#define CAPSTAN_HANDLERS_TFTP_TFTP_H

#include <stdint.h>
#include <uv.h>

#include "core/files/source.h"

typedef struct capstan_tftp_config {
  uint16_t max_blksize;               /* default 1468 */
  uint16_t max_windowsize;            /* default 16 (RFC 7440) */
  unsigned max_transfers;             /* total concurrent, default 20000 (live) */
  unsigned max_transfers_per_address; /* per client IP, default 2000 (live) */
  unsigned retry_after_seconds;       /* named in the busy message, default 10 (live) */
  unsigned default_timeout_ms;        /* initial RTO, default 1000 (adaptive after) */
  unsigned max_retries;               /* default 5 */
  unsigned min_timeout_ms;            /* floor of the adaptive RTO, default 200 */
} capstan_tftp_config_t;

/* Fills |cfg| with the defaults above. */
void capstan_tftp_config_defaults(capstan_tftp_config_t *cfg);

typedef struct capstan_tftp_server capstan_tftp_server_t;

/* capstan_tftp_server_start binds |host_port| ("[::]:69", "127.0.0.1:6969",
 * "0.0.0.0:69"; the IPv6 wildcard is dual-stack) and starts serving files
 * from |files| on |loop|. |cfg| is copied (NULL: defaults; zero fields take
 * their default). |files| must outlive the server. Must be called on the
 * loop thread (or before the loop runs). On success returns 0 and sets
 * *out; the server is owned by the caller until capstan_tftp_server_stop.
 * Fails with CAPSTAN_EINVAL (bad address), CAPSTAN_ENOMEM, or a libuv error
 * (e.g. UV_EADDRINUSE); nothing is left allocated then. */
int capstan_tftp_server_start(uv_loop_t *loop, const char *host_port,
                              const capstan_tftp_config_t *cfg, capstan_filesource_t *files,
                              capstan_tftp_server_t **out);

/* capstan_tftp_server_stop stops accepting requests; transfers in flight
 * finish (or time out). When every handle is closed the server frees
 * itself and then calls |done|(|arg|) (|done| may be NULL). |srv| must not
 * be used after this call. Loop thread only. */
void capstan_tftp_server_stop(capstan_tftp_server_t *srv, void (*done)(void *arg), void *arg);

/* Changes the limits and the delay named in the busy message live: new
 * requests follow them, transfers in progress continue whatever the new
 * limits are. A zero leaves that value unchanged. Loop thread only. */
void capstan_tftp_server_set_limits(capstan_tftp_server_t *srv, unsigned max_transfers,
                                    unsigned max_transfers_per_address,
                                    unsigned retry_after_seconds);

/* Returns the bound UDP port (useful when started on port 0). */
int capstan_tftp_server_port(const capstan_tftp_server_t *srv);

#endif

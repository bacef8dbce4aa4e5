/* Fuzz target: the TFTP request parser, and what the server builds from a
 * parsed request (OACK, error packet, netascii encoding of the input). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/tftp/tftp_packet.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  capstan_tftp_request_t req;
  capstan_tftp_reject_t why = capstan_tftp_parse_request(data, size, &req);
  if (why == CAPSTAN_TFTP_REJECT_NONE) {
    /* What the parser promises: a bounded, NUL-terminated name without
     * control characters, option values in their RFC ranges. */
    size_t n = strlen(req.filename);
    if (n == 0 || n > CAPSTAN_TFTP_NAME_MAX) abort();
    for (size_t i = 0; i < n; i++) {
      uint8_t c = (uint8_t)req.filename[i];
      if (c < 0x20 || c == 0x7f) abort();
    }
    if (req.opcode != CAPSTAN_TFTP_OP_RRQ && req.opcode != CAPSTAN_TFTP_OP_WRQ) abort();
    if ((req.options & (1u << CAPSTAN_TFTP_OPT_BLKSIZE)) &&
        (req.blksize < CAPSTAN_TFTP_BLKSIZE_MIN || req.blksize > CAPSTAN_TFTP_BLKSIZE_MAX)) {
      abort();
    }
    if ((req.options & (1u << CAPSTAN_TFTP_OPT_WINDOWSIZE)) &&
        (req.windowsize < 1 || req.windowsize > CAPSTAN_TFTP_WINDOWSIZE_MAX)) {
      abort();
    }
    if ((req.options & (1u << CAPSTAN_TFTP_OPT_TIMEOUT)) &&
        (req.timeout < 1 || req.timeout > CAPSTAN_TFTP_TIMEOUT_MAX)) {
      abort();
    }
    uint8_t oack[160];
    if (capstan_tftp_build_oack(oack, sizeof(oack), req.options, &req) == 0) abort();
  } else if (why >= CAPSTAN_TFTP_REJECT_COUNT) {
    abort();
  }
  uint8_t err[4 + CAPSTAN_TFTP_ERROR_MSG_MAX + 1];
  if (capstan_tftp_build_error(err, sizeof(err), 4, capstan_tftp_reject_name(why)) == 0) abort();
  /* Netascii: the encoder's output matches the computed size, in any block
   * size. */
  capstan_tftp_netascii_t st;
  memset(&st, 0, sizeof(st));
  uint8_t out[7];
  uint64_t total = 0;
  size_t got;
  size_t blk = 1 + (size % 7);
  while ((got = capstan_tftp_netascii_fill(&st, data, size, out, blk)) > 0) {
    total += got;
    if (got < blk) break;
  }
  if (total != capstan_tftp_netascii_size(data, size)) abort();
  return 0;
}

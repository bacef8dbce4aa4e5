#include "handlers/tftp/tftp_packet.h"

#include <openssl/bytestring.h>
#include <stdio.h>
#include <string.h>
#include "core/base/names.h"

CAPSTAN_DEFINE_NAME_FN(, capstan_tftp_reject_name, capstan_tftp_reject_t,
                       CAPSTAN_TFTP_REJECT_REASONS, "unknown")

CAPSTAN_DEFINE_NAME_FN(, capstan_tftp_option_name, capstan_tftp_option_t, CAPSTAN_TFTP_OPTIONS,
                       "unknown")

/* Reads one NUL-terminated string; |out| excludes the NUL. */
static int get_string(CBS *cbs, CBS *out) {
  if (!CBS_get_until_first(cbs, out, 0)) return 0;
  return CBS_skip(cbs, 1);
}

static int ascii_lower(uint8_t c) {
  return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

static int equals_nocase(const CBS *cbs, const char *word) {
  size_t n = strlen(word);
  if (CBS_len(cbs) != n) return 0;
  const uint8_t *p = CBS_data(cbs);
  for (size_t i = 0; i < n; i++) {
    if (ascii_lower(p[i]) != (uint8_t)word[i]) return 0;
  }
  return 1;
}

/* Plain decimal only: no sign, no spaces, at most VALUE_DIGITS_MAX digits
 * (leading zeros are allowed). Returns 0 if |cbs| is not such a number. */
static int parse_decimal(const CBS *cbs, uint64_t *out) {
  size_t n = CBS_len(cbs);
  if (n == 0 || n > CAPSTAN_TFTP_VALUE_DIGITS_MAX) return 0;
  const uint8_t *p = CBS_data(cbs);
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return 0;
    uint64_t d = (uint64_t)(p[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return 0;
    v = v * 10 + d;
  }
  *out = v;
  return 1;
}

static int find_option(const CBS *name) {
  for (int i = 0; i < CAPSTAN_TFTP_OPT_COUNT; i++) {
    if (equals_nocase(name, capstan_tftp_option_name((capstan_tftp_option_t)i))) return i;
  }
  return -1;
}

capstan_tftp_reject_t capstan_tftp_parse_request(const uint8_t *pkt, size_t len,
                                                 capstan_tftp_request_t *out) {
  memset(out, 0, sizeof(*out));
  out->size = len;
  if (len > CAPSTAN_TFTP_REQUEST_MAX) return CAPSTAN_TFTP_REJECT_OVERSIZED;
  CBS cbs, name, mode;
  CBS_init(&cbs, pkt, len);
  uint16_t opcode;
  if (!CBS_get_u16(&cbs, &opcode)) return CAPSTAN_TFTP_REJECT_MALFORMED;
  if (opcode != CAPSTAN_TFTP_OP_RRQ && opcode != CAPSTAN_TFTP_OP_WRQ) {
    return CAPSTAN_TFTP_REJECT_BAD_OPCODE;
  }
  out->opcode = opcode;
  if (!get_string(&cbs, &name)) return CAPSTAN_TFTP_REJECT_MALFORMED;
  if (CBS_len(&name) == 0 || CBS_len(&name) > CAPSTAN_TFTP_NAME_MAX) {
    return CAPSTAN_TFTP_REJECT_BAD_NAME;
  }
  for (size_t i = 0; i < CBS_len(&name); i++) {
    uint8_t c = CBS_data(&name)[i];
    if (c < 0x20 || c == 0x7f) return CAPSTAN_TFTP_REJECT_BAD_NAME;
  }
  memcpy(out->filename, CBS_data(&name), CBS_len(&name));
  out->filename[CBS_len(&name)] = '\0';

  if (!get_string(&cbs, &mode)) return CAPSTAN_TFTP_REJECT_MALFORMED;
  if (equals_nocase(&mode, "octet")) {
    out->netascii = 0;
  } else if (equals_nocase(&mode, "netascii")) {
    out->netascii = 1;
  } else {
    return CAPSTAN_TFTP_REJECT_BAD_MODE;
  }

  unsigned seen = 0, dup = 0, valid = 0;
  while (CBS_len(&cbs) > 0) {
    CBS opt, val;
    /* Every string on the wire is NUL-terminated (RFC 1350/2347); an
     * unterminated one means a broken or truncated packet. */
    if (!get_string(&cbs, &opt)) return CAPSTAN_TFTP_REJECT_MALFORMED;
    if (CBS_len(&cbs) == 0) break; /* option without a value: ignored */
    if (!get_string(&cbs, &val)) return CAPSTAN_TFTP_REJECT_MALFORMED;
    int idx = find_option(&opt);
    if (idx < 0) continue; /* unknown option: ignored */
    unsigned bit = 1u << idx;
    if (seen & bit) dup |= bit;
    seen |= bit;
    uint64_t v;
    if (!parse_decimal(&val, &v)) continue;
    switch (idx) {
      case CAPSTAN_TFTP_OPT_BLKSIZE:
        if (v < CAPSTAN_TFTP_BLKSIZE_MIN || v > CAPSTAN_TFTP_BLKSIZE_MAX) continue;
        out->blksize = (uint32_t)v;
        break;
      case CAPSTAN_TFTP_OPT_TSIZE:
        out->tsize = v;
        break;
      case CAPSTAN_TFTP_OPT_TIMEOUT:
        if (v < CAPSTAN_TFTP_TIMEOUT_MIN || v > CAPSTAN_TFTP_TIMEOUT_MAX) continue;
        out->timeout = (uint32_t)v;
        break;
      case CAPSTAN_TFTP_OPT_WINDOWSIZE:
        if (v < CAPSTAN_TFTP_WINDOWSIZE_MIN || v > CAPSTAN_TFTP_WINDOWSIZE_MAX) continue;
        out->windowsize = (uint32_t)v;
        break;
      default:
        continue;
    }
    valid |= bit;
  }
  out->options = valid & ~dup;
  return CAPSTAN_TFTP_REJECT_NONE;
}

size_t capstan_tftp_build_error(uint8_t *buf, size_t cap, uint16_t code, const char *msg) {
  size_t mlen = strlen(msg);
  if (mlen > CAPSTAN_TFTP_ERROR_MSG_MAX) mlen = CAPSTAN_TFTP_ERROR_MSG_MAX;
  CBB cbb;
  size_t out_len;
  uint8_t *out;
  if (!CBB_init_fixed(&cbb, buf, cap) || !CBB_add_u16(&cbb, CAPSTAN_TFTP_OP_ERROR) ||
      !CBB_add_u16(&cbb, code) || !CBB_add_bytes(&cbb, (const uint8_t *)msg, mlen) ||
      !CBB_add_u8(&cbb, 0) || !CBB_finish(&cbb, &out, &out_len)) {
    CBB_cleanup(&cbb);
    return 0;
  }
  return out_len;
}

static int add_option(CBB *cbb, capstan_tftp_option_t opt, uint64_t value) {
  char num[24];
  int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)value);
  const char *name = capstan_tftp_option_name(opt);
  return n > 0 && CBB_add_bytes(cbb, (const uint8_t *)name, strlen(name) + 1) &&
         CBB_add_bytes(cbb, (const uint8_t *)num, (size_t)n + 1);
}

size_t capstan_tftp_build_oack(uint8_t *buf, size_t cap, unsigned options,
                               const capstan_tftp_request_t *req) {
  CBB cbb;
  size_t out_len;
  uint8_t *out;
  if (!CBB_init_fixed(&cbb, buf, cap) || !CBB_add_u16(&cbb, CAPSTAN_TFTP_OP_OACK)) goto err;
  for (int i = 0; i < CAPSTAN_TFTP_OPT_COUNT; i++) {
    if (!(options & (1u << i))) continue;
    uint64_t v = 0;
    switch (i) {
      case CAPSTAN_TFTP_OPT_BLKSIZE:
        v = req->blksize;
        break;
      case CAPSTAN_TFTP_OPT_TSIZE:
        v = req->tsize;
        break;
      case CAPSTAN_TFTP_OPT_TIMEOUT:
        v = req->timeout;
        break;
      case CAPSTAN_TFTP_OPT_WINDOWSIZE:
        v = req->windowsize;
        break;
    }
    if (!add_option(&cbb, (capstan_tftp_option_t)i, v)) goto err;
  }
  if (!CBB_finish(&cbb, &out, &out_len)) goto err;
  return out_len;
err:
  CBB_cleanup(&cbb);
  return 0;
}

size_t capstan_tftp_netascii_fill(capstan_tftp_netascii_t *st, const uint8_t *data, size_t len,
                                  uint8_t *out, size_t cap) {
  size_t n = 0;
  while (n < cap) {
    if (st->has_pending) {
      out[n++] = st->pending;
      st->has_pending = 0;
      continue;
    }
    if (st->in >= len) break;
    uint8_t c = data[st->in++];
    if (c == '\n') {
      out[n++] = '\r';
      st->pending = '\n';
      st->has_pending = 1;
    } else if (c == '\r') {
      out[n++] = '\r';
      st->pending = '\0';
      st->has_pending = 1;
    } else {
      out[n++] = c;
    }
  }
  return n;
}

uint64_t capstan_tftp_netascii_size(const uint8_t *data, size_t len) {
  uint64_t n = len;
  for (size_t i = 0; i < len; i++) {
    if (data[i] == '\n' || data[i] == '\r') n++;
  }
  return n;
}

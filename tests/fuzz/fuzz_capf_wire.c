/* Fuzz target for the CAPF wire codec: frames a stream of messages, parses
 * each one, runs every typed accessor, and re-builds the known elements to
 * check that parse and build agree. Input can never abort. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/mem.h>

#include "handlers/capf/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(const capstan_capf_msg_t *m) {
  uint8_t u8;
  uint16_t u16;
  capstan_capf_slice_t s, c, s1, s2;
  char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  char desc[128];
  int bad_tag = -1;
  /* A malformed message names one of its own elements. */
  if (capstan_capf_validate(m, &bad_tag) < 0 && !capstan_capf_msg_has(m, bad_tag)) __builtin_trap();
  (void)capstan_capf_get_reason(m, &u8);
  (void)capstan_capf_get_version(m, &u8);
  (void)capstan_capf_get_auth_type(m, &u8);
  (void)capstan_capf_get_key_type(m, &u8);
  (void)capstan_capf_get_ec_curve(m, &u8);
  (void)capstan_capf_get_certificate_type(m, &u8);
  (void)capstan_capf_get_key_size(m, &u16);
  (void)capstan_capf_get_retry_delay(m, &u16);
  if (capstan_capf_get_device_name(m, name) == 0) {
    /* The copy is a proper C string of printable characters. */
    size_t n = strlen(name);
    if (n == 0 || n > CAPSTAN_CAPF_DEVICE_NAME_MAX) abort();
  }
  if (capstan_capf_get_auth_password(m, &s) == 0) {
    if (s.len > CAPSTAN_CAPF_AUTH_PASSWORD_MAX || memchr(s.data, 0, s.len) != NULL) abort();
  }
  if (capstan_capf_get_certificate(m, &u8, &s) == 0) {
    if (s.len + CAPSTAN_CAPF_CERT_PREFIX_LEN != m->el[CAPSTAN_CAPF_EL_CERTIFICATE].len) abort();
  }
  (void)capstan_capf_get_sha2_signed_data(m, &u8, &s);
  (void)capstan_capf_get_signed_data(m, &s);
  (void)capstan_capf_get_public_key(m, &s);
  if (capstan_capf_get_sudi_data(m, &s) == 0) (void)capstan_capf_parse_sudi(s, &c, &s1, &s2);
  capstan_capf_msg_describe(m, desc, sizeof(desc));
}

/* Re-encodes the known elements in tag order and parses the result: the
 * values must come back identical. */
static void rebuild(const capstan_capf_msg_t *m) {
  capstan_capf_builder_t b;
  if (capstan_capf_builder_begin(&b, m->command, m->session_id, 0) != 0) abort();
  for (int tag = 0; tag <= CAPSTAN_CAPF_EL_MAX; tag++) {
    if (!capstan_capf_msg_has(m, tag)) continue;
    if (capstan_capf_builder_add_bytes(&b, tag, m->el[tag].data, m->el[tag].len) != 0) abort();
  }
  uint8_t *out = NULL;
  size_t out_len = 0;
  if (capstan_capf_builder_finish(&b, &out, &out_len) != 0) abort();
  capstan_capf_msg_t again;
  if (capstan_capf_parse(out, out_len, &again) != 0) abort();
  if (again.present != m->present || again.command != m->command ||
      again.session_id != m->session_id) {
    abort();
  }
  for (int tag = 0; tag <= CAPSTAN_CAPF_EL_MAX; tag++) {
    if (!capstan_capf_msg_has(m, tag)) continue;
    if (again.el[tag].len != m->el[tag].len ||
        (m->el[tag].len > 0 && memcmp(again.el[tag].data, m->el[tag].data, m->el[tag].len) != 0)) {
      abort();
    }
  }
  OPENSSL_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* A stream: frame and parse messages one after another, with the first
   * byte of input (when any) also used as a smaller server-style cap. */
  size_t off = 0;
  size_t cap = size > 0 ? 64 + (size_t)data[0] * 256 : CAPSTAN_CAPF_MAX_MESSAGE;
  while (off < size) {
    size_t msg_len = 0;
    int rc = capstan_capf_frame(data + off, size - off, &msg_len);
    size_t capped_len = 0;
    int rc_cap = capstan_capf_frame_max(data + off, size - off, cap, &capped_len);
    if (rc_cap == 0 && (rc != 0 || capped_len != msg_len || capped_len > cap)) abort();
    if (rc != 0) break;
    if (msg_len < CAPSTAN_CAPF_HEADER_LEN || msg_len > size - off) abort();
    capstan_capf_msg_t m;
    if (capstan_capf_parse(data + off, msg_len, &m) == 0) {
      exercise(&m);
      rebuild(&m);
    }
    off += msg_len;
  }
  /* The whole input as one message, too. */
  capstan_capf_msg_t m;
  if (capstan_capf_parse(data, size, &m) == 0) exercise(&m);
  return 0;
}

/* CAPF wire codec. See wire.h. */
#include "handlers/capf/wire.h"

#include <stdio.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/phone.h"

/* ---- The protocol's numbering is core/base/phone.h's ---------------------
 * Each protocol value equals the base value of the same name, and each list
 * has as many values as the base one (the base's certificate type UNKNOWN
 * never goes on the wire), so neither side can gain a value alone. */
#define SAME(kind, base, id, v)                                    \
  _Static_assert((int)CAPSTAN_CAPF_##kind##_##id == (int)base##id, \
                 #kind " " #id " differs from base");
#define ONE(...) +1
#define AUTH_SAME(id, v) SAME(AUTH, CAPSTAN_AUTH_MODE_, id, v)
#define HASH_SAME(id, v) SAME(HASH, CAPSTAN_HASH_, id, v)
#define KEY_SAME(id, v) SAME(KEY, CAPSTAN_KEY_, id, v)
#define CERT_SAME(id, v) SAME(CERT, CAPSTAN_CERT_, id, v)
CAPSTAN_CAPF_AUTH_TYPES(AUTH_SAME)
CAPSTAN_CAPF_HASHES(HASH_SAME)
CAPSTAN_CAPF_KEY_TYPES(KEY_SAME)
CAPSTAN_CAPF_CERT_TYPES(CERT_SAME)
_Static_assert((0 CAPSTAN_CAPF_AUTH_TYPES(ONE)) == (0 CAPSTAN_AUTH_MODES(ONE)),
               "AUTH_TYPE values and auth modes differ in number");
_Static_assert((0 CAPSTAN_CAPF_HASHES(ONE)) == (0 CAPSTAN_HASHES(ONE)),
               "hash ids differ in number");
_Static_assert((0 CAPSTAN_CAPF_KEY_TYPES(ONE)) == (0 CAPSTAN_KEY_ALGS(ONE)),
               "KEY_TYPE values and key algorithms differ in number");
_Static_assert((0 CAPSTAN_CAPF_CERT_TYPES(ONE)) + 1 == (0 CAPSTAN_CERT_TYPES(ONE)),
               "CERTIFICATE_TYPE values and certificate types differ in number");
/* Every valid authentication string fits in AUTH_PASSWORD. */
_Static_assert(CAPSTAN_AUTH_STRING_MAX <= CAPSTAN_CAPF_AUTH_PASSWORD_MAX,
               "authentication strings do not fit AUTH_PASSWORD");
#undef AUTH_SAME
#undef HASH_SAME
#undef KEY_SAME
#undef CERT_SAME
#undef ONE
#undef SAME

/* ---- Name tables --------------------------------------------------------- */

#define NAME_CASE(id, v) \
  case v:                \
    return #id;

const char *capstan_capf_command_name(int command) {
  switch (command) { CAPSTAN_CAPF_COMMANDS(NAME_CASE) }
  return "UNKNOWN";
}

const char *capstan_capf_element_name(int tag) {
  switch (tag) { CAPSTAN_CAPF_ELEMENTS(NAME_CASE) }
  return "UNKNOWN";
}

const char *capstan_capf_reason_name(int reason) {
  switch (reason) { CAPSTAN_CAPF_REASONS(NAME_CASE) }
  return "UNKNOWN";
}

const char *capstan_capf_auth_type_name(int auth_type) {
  switch (auth_type) { CAPSTAN_CAPF_AUTH_TYPES(NAME_CASE) }
  return "UNKNOWN";
}

const char *capstan_capf_hash_name(int hash_id) {
  switch (hash_id) { CAPSTAN_CAPF_HASHES(NAME_CASE) }
  return "UNKNOWN";
}

const char *capstan_capf_cert_type_name(int cert_type) {
  switch (cert_type) { CAPSTAN_CAPF_CERT_TYPES(NAME_CASE) }
  return "UNKNOWN";
}

const char *capstan_capf_key_type_name(int key_type) {
  switch (key_type) { CAPSTAN_CAPF_KEY_TYPES(NAME_CASE) }
  return "UNKNOWN";
}

const char *capstan_capf_curve_name(int curve) {
  switch (curve) { CAPSTAN_CAPF_CURVES(NAME_CASE) }
  return "UNKNOWN";
}

#undef NAME_CASE

#define KNOWN_CASE(id, v) case v:

int capstan_capf_command_is_known(int command) {
  switch (command) {
    CAPSTAN_CAPF_COMMANDS(KNOWN_CASE)
    return 1;
  }
  return 0;
}

int capstan_capf_element_is_known(int tag) {
  switch (tag) {
    CAPSTAN_CAPF_ELEMENTS(KNOWN_CASE)
    return 1;
  }
  return 0;
}

#undef KNOWN_CASE

int capstan_capf_command_is_server_sent(int command) {
  switch (command) {
    case CAPSTAN_CAPF_CMD_AUTH_REQUEST:
    case CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST:
    case CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST:
    case CAPSTAN_CAPF_CMD_FETCH_CERT_REQUEST:
    case CAPSTAN_CAPF_CMD_DELETE_CERT_REQUEST:
    case CAPSTAN_CAPF_CMD_END_SESSION:
    case CAPSTAN_CAPF_CMD_RETRY_LATER:
    case CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST: /* extension: external issuers only */
      return 1;
    default:
      return 0;
  }
}

int capstan_capf_server_may_send(int command, int tag) {
  /* SIGN_CERT_REQUEST carries nothing (capf-protocol.md extension). */
  if (command == CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST) return 0;
  switch (tag) {
    case CAPSTAN_CAPF_EL_REASON:
    case CAPSTAN_CAPF_EL_CERTIFICATE_TYPE:
    case CAPSTAN_CAPF_EL_CERTIFICATE:
    case CAPSTAN_CAPF_EL_VERSION:
    case CAPSTAN_CAPF_EL_AUTH_TYPE:
    case CAPSTAN_CAPF_EL_KEY_SIZE:
    case CAPSTAN_CAPF_EL_KEY_TYPE:
    case CAPSTAN_CAPF_EL_EC_CURVE:
      return 1;
    case CAPSTAN_CAPF_EL_RETRY_DELAY:
      /* Extension: known clients have never seen this tag. */
      return command == CAPSTAN_CAPF_CMD_RETRY_LATER;
    default:
      return 0;
  }
}

/* ---- Framing ------------------------------------------------------------- */

int capstan_capf_frame_max(const uint8_t *buf, size_t len, size_t max_message, size_t *msg_len) {
  if (max_message > CAPSTAN_CAPF_MAX_MESSAGE) max_message = CAPSTAN_CAPF_MAX_MESSAGE;
  CBS cbs;
  CBS_init(&cbs, buf, len);
  uint8_t protocol_id;
  if (!CBS_get_u8(&cbs, &protocol_id)) return CAPSTAN_CAPF_NEED_MORE;
  if (protocol_id != CAPSTAN_CAPF_PROTOCOL_ID) return CAPSTAN_EPROTO;
  uint16_t area_len;
  /* command (1) and session id (4) precede the length. */
  if (!CBS_skip(&cbs, 5) || !CBS_get_u16(&cbs, &area_len)) return CAPSTAN_CAPF_NEED_MORE;
  size_t total = CAPSTAN_CAPF_HEADER_LEN + (size_t)area_len;
  if (total > max_message) return CAPSTAN_ERANGE;
  if (len < total) return CAPSTAN_CAPF_NEED_MORE;
  *msg_len = total;
  return 0;
}

int capstan_capf_frame(const uint8_t *buf, size_t len, size_t *msg_len) {
  return capstan_capf_frame_max(buf, len, CAPSTAN_CAPF_MAX_MESSAGE, msg_len);
}

/* ---- Parsing ------------------------------------------------------------- */

int capstan_capf_parse(const uint8_t *msg, size_t len, capstan_capf_msg_t *out) {
  memset(out, 0, sizeof(*out));
  CBS cbs, area;
  CBS_init(&cbs, msg, len);
  uint8_t protocol_id, command;
  uint32_t session_id;
  if (!CBS_get_u8(&cbs, &protocol_id) || protocol_id != CAPSTAN_CAPF_PROTOCOL_ID ||
      !CBS_get_u8(&cbs, &command) || !capstan_capf_command_is_known(command) ||
      !CBS_get_u32(&cbs, &session_id) || !CBS_get_u16_length_prefixed(&cbs, &area) ||
      CBS_len(&cbs) != 0) {
    goto err;
  }
  out->command = command;
  out->session_id = session_id;
  out->length = (uint16_t)CBS_len(&area);
  while (CBS_len(&area) > 0) {
    uint8_t tag;
    CBS value;
    if (!CBS_get_u8(&area, &tag) || !CBS_get_u16_length_prefixed(&area, &value)) goto err;
    out->element_count++;
    if (!capstan_capf_element_is_known(tag)) {
      out->unknown_count++;
      continue;
    }
    uint32_t bit = 1u << tag;
    if (out->present & bit) goto err; /* duplicate known element */
    out->present |= bit;
    out->el[tag].data = CBS_data(&value);
    out->el[tag].len = CBS_len(&value);
  }
  return 0;

err:
  memset(out, 0, sizeof(*out));
  return CAPSTAN_EPROTO;
}

int capstan_capf_msg_has(const capstan_capf_msg_t *m, int tag) {
  if (tag < 0 || tag > CAPSTAN_CAPF_EL_MAX) return 0;
  return (m->present >> tag) & 1u;
}

/* Sets |*out| to the value of |tag|, or returns ENOENT. */
static int get_cbs(const capstan_capf_msg_t *m, int tag, CBS *out) {
  if (!capstan_capf_msg_has(m, tag)) return CAPSTAN_ENOENT;
  CBS_init(out, m->el[tag].data, m->el[tag].len);
  return 0;
}

static capstan_capf_slice_t slice_of(const CBS *cbs) {
  capstan_capf_slice_t s = {CBS_data(cbs), CBS_len(cbs)};
  return s;
}

int capstan_capf_get_u8(const capstan_capf_msg_t *m, int tag, uint8_t *out) {
  CBS v;
  int rc = get_cbs(m, tag, &v);
  if (rc != 0) return rc;
  uint8_t b;
  if (!CBS_get_u8(&v, &b) || CBS_len(&v) != 0) return CAPSTAN_EPROTO;
  *out = b;
  return 0;
}

int capstan_capf_get_u16(const capstan_capf_msg_t *m, int tag, uint16_t *out) {
  CBS v;
  int rc = get_cbs(m, tag, &v);
  if (rc != 0) return rc;
  uint16_t w;
  if (!CBS_get_u16(&v, &w) || CBS_len(&v) != 0) return CAPSTAN_EPROTO;
  *out = w;
  return 0;
}

int capstan_capf_get_bytes(const capstan_capf_msg_t *m, int tag, capstan_capf_slice_t *out) {
  CBS v;
  int rc = get_cbs(m, tag, &v);
  if (rc != 0) return rc;
  *out = slice_of(&v);
  return 0;
}

int capstan_capf_get_reason(const capstan_capf_msg_t *m, uint8_t *out) {
  return capstan_capf_get_u8(m, CAPSTAN_CAPF_EL_REASON, out);
}

int capstan_capf_get_version(const capstan_capf_msg_t *m, uint8_t *out) {
  return capstan_capf_get_u8(m, CAPSTAN_CAPF_EL_VERSION, out);
}

int capstan_capf_get_auth_type(const capstan_capf_msg_t *m, uint8_t *out) {
  return capstan_capf_get_u8(m, CAPSTAN_CAPF_EL_AUTH_TYPE, out);
}

/* Reads a 1-byte element and checks min <= value <= max. */
static int get_u8_in_range(const capstan_capf_msg_t *m, int tag, uint8_t min, uint8_t max,
                           uint8_t *out) {
  uint8_t v;
  int rc = capstan_capf_get_u8(m, tag, &v);
  if (rc != 0) return rc;
  if (v < min || v > max) return CAPSTAN_EPROTO;
  *out = v;
  return 0;
}

int capstan_capf_get_key_type(const capstan_capf_msg_t *m, uint8_t *out) {
  return get_u8_in_range(m, CAPSTAN_CAPF_EL_KEY_TYPE, CAPSTAN_CAPF_KEY_RSA, CAPSTAN_CAPF_KEY_EC,
                         out);
}

int capstan_capf_get_ec_curve(const capstan_capf_msg_t *m, uint8_t *out) {
  return get_u8_in_range(m, CAPSTAN_CAPF_EL_EC_CURVE, CAPSTAN_CAPF_CURVE_P256,
                         CAPSTAN_CAPF_CURVE_P521, out);
}

int capstan_capf_get_certificate_type(const capstan_capf_msg_t *m, uint8_t *out) {
  return get_u8_in_range(m, CAPSTAN_CAPF_EL_CERTIFICATE_TYPE, CAPSTAN_CAPF_CERT_LSC,
                         CAPSTAN_CAPF_CERT_MIC, out);
}

int capstan_capf_get_key_size(const capstan_capf_msg_t *m, uint16_t *out) {
  return capstan_capf_get_u16(m, CAPSTAN_CAPF_EL_KEY_SIZE, out);
}

int capstan_capf_get_retry_delay(const capstan_capf_msg_t *m, uint16_t *out) {
  return capstan_capf_get_u16(m, CAPSTAN_CAPF_EL_RETRY_DELAY, out);
}

/* Splits a NUL-terminated string element into its value (without the NUL).
 * Exactly one NUL, at the end. */
static int get_string(const capstan_capf_msg_t *m, int tag, size_t max_len, CBS *out) {
  CBS v;
  int rc = get_cbs(m, tag, &v);
  if (rc != 0) return rc;
  uint8_t last;
  if (!CBS_get_last_u8(&v, &last) || last != 0) return CAPSTAN_EPROTO;
  if (CBS_contains_zero_byte(&v) || CBS_len(&v) > max_len) return CAPSTAN_EPROTO;
  *out = v;
  return 0;
}

int capstan_capf_get_device_name(const capstan_capf_msg_t *m,
                                 char out[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1]) {
  CBS v;
  int rc = get_string(m, CAPSTAN_CAPF_EL_DEVICE_NAME, CAPSTAN_CAPF_DEVICE_NAME_MAX, &v);
  if (rc != 0) return rc;
  if (CBS_len(&v) == 0) return CAPSTAN_EPROTO;
  const uint8_t *p = CBS_data(&v);
  for (size_t i = 0; i < CBS_len(&v); i++) {
    /* Printable ASCII without space: names end up in file names and logs. */
    if (p[i] < 0x21 || p[i] > 0x7e) return CAPSTAN_EPROTO;
  }
  memcpy(out, p, CBS_len(&v));
  out[CBS_len(&v)] = '\0';
  return 0;
}

int capstan_capf_get_auth_password(const capstan_capf_msg_t *m, capstan_capf_slice_t *out) {
  CBS v;
  int rc = get_string(m, CAPSTAN_CAPF_EL_AUTH_PASSWORD, CAPSTAN_CAPF_AUTH_PASSWORD_MAX, &v);
  if (rc != 0) return rc;
  *out = slice_of(&v);
  return 0;
}

int capstan_capf_get_certificate(const capstan_capf_msg_t *m, uint8_t *type,
                                 capstan_capf_slice_t *der) {
  CBS v;
  int rc = get_cbs(m, CAPSTAN_CAPF_EL_CERTIFICATE, &v);
  if (rc != 0) return rc;
  uint8_t marker, zero, t;
  uint16_t len_plus_2;
  if (!CBS_get_u8(&v, &marker) || marker != 0x01 || !CBS_get_u16(&v, &len_plus_2) ||
      !CBS_get_u8(&v, &zero) || zero != 0x00 || !CBS_get_u8(&v, &t)) {
    return CAPSTAN_EPROTO;
  }
  if (t != CAPSTAN_CAPF_CERT_LSC && t != CAPSTAN_CAPF_CERT_MIC) return CAPSTAN_EPROTO;
  if (CBS_len(&v) == 0 || (size_t)len_plus_2 != CBS_len(&v) + 2) return CAPSTAN_EPROTO;
  if (type != NULL) *type = t;
  if (der != NULL) *der = slice_of(&v);
  return 0;
}

/* Reads hash id | u16 length | bytes, non-empty, and checks the hash id. */
static int get_hash_prefixed(CBS *cbs, uint8_t want_hash, CBS *out) {
  uint8_t id;
  if (!CBS_get_u8(cbs, &id) || id != want_hash || !CBS_get_u16_length_prefixed(cbs, out) ||
      CBS_len(out) == 0) {
    return 0;
  }
  return 1;
}

int capstan_capf_get_sha2_signed_data(const capstan_capf_msg_t *m, uint8_t *hash_id,
                                      capstan_capf_slice_t *sig) {
  CBS v, s;
  int rc = get_cbs(m, CAPSTAN_CAPF_EL_SHA2_SIGNED_DATA, &v);
  if (rc != 0) return rc;
  uint8_t id;
  if (!CBS_get_u8(&v, &id) || id < CAPSTAN_CAPF_HASH_SHA1 || id > CAPSTAN_CAPF_HASH_SHA512 ||
      !CBS_get_u16_length_prefixed(&v, &s) || CBS_len(&s) == 0 || CBS_len(&v) != 0) {
    return CAPSTAN_EPROTO;
  }
  if (hash_id != NULL) *hash_id = id;
  if (sig != NULL) *sig = slice_of(&s);
  return 0;
}

static int get_nonempty(const capstan_capf_msg_t *m, int tag, capstan_capf_slice_t *out) {
  CBS v;
  int rc = get_cbs(m, tag, &v);
  if (rc != 0) return rc;
  if (CBS_len(&v) == 0) return CAPSTAN_EPROTO;
  *out = slice_of(&v);
  return 0;
}

int capstan_capf_get_signed_data(const capstan_capf_msg_t *m, capstan_capf_slice_t *out) {
  return get_nonempty(m, CAPSTAN_CAPF_EL_SIGNED_DATA, out);
}

int capstan_capf_get_public_key(const capstan_capf_msg_t *m, capstan_capf_slice_t *out) {
  return get_nonempty(m, CAPSTAN_CAPF_EL_PUBLIC_KEY, out);
}

int capstan_capf_get_cert_request(const capstan_capf_msg_t *m, capstan_capf_slice_t *out) {
  return get_nonempty(m, CAPSTAN_CAPF_EL_CERT_REQUEST, out);
}

int capstan_capf_get_sudi_data(const capstan_capf_msg_t *m, capstan_capf_slice_t *out) {
  return get_nonempty(m, CAPSTAN_CAPF_EL_SUDI_DATA, out);
}

int capstan_capf_parse_sudi(capstan_capf_slice_t sudi, capstan_capf_slice_t *cert,
                            capstan_capf_slice_t *sha1_sig, capstan_capf_slice_t *sha512_sig) {
  CBS v, c, s1, s2;
  CBS_init(&v, sudi.data, sudi.len);
  if (!get_hash_prefixed(&v, 0x00, &c) || !get_hash_prefixed(&v, CAPSTAN_CAPF_HASH_SHA1, &s1) ||
      !get_hash_prefixed(&v, CAPSTAN_CAPF_HASH_SHA512, &s2) || CBS_len(&v) != 0) {
    return CAPSTAN_EPROTO;
  }
  if (cert != NULL) *cert = slice_of(&c);
  if (sha1_sig != NULL) *sha1_sig = slice_of(&s1);
  if (sha512_sig != NULL) *sha512_sig = slice_of(&s2);
  return 0;
}

/* The rule of each known element's value (capf-protocol.md "Elements").
 * Raw values whose layout the protocol does not fix (REASON_INFO,
 * CERTIFICATE_ID, SIGNED_DATA, PUBLIC_KEY, DIGEST_TYPE, CERT_REQUEST) take
 * any bytes here, empty included: the getter of a mode that needs one
 * refuses it empty. */
static int validate_element(const capstan_capf_msg_t *m, int tag) {
  uint8_t u8;
  uint16_t u16;
  char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  capstan_capf_slice_t v;
  switch (tag) {
    case CAPSTAN_CAPF_EL_REASON:
    case CAPSTAN_CAPF_EL_VERSION:
    case CAPSTAN_CAPF_EL_AUTH_TYPE:
      return capstan_capf_get_u8(m, tag, &u8);
    case CAPSTAN_CAPF_EL_CERTIFICATE_TYPE:
      return capstan_capf_get_certificate_type(m, &u8);
    case CAPSTAN_CAPF_EL_KEY_TYPE:
      return capstan_capf_get_key_type(m, &u8);
    case CAPSTAN_CAPF_EL_EC_CURVE:
      return capstan_capf_get_ec_curve(m, &u8);
    case CAPSTAN_CAPF_EL_KEY_SIZE:
    case CAPSTAN_CAPF_EL_RETRY_DELAY:
      return capstan_capf_get_u16(m, tag, &u16);
    case CAPSTAN_CAPF_EL_CERTIFICATE:
      return capstan_capf_get_certificate(m, NULL, NULL);
    case CAPSTAN_CAPF_EL_DEVICE_NAME:
      return capstan_capf_get_device_name(m, name);
    case CAPSTAN_CAPF_EL_AUTH_PASSWORD:
      return capstan_capf_get_auth_password(m, &v);
    case CAPSTAN_CAPF_EL_SHA2_SIGNED_DATA:
      return capstan_capf_get_sha2_signed_data(m, NULL, NULL);
    case CAPSTAN_CAPF_EL_SUDI_DATA: {
      int rc = capstan_capf_get_sudi_data(m, &v);
      return rc == 0 ? capstan_capf_parse_sudi(v, NULL, NULL, NULL) : rc;
    }
    default:
      return 0;
  }
}

int capstan_capf_validate(const capstan_capf_msg_t *m, int *bad_tag) {
  for (int tag = 0; tag <= CAPSTAN_CAPF_EL_MAX; tag++) {
    if (!capstan_capf_msg_has(m, tag)) continue;
    if (validate_element(m, tag) != 0) {
      if (bad_tag != NULL) *bad_tag = tag;
      return CAPSTAN_EPROTO;
    }
  }
  return 0;
}

void capstan_capf_msg_describe(const capstan_capf_msg_t *m, char *buf, size_t size) {
  if (size == 0) return;
  int n = snprintf(buf, size, "%s session=0x%08x elements=", capstan_capf_command_name(m->command),
                   (unsigned)m->session_id);
  if (n < 0 || (size_t)n >= size) return;
  size_t off = (size_t)n;
  int first = 1;
  for (int tag = 0; tag <= CAPSTAN_CAPF_EL_MAX; tag++) {
    if (!capstan_capf_msg_has(m, tag)) continue;
    n = snprintf(buf + off, size - off, "%s%s", first ? "" : ",", capstan_capf_element_name(tag));
    if (n < 0 || (size_t)n >= size - off) return;
    off += (size_t)n;
    first = 0;
  }
  if (m->unknown_count > 0) {
    snprintf(buf + off, size - off, "%sunknown:%u", first ? "" : ",", m->unknown_count);
  } else if (first) {
    snprintf(buf + off, size - off, "none");
  }
}

/* ---- Building ------------------------------------------------------------ */

int capstan_capf_builder_begin(capstan_capf_builder_t *b, int command, uint32_t session_id,
                               int server_side) {
  memset(b, 0, sizeof(*b));
  CBB_zero(&b->cbb);
  b->started = 1;
  b->server_side = server_side;
  if (!capstan_capf_command_is_known(command) ||
      (server_side && !capstan_capf_command_is_server_sent(command))) {
    b->error = CAPSTAN_EINVAL;
    return b->error;
  }
  b->command = (uint8_t)command;
  if (!CBB_init(&b->cbb, 64) || !CBB_add_u8(&b->cbb, CAPSTAN_CAPF_PROTOCOL_ID) ||
      !CBB_add_u8(&b->cbb, (uint8_t)command) || !CBB_add_u32(&b->cbb, session_id) ||
      !CBB_add_u16_length_prefixed(&b->cbb, &b->area)) {
    b->error = CAPSTAN_ENOMEM;
    return b->error;
  }
  return 0;
}

/* Common checks before an element: sticky error, tag policy, size. Then
 * writes tag and opens the u16 value. */
static int begin_element(capstan_capf_builder_t *b, int tag, size_t value_len, CBB *value) {
  if (b->error != 0) return b->error;
  if (!b->started) return b->error = CAPSTAN_EINVAL;
  if (tag < 0 || tag > 255 || (b->server_side && !capstan_capf_server_may_send(b->command, tag))) {
    return b->error = CAPSTAN_EINVAL;
  }
  /* The area (the elements so far, this element's 3-byte header, and its
   * value) must fit in the u16 length. */
  size_t used = CBB_len(&b->area);
  if (value_len > CAPSTAN_CAPF_MAX_ELEMENTS_LEN ||
      used + 3 + value_len > CAPSTAN_CAPF_MAX_ELEMENTS_LEN) {
    return b->error = CAPSTAN_ERANGE;
  }
  if (!CBB_add_u8(&b->area, (uint8_t)tag) || !CBB_add_u16_length_prefixed(&b->area, value)) {
    return b->error = CAPSTAN_ENOMEM;
  }
  return 0;
}

static int end_element(capstan_capf_builder_t *b, int ok) {
  if (!ok || !CBB_flush(&b->area)) return b->error = CAPSTAN_ENOMEM;
  return 0;
}

int capstan_capf_builder_add_u8(capstan_capf_builder_t *b, int tag, uint8_t v) {
  CBB value;
  int rc = begin_element(b, tag, 1, &value);
  if (rc != 0) return rc;
  return end_element(b, CBB_add_u8(&value, v));
}

int capstan_capf_builder_add_u16(capstan_capf_builder_t *b, int tag, uint16_t v) {
  CBB value;
  int rc = begin_element(b, tag, 2, &value);
  if (rc != 0) return rc;
  return end_element(b, CBB_add_u16(&value, v));
}

int capstan_capf_builder_add_bytes(capstan_capf_builder_t *b, int tag, const uint8_t *data,
                                   size_t len) {
  CBB value;
  int rc = begin_element(b, tag, len, &value);
  if (rc != 0) return rc;
  return end_element(b, len == 0 || CBB_add_bytes(&value, data, len));
}

int capstan_capf_builder_add_string(capstan_capf_builder_t *b, int tag, const char *str,
                                    size_t len) {
  if (b->error != 0) return b->error;
  if (len > 0 && memchr(str, 0, len) != NULL) return b->error = CAPSTAN_EINVAL;
  CBB value;
  int rc = begin_element(b, tag, len + 1, &value);
  if (rc != 0) return rc;
  return end_element(
      b, (len == 0 || CBB_add_bytes(&value, (const uint8_t *)str, len)) && CBB_add_u8(&value, 0));
}

int capstan_capf_builder_add_certificate(capstan_capf_builder_t *b, int cert_type,
                                         const uint8_t *der, size_t len) {
  if (b->error != 0) return b->error;
  if (cert_type < 0 || cert_type > 255) return b->error = CAPSTAN_EINVAL;
  if (len > CAPSTAN_CAPF_CERT_DER_MAX) return b->error = CAPSTAN_ERANGE;
  CBB value;
  int rc =
      begin_element(b, CAPSTAN_CAPF_EL_CERTIFICATE, CAPSTAN_CAPF_CERT_PREFIX_LEN + len, &value);
  if (rc != 0) return rc;
  return end_element(b, CBB_add_u8(&value, 0x01) && CBB_add_u16(&value, (uint16_t)(len + 2)) &&
                            CBB_add_u8(&value, 0x00) && CBB_add_u8(&value, (uint8_t)cert_type) &&
                            (len == 0 || CBB_add_bytes(&value, der, len)));
}

/* Writes id | u16 len | data into |cbb|. */
static int add_hash_prefixed(CBB *cbb, uint8_t id, const uint8_t *data, size_t len) {
  CBB part;
  return CBB_add_u8(cbb, id) && CBB_add_u16_length_prefixed(cbb, &part) &&
         (len == 0 || CBB_add_bytes(&part, data, len)) && CBB_flush(cbb);
}

int capstan_capf_builder_add_sha2_signed_data(capstan_capf_builder_t *b, int hash_id,
                                              const uint8_t *sig, size_t len) {
  if (b->error != 0) return b->error;
  if (hash_id < 0 || hash_id > 255) return b->error = CAPSTAN_EINVAL;
  CBB value;
  int rc = begin_element(b, CAPSTAN_CAPF_EL_SHA2_SIGNED_DATA, 3 + len, &value);
  if (rc != 0) return rc;
  return end_element(b, add_hash_prefixed(&value, (uint8_t)hash_id, sig, len));
}

int capstan_capf_builder_add_sudi(capstan_capf_builder_t *b, const uint8_t *cert, size_t cert_len,
                                  const uint8_t *sha1_sig, size_t sha1_len,
                                  const uint8_t *sha512_sig, size_t sha512_len) {
  if (b->error != 0) return b->error;
  /* Each part's length is checked by the total below, since the total must
   * fit in a u16 and each part is smaller than it. */
  if (cert_len > CAPSTAN_CAPF_MAX_ELEMENTS_LEN || sha1_len > CAPSTAN_CAPF_MAX_ELEMENTS_LEN ||
      sha512_len > CAPSTAN_CAPF_MAX_ELEMENTS_LEN) {
    return b->error = CAPSTAN_ERANGE;
  }
  CBB value;
  int rc =
      begin_element(b, CAPSTAN_CAPF_EL_SUDI_DATA, 9 + cert_len + sha1_len + sha512_len, &value);
  if (rc != 0) return rc;
  return end_element(
      b, add_hash_prefixed(&value, 0x00, cert, cert_len) &&
             add_hash_prefixed(&value, CAPSTAN_CAPF_HASH_SHA1, sha1_sig, sha1_len) &&
             add_hash_prefixed(&value, CAPSTAN_CAPF_HASH_SHA512, sha512_sig, sha512_len));
}

int capstan_capf_builder_finish(capstan_capf_builder_t *b, uint8_t **out, size_t *out_len) {
  int rc = b->error;
  if (rc == 0 && !b->started) rc = CAPSTAN_EINVAL;
  if (rc == 0) {
    uint8_t *data = NULL;
    size_t len = 0;
    if (!CBB_finish(&b->cbb, &data, &len)) {
      rc = CAPSTAN_ENOMEM;
    } else {
      *out = data;
      *out_len = len;
    }
  }
  capstan_capf_builder_cleanup(b);
  if (rc != 0) b->error = rc;
  return rc;
}

void capstan_capf_builder_cleanup(capstan_capf_builder_t *b) {
  /* Only the top-level CBB owns memory; the area is a child of it. After
   * CBB_finish the top-level CBB is already empty and cleanup is a no-op. */
  CBB_cleanup(&b->cbb);
  CBB_zero(&b->cbb);
  b->started = 0;
}

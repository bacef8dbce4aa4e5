/* Interim DN/serial helpers; see files_internal.h. */
#include "core/files/files_internal.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/bytestring.h>
#include <openssl/mem.h>
#include <openssl/obj.h>
#include <openssl/x509.h>

#include "core/error.h"

/* RFC 4514 section 3: the short names a writer may use; anything else is
 * written as a dotted OID. */
static const char *short_name(int nid) {
  switch (nid) {
    case NID_commonName:
      return "CN";
    case NID_localityName:
      return "L";
    case NID_stateOrProvinceName:
      return "ST";
    case NID_organizationName:
      return "O";
    case NID_organizationalUnitName:
      return "OU";
    case NID_countryName:
      return "C";
    case NID_streetAddress:
      return "STREET";
    case NID_domainComponent:
      return "DC";
    case NID_userId:
      return "UID";
    default:
      return NULL;
  }
}

/* RFC 4514 section 2.4 escaping of an attribute value. */
static int add_escaped(CBB *cbb, const uint8_t *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint8_t c = v[i];
    int esc = c == '"' || c == '+' || c == ',' || c == ';' || c == '<' || c == '>' || c == '\\' ||
              (i == 0 && (c == ' ' || c == '#')) || (i + 1 == n && c == ' ');
    if (c == 0) {
      if (!CBB_add_bytes(cbb, (const uint8_t *)"\\00", 3)) return 0;
      continue;
    }
    if (esc && !CBB_add_u8(cbb, '\\')) return 0;
    if (!CBB_add_u8(cbb, c)) return 0;
  }
  return 1;
}

int capstan_files_dn_string(const X509_NAME *name, char **out) {
  *out = NULL;
  CBB cbb;
  uint8_t *buf = NULL;
  size_t buf_len = 0;
  int rc = CAPSTAN_ENOMEM;
  if (!CBB_init(&cbb, 128)) return CAPSTAN_ENOMEM;
  int n = X509_NAME_entry_count(name);
  int prev_set = -1;
  for (int i = 0; i < n; i++) {
    const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
    int set = X509_NAME_ENTRY_set(e);
    if (i > 0 && !CBB_add_u8(&cbb, set == prev_set ? '+' : ',')) goto err;
    prev_set = set;
    const ASN1_OBJECT *obj = X509_NAME_ENTRY_get_object(e);
    const char *sn = short_name(OBJ_obj2nid(obj));
    char oid[128];
    if (sn == NULL) {
      int l = OBJ_obj2txt(oid, sizeof(oid), obj, 1);
      if (l <= 0 || (size_t)l >= sizeof(oid)) {
        rc = CAPSTAN_EINVAL;
        goto err;
      }
      sn = oid;
    }
    if (!CBB_add_bytes(&cbb, (const uint8_t *)sn, strlen(sn)) || !CBB_add_u8(&cbb, '=')) goto err;
    unsigned char *utf8 = NULL;
    int ul = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
    if (ul < 0) {
      rc = CAPSTAN_EINVAL;
      goto err;
    }
    int ok = add_escaped(&cbb, utf8, (size_t)ul);
    OPENSSL_free(utf8);
    if (!ok) goto err;
  }
  if (!CBB_add_u8(&cbb, 0) || !CBB_finish(&cbb, &buf, &buf_len)) goto err;
  *out = malloc(buf_len);
  if (*out == NULL) {
    OPENSSL_free(buf);
    return CAPSTAN_ENOMEM;
  }
  memcpy(*out, buf, buf_len);
  OPENSSL_free(buf);
  return 0;
err:
  CBB_cleanup(&cbb);
  return rc;
}

int capstan_files_serial_bytes(const X509 *cert, uint8_t *out, size_t cap, size_t *len) {
  const ASN1_INTEGER *s = X509_get0_serialNumber(cert);
  *len = 0;
  if (s == NULL || ASN1_STRING_type(s) == V_ASN1_NEG_INTEGER) return CAPSTAN_EINVAL;
  const uint8_t *d = ASN1_STRING_get0_data(s);
  size_t n = (size_t)ASN1_STRING_length(s);
  while (n > 1 && d[0] == 0) {
    d++;
    n--;
  }
  if (n == 0) {
    if (cap < 1) return CAPSTAN_ERANGE;
    out[0] = 0;
    *len = 1;
    return 0;
  }
  if (n > cap) return CAPSTAN_ERANGE;
  memcpy(out, d, n);
  *len = n;
  return 0;
}

/* The online CA's answers (core/ca): EST enroll and cacerts bodies, certsrv
 * pages, certificates and chains, Retry-After values. Input: byte 0 picks
 * the parser, byte 1 the HTTP status, the rest is the body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/ca/ca.h"
#include "core/ca/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const int statuses[] = {200, 202, 401, 403, 500, 302};
  if (size < 2) return 0;
  uint8_t *body = malloc(size - 2 + 1);
  if (!body) return 0;
  memcpy(body, data + 2, size - 2);
  body[size - 2] = 0; /* as http.c delivers it */
  ca_http_response_t resp;
  memset(&resp, 0, sizeof resp);
  resp.status = statuses[data[1] % (sizeof statuses / sizeof statuses[0])];
  resp.body = body;
  resp.body_len = size - 2;
  static const uint8_t spki[] = {0x30, 0x03, 0x02, 0x01, 0x00};
  capstan_ca_result_t r;
  memset(&r, 0, sizeof r);
  char reqid[CAPSTAN_CA_REQUEST_ID_MAX + 1];
  switch (data[0] % 6) {
    case 0:
      ca_est_enroll_answer(&resp, spki, sizeof spki, 1700000000, &r);
      break;
    case 1:
      ca_est_cacerts_answer(&resp, &r);
      break;
    case 2:
      ca_mscs_submit_answer(&resp, 1700000000, &r, reqid, sizeof reqid);
      break;
    case 3:
      ca_mscs_cert_answer(&resp, "1", 1700000000, &r);
      break;
    case 4:
      ca_mscs_chain_answer(&resp, &r);
      break;
    case 5:
      ca_retry_after_seconds((const char *)body, 1700000000);
      break;
  }
  capstan_ca_result_cleanup(&r);
  free(body);
  return 0;
}

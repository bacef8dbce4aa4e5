/* Fuzz target for the signed-file readers: the header (capstan_sgn_parse),
 * .sgn, ITL (records and the certificate cross-check) and, for VERSION 2.0
 * headers, the encryption fields. Seeds: capstan-written .sgn, ITL and
 * .enc.sgn files in tests/fuzz/corpus/fuzz_files_sgn/. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/files/itl.h"
#include "core/files/sgn.h"
#include "core/files/sgnhdr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *why = NULL;
  capstan_sgn_info_t info;
  if (capstan_sgn_parse(data, size, &info, &why) == 0) {
    /* Every range the reader returns lies inside the input. */
    const capstan_sgn_bytes_t *ranges[] = {
        &info.signer_name, &info.issuer_name,     &info.serial,
        &info.signature,   &info.filename,        &info.payload,
        &info.enc.iv,      &info.enc.wrapped_key, &info.enc.hash};
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
      const capstan_sgn_bytes_t *r = ranges[i];
      if (r->data != NULL && (r->data < data || r->data + r->len > data + size)) abort();
    }
    if (info.sig_field_offset + info.sig_field_len > info.header_length) abort();
  }
  (void)capstan_sgnfile_parse(data, size, &info, &why);
  capstan_itl_info_t *itl = malloc(sizeof(*itl));
  if (itl == NULL) return 0;
  if (capstan_itl_parse(data, size, itl, &why) == 0) {
    for (size_t i = 0; i < itl->n_records; i++)
      (void)capstan_itl_check_record(&itl->records[i], &why);
  }
  free(itl);
  return 0;
}

/* capstan-csr-seed: records a phone's certificate request as pending, as
 * the CAPF session will once phones can make requests (a test aid, never
 * installed; not in `capstan --help`).
 *
 *   capstan-csr-seed --data-dir DIR --device NAME --csr FILE.pem [--age SECONDS]
 *   capstan-csr-seed --data-dir DIR --ca-chain CHAIN.pem
 *
 * The second form stores CHAIN.pem's certificates (issuer first, root last)
 * as the CA's chain in the stored CaConfig, as `capstan ca test` does once
 * the CA client is there, for the tests of `capstan ca show`.
 *
 * FILE.pem is a PKCS#10 request (openssl req -new ...); its signature is
 * checked and its public key becomes the request's key. The request is
 * dated SECONDS before now (default 0) and made for the offline CA. The
 * device must exist. Exit 0, or 1 with the reason. */
#include <openssl/bytestring.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/ca/ca.h"
#include "core/ca/requests.h"
#include "core/pki/pki.h"
#include "core/settings.h"
#include "storage/audit.h"
#include "storage/store.h"

typedef struct {
  const char *device;
  uint8_t *csr, *spki;
  size_t csr_len, spki_len;
  int64_t at;
} seed_t;

static int seed_fn(capstan_txn_t *txn, void *arg) {
  seed_t *s = arg;
  return capstan_csr_record_pending(txn, s->device, s->csr, s->csr_len, s->spki, s->spki_len,
                                    CAPSTAN_ISSUER_OFFLINE, NULL, 0, NULL, s->at);
}

typedef struct {
  uint8_t **ders;
  size_t *lens, n;
} chain_seed_t;

static int chain_fn(capstan_txn_t *txn, void *arg) {
  chain_seed_t *c = arg;
  capstan_ca_config_t cfg;
  int err = capstan_ca_config_read(txn, &cfg);
  if (err != 0) return err;
  for (size_t i = 0; i < cfg.chain_count; i++) free(cfg.chain_der[i]);
  free(cfg.chain_der);
  free(cfg.chain_lens);
  cfg.chain_der = c->ders;
  cfg.chain_lens = c->lens;
  cfg.chain_count = c->n;
  cfg.chain_fetched_at = (int64_t)time(NULL);
  err = capstan_ca_config_write(txn, &cfg);
  /* The arrays stay the caller's. */
  cfg.chain_der = NULL;
  cfg.chain_lens = NULL;
  cfg.chain_count = 0;
  capstan_ca_config_cleanup(&cfg);
  return err;
}

static int fail(const char *why) {
  fprintf(stderr, "capstan-csr-seed: %s\n", why);
  return 1;
}

int main(int argc, char **argv) {
  const char *dir = NULL, *device = NULL, *csr_path = NULL, *chain_path = NULL;
  long long age = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--data-dir") == 0) {
      dir = argv[i + 1];
    } else if (strcmp(argv[i], "--device") == 0) {
      device = argv[i + 1];
    } else if (strcmp(argv[i], "--csr") == 0) {
      csr_path = argv[i + 1];
    } else if (strcmp(argv[i], "--ca-chain") == 0) {
      chain_path = argv[i + 1];
    } else if (strcmp(argv[i], "--age") == 0) {
      age = strtoll(argv[i + 1], NULL, 10);
    } else {
      return fail("unknown option");
    }
  }
  static uint8_t text[65536];
  if (dir != NULL && chain_path != NULL && argc == 5) {
    FILE *cf = fopen(chain_path, "rb");
    if (cf == NULL) return fail("cannot open the chain file");
    size_t clen = fread(text, 1, sizeof(text), cf);
    fclose(cf);
    chain_seed_t c = {0};
    if (capstan_pki_pem_decode(text, clen, "CERTIFICATE", &c.ders, &c.lens, &c.n) != 0) {
      return fail("the chain file holds no 'BEGIN CERTIFICATE' block");
    }
    capstan_store_t *store;
    int err = capstan_store_open(dir, 0, &store);
    if (err == 0) {
      err = capstan_store_write(store, chain_fn, &c);
      capstan_store_close(store);
    }
    capstan_pki_der_array_free(c.ders, c.lens, c.n);
    if (err != 0) return fail(capstan_strerror(err));
    return 0;
  }
  if (dir == NULL || device == NULL || csr_path == NULL || (argc - 1) % 2 != 0) {
    fprintf(stderr,
            "usage: capstan-csr-seed --data-dir DIR --device NAME --csr FILE.pem "
            "[--age SECONDS]\n");
    return 2;
  }
  FILE *f = fopen(csr_path, "rb");
  if (f == NULL) return fail("cannot open the CSR file");
  size_t len = fread(text, 1, sizeof(text), f);
  fclose(f);
  uint8_t **ders = NULL;
  size_t *lens = NULL, n = 0;
  if (capstan_pki_pem_decode(text, len, "CERTIFICATE REQUEST", &ders, &lens, &n) != 0 || n != 1) {
    return fail("the file must hold one 'BEGIN CERTIFICATE REQUEST' block");
  }
  const uint8_t *p = ders[0];
  X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)lens[0]);
  if (req == NULL || p != ders[0] + lens[0]) return fail("not a readable PKCS#10 request");
  EVP_PKEY *key = X509_REQ_get_pubkey(req);
  if (key == NULL || X509_REQ_verify(req, key) != 1) return fail("the request's signature is bad");
  seed_t s = {.device = device, .csr = ders[0], .csr_len = lens[0]};
  if (capstan_pki_public_key_to_der(key, &s.spki, &s.spki_len) != 0) return fail("bad key");
  EVP_PKEY_free(key);
  X509_REQ_free(req);
  s.at = (int64_t)time(NULL) - age;
  capstan_store_t *store;
  int err = capstan_store_open(dir, 0, &store);
  if (err == 0) {
    capstan_store_set_actor(store, "capstan-csr-seed");
    err = capstan_store_write(store, seed_fn, &s);
    capstan_store_close(store);
  }
  free(s.spki);
  capstan_pki_der_array_free(ders, lens, n);
  if (err != 0) {
    fprintf(stderr, "capstan-csr-seed: %s\n", capstan_strerror(err));
    return 1;
  }
  return 0;
}

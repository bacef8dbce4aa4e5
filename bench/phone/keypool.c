/* The simulated phones' key pool. See phone.h. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>

#include "bench/phone/phone.h"
#include "core/base/error.h"
#include "core/base/phone.h"
#include "core/pki/pki.h"

/* A cached key file is a PKCS#8 DER private key; RSA 4096 is about 2.4 KB. */
#define KEYPOOL_MAX_FILE 16384

typedef struct pool_kind {
  int alg;
  unsigned bits;
  EVP_PKEY **keys;
  unsigned count;
  unsigned next; /* round robin */
  struct pool_kind *link;
} pool_kind_t;

struct capstan_phone_keypool {
  char *cache_dir;
  unsigned per_kind;
  pool_kind_t *kinds;
};

int capstan_phone_parse_key_spec(const char *spec, int *key_alg, unsigned *bits) {
  if (spec == NULL) return CAPSTAN_EINVAL;
  const char *num;
  int alg;
  if (strncasecmp(spec, "rsa", 3) == 0) {
    alg = CAPSTAN_KEY_RSA;
    num = spec + 3;
  } else if (strncasecmp(spec, "ec", 2) == 0) {
    alg = CAPSTAN_KEY_EC;
    num = spec + 2;
  } else if (strncasecmp(spec, "p", 1) == 0) {
    alg = CAPSTAN_KEY_EC;
    num = spec + 1;
  } else {
    return CAPSTAN_EINVAL;
  }
  if (*num == '-') num++;
  char *end = NULL;
  unsigned long v = strtoul(num, &end, 10);
  if (end == num || *end != '\0') return CAPSTAN_EINVAL;
  if (v > UINT_MAX || !capstan_key_valid(alg, (unsigned)v)) return CAPSTAN_EINVAL;
  *key_alg = alg;
  *bits = (unsigned)v;
  return 0;
}

capstan_phone_keypool_t *capstan_phone_keypool_new(const char *cache_dir, unsigned per_kind) {
  capstan_phone_keypool_t *pool = calloc(1, sizeof(*pool));
  if (pool == NULL) return NULL;
  pool->per_kind = per_kind > 0 ? per_kind : 1;
  if (cache_dir != NULL && cache_dir[0] != '\0') {
    pool->cache_dir = strdup(cache_dir);
    if (pool->cache_dir == NULL) {
      free(pool);
      return NULL;
    }
    /* Best effort: a cache that cannot be written only costs time. */
    if (mkdir(cache_dir, 0700) != 0 && errno != EEXIST) {
      fprintf(stderr, "capstan-phone: cannot create key cache %s: %s\n", cache_dir,
              strerror(errno));
    }
  }
  return pool;
}

void capstan_phone_keypool_free(capstan_phone_keypool_t *pool) {
  if (pool == NULL) return;
  pool_kind_t *k = pool->kinds;
  while (k != NULL) {
    pool_kind_t *next = k->link;
    for (unsigned i = 0; i < k->count; i++) EVP_PKEY_free(k->keys[i]);
    free(k->keys);
    free(k);
    k = next;
  }
  free(pool->cache_dir);
  free(pool);
}

static pool_kind_t *find_kind(capstan_phone_keypool_t *pool, int alg, unsigned bits, int create) {
  for (pool_kind_t *k = pool->kinds; k != NULL; k = k->link) {
    if (k->alg == alg && k->bits == bits) return k;
  }
  if (!create) return NULL;
  pool_kind_t *k = calloc(1, sizeof(*k));
  if (k == NULL) return NULL;
  k->keys = calloc(pool->per_kind, sizeof(*k->keys));
  if (k->keys == NULL) {
    free(k);
    return NULL;
  }
  k->alg = alg;
  k->bits = bits;
  k->link = pool->kinds;
  pool->kinds = k;
  return k;
}

static void cache_path(const capstan_phone_keypool_t *pool, int alg, unsigned bits, unsigned n,
                       char *out, size_t size) {
  snprintf(out, size, "%s/%s%u-%u.der", pool->cache_dir, alg == CAPSTAN_KEY_RSA ? "rsa" : "ec",
           bits, n);
}

/* Checks that a loaded key really is of the kind its file name says. */
static int key_is_kind(EVP_PKEY *key, int alg, unsigned bits) {
  if (alg == CAPSTAN_KEY_RSA) {
    return EVP_PKEY_id(key) == EVP_PKEY_RSA && EVP_PKEY_bits(key) == (int)bits;
  }
  return EVP_PKEY_id(key) == EVP_PKEY_EC && EVP_PKEY_bits(key) == (int)bits;
}

static EVP_PKEY *load_cached(const capstan_phone_keypool_t *pool, int alg, unsigned bits,
                             unsigned n) {
  if (pool->cache_dir == NULL) return NULL;
  char path[4096];
  cache_path(pool, alg, bits, n, path, sizeof(path));
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  uint8_t *buf = malloc(KEYPOOL_MAX_FILE);
  EVP_PKEY *key = NULL;
  if (buf != NULL) {
    size_t len = fread(buf, 1, KEYPOOL_MAX_FILE, f);
    CBS cbs;
    CBS_init(&cbs, buf, len);
    key = EVP_parse_private_key(&cbs);
    if (key != NULL && (CBS_len(&cbs) != 0 || !key_is_kind(key, alg, bits))) {
      EVP_PKEY_free(key);
      key = NULL;
    }
    OPENSSL_cleanse(buf, KEYPOOL_MAX_FILE);
    free(buf);
  }
  fclose(f);
  ERR_clear_error();
  return key;
}

static void store_cached(const capstan_phone_keypool_t *pool, EVP_PKEY *key, int alg, unsigned bits,
                         unsigned n) {
  if (pool->cache_dir == NULL) return;
  CBB cbb;
  uint8_t *der = NULL;
  size_t len = 0;
  if (!CBB_init(&cbb, 2048) || !EVP_marshal_private_key(&cbb, key) ||
      !CBB_finish(&cbb, &der, &len)) {
    CBB_cleanup(&cbb);
    ERR_clear_error();
    return;
  }
  char path[4096], tmp[4200];
  cache_path(pool, alg, bits, n, path, sizeof(path));
  snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  /* Write then rename, so that concurrent benches never read half a file. */
  FILE *f = fopen(tmp, "wb");
  if (f != NULL) {
    int ok = fwrite(der, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) unlink(tmp);
  }
  OPENSSL_cleanse(der, len);
  OPENSSL_free(der);
}

/* Adds one key to |k|: from the cache when there, else generated. */
static int add_key(capstan_phone_keypool_t *pool, pool_kind_t *k) {
  unsigned n = k->count;
  EVP_PKEY *key = load_cached(pool, k->alg, k->bits, n);
  if (key == NULL) {
    int rc = capstan_pki_generate_key(k->alg, k->bits, &key);
    if (rc != 0) return rc;
    store_cached(pool, key, k->alg, k->bits, n);
  }
  k->keys[k->count++] = key;
  return 0;
}

static int check_kind(int alg, unsigned bits) {
  return capstan_key_valid(alg, bits) ? 0 : -1;
}

int capstan_phone_keypool_prewarm(capstan_phone_keypool_t *pool, int key_alg, unsigned bits,
                                  unsigned n) {
  if (check_kind(key_alg, bits) != 0) return CAPSTAN_EINVAL;
  pool_kind_t *k = find_kind(pool, key_alg, bits, 1);
  if (k == NULL) return CAPSTAN_ENOMEM;
  if (n > pool->per_kind) n = pool->per_kind;
  while (k->count < n) {
    int rc = add_key(pool, k);
    if (rc != 0) return rc;
  }
  return 0;
}

int capstan_phone_keypool_get(capstan_phone_keypool_t *pool, int key_alg, unsigned bits,
                              EVP_PKEY **out) {
  if (check_kind(key_alg, bits) != 0) return CAPSTAN_EINVAL;
  pool_kind_t *k = find_kind(pool, key_alg, bits, 1);
  if (k == NULL) return CAPSTAN_ENOMEM;
  EVP_PKEY *key;
  if (k->count < pool->per_kind && k->next >= k->count) {
    int rc = add_key(pool, k);
    if (rc != 0) return rc;
    key = k->keys[k->count - 1];
  } else {
    key = k->keys[k->next % k->count];
  }
  k->next = (k->next + 1) % pool->per_kind;
  EVP_PKEY_up_ref(key);
  *out = key;
  return 0;
}

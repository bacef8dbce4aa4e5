/* capstan-phone: one simulated phone, one CAPF session, for integration tests
 * and by hand. Prints the outcome (one JSON line with --json) and exits 0
 * when the session completed as the protocol says (an operation, or an
 * END_SESSION with any reason), 1 on error (connect, TLS, protocol, timeout,
 * RETRY_LATER, a bad certificate), 2 on bad usage. See bench/README.md.
 *
 * Against an external CA (SIGN_CERT_REQUEST), --key-file keeps the key of
 * the phone's certificate request across runs, for the hand-over of its
 * certificate in a later session; --csr-mode and --refuse-store misbehave.
 *
 * With --boot http|tftp the phone runs its boot sequence instead (ITL,
 * signed configuration, CAPF when the certificate hash says so, encrypted
 * configuration) and exits 0 when the boot succeeded, 1 when it failed. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "bench/phone/phone.h"
#include "core/base/error.h"
#include "core/pki/pki.h"

#define MAX_FILE (1u << 20)

static void usage(FILE *f) {
  fprintf(f,
          "usage: capstan-phone --connect HOST:PORT --name SEP... [options]\n"
          "  --auth MODE          string | null | absent | lsc | mic (default null)\n"
          "  --auth-string S      the authentication string (--auth string)\n"
          "  --cert FILE.der      the phone's LSC (its MIC with --auth mic and no --mic-cert)\n"
          "  --key FILE.der       its private key, PKCS#8 DER\n"
          "  --mic-cert FILE.der  --mic-key FILE.der   a MIC besides the LSC\n"
          "  --sudi-cert FILE.der --sudi-key FILE.der  send SUDI_DATA\n"
          "  --save-cert FILE.der --save-key FILE.der  write the LSC held at the end\n"
          "                       (removed when the phone ends without one)\n"
          "  --keygen-delay SEC   simulated key generation time (REQUEST_IN_PROGRESS first)\n"
          "  --key-cache DIR      reuse generated keys from DIR (PKCS#8 DER files)\n"
          "  --ca-pem FILE        verify the server against these PEM certificates\n"
          "  --timeout SEC        wait at most SEC for each server step (default 30)\n"
          "  --ca-wait SEC        after SIGN_CERT_RESPONSE, wait at most SEC for the server\n"
          "                       while it asks its CA (default 180; at least --timeout)\n"
          "  --key-file FILE.der  the key of the phone's certificate request (PKCS#8 DER):\n"
          "                       read at start when it exists (a STORE_CERT_REQUEST with no\n"
          "                       KEY_GEN_REQUEST before it must be for this key: offline\n"
          "                       CA hand-over), written (0600) with every new key the\n"
          "                       phone sends in KEY_GEN_RESPONSE\n"
          "  --json               print one JSON line\n"
          "boot sequence (files, then CAPF when needed):\n"
          "  --boot http|tftp     run the boot sequence over this transport\n"
          "  --files HOST:PORT    the HTTP or TFTP file server\n"
          "                       (--connect: CAPF; default: the configuration's capfList)\n"
          "  --boot-only          download and verify files; never open a CAPF session\n"
          "  --tftp-cert FILE.pem trust only ITLs signed by this certificate (default: trust\n"
          "                       the first ITL)\n"
          "  --save-tftp-cert F   write the ITL signer the phone trusts after the boot\n"
          "  --reboot             after an enrollment, boot again with the new LSC\n"
          "  --save-config FILE   write the configuration held at the end\n"
          "  --keep-alive         HTTP: one connection for the boot's downloads\n"
          "misbehaviour, to test the server:\n"
          "  --proto-version N    VERSION in AUTH_RESPONSE (default 3)\n"
          "  --keygen-fail        answer KEY_GEN_REQUEST with REASON=7\n"
          "  --answer-key SPEC    answer with this key (rsa1024, ec256, ...) instead\n"
          "  --store-reason N     STORE_CERT_RESPONSE reason (default 1)\n"
          "  --refuse-store       answer the first STORE_CERT_REQUEST with REASON=7, keeping\n"
          "                       the old LSC (a refused hand-over: the server starts over)\n"
          "  --csr-mode MODE      answer SIGN_CERT_REQUEST with: ok (default: a PKCS#10\n"
          "                       request, CN=<name>, signed by the new key, SHA-256) |\n"
          "                       refuse (REASON=7 alone) | wrong-key (request for another\n"
          "                       key) | wrong-cn (CN=SEP000000000000) | bad-signature (a\n"
          "                       byte of the signature flipped) | garbage (random bytes) |\n"
          "                       silent (no answer); after a mode other than ok the\n"
          "                       server must end the session, with a REASON other than 1\n"
          "  --stall              never answer AUTH_REQUEST\n"
          "  --bad-session-id     answer with the wrong session id\n");
}

static int read_file(const char *path, uint8_t **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return CAPSTAN_ENOENT;
  uint8_t *buf = malloc(MAX_FILE);
  if (buf == NULL) {
    fclose(f);
    return CAPSTAN_ENOMEM;
  }
  size_t n = fread(buf, 1, MAX_FILE, f);
  int too_big = n == MAX_FILE;
  fclose(f);
  if (too_big) {
    free(buf);
    return CAPSTAN_ERANGE;
  }
  *out = buf;
  *len = n;
  return 0;
}

static int write_file(const char *path, const uint8_t *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) return CAPSTAN_EIO;
  int ok = fwrite(data, 1, len, f) == len;
  ok = (fclose(f) == 0) && ok;
  return ok ? 0 : CAPSTAN_EIO;
}

static int load_identity(const char *cert_path, const char *key_path, capstan_identity_t *out) {
  uint8_t *cert = NULL, *key = NULL;
  size_t cert_len = 0, key_len = 0;
  int rc = read_file(cert_path, &cert, &cert_len);
  if (rc == 0) rc = read_file(key_path, &key, &key_len);
  if (rc == 0) rc = capstan_identity_from_der(cert, cert_len, key, key_len, out);
  free(cert);
  if (key != NULL) OPENSSL_cleanse(key, key_len);
  free(key);
  return rc;
}

static int save_identity(const capstan_identity_t *id, const char *save_cert,
                         const char *save_key) {
  if (save_cert == NULL && save_key == NULL) return 0;
  if (id->cert == NULL) {
    if (save_cert != NULL) unlink(save_cert);
    if (save_key != NULL) unlink(save_key);
    return 0;
  }
  uint8_t *cder = NULL, *kder = NULL;
  size_t clen = 0, klen = 0;
  int rc = capstan_identity_to_der(id, &cder, &clen, &kder, &klen);
  if (rc == 0 && save_cert != NULL) rc = write_file(save_cert, cder, clen);
  if (rc == 0 && save_key != NULL) rc = write_file(save_key, kder, klen);
  free(cder);
  if (kder != NULL) OPENSSL_cleanse(kder, klen);
  free(kder);
  return rc;
}

typedef struct {
  capstan_phone_transport_t transport;
  const char *files, *capf;
  int boot_only, reboot;
  const char *tftp_cert, *save_tftp_cert, *save_config, *save_cert, *save_key;
  int json;
  int keep_alive;
} boot_opts_t;

/* The boot sequence, and a second boot after an enrollment with --reboot.
 * Returns the exit status. */
static int run_boot(const capstan_phone_config_t *pcfg, const boot_opts_t *o) {
  capstan_phone_boot_config_t bc;
  memset(&bc, 0, sizeof(bc));
  bc.phone = *pcfg;
  bc.transport = o->transport;
  bc.boot_only = o->boot_only;
  bc.http_keep_alive = o->keep_alive;
  if (capstan_phone_parse_addr(o->files, &bc.file_addr) != 0) {
    fprintf(stderr, "capstan-phone: bad --files %s\n", o->files);
    return 2;
  }
  if (o->capf != NULL) {
    bc.capf_addr = pcfg->addr;
    bc.has_capf_addr = 1;
  }
  X509 *trusted = NULL;
  if (o->tftp_cert != NULL) {
    FILE *f = fopen(o->tftp_cert, "r");
    if (f != NULL) {
      trusted = PEM_read_X509(f, NULL, NULL, NULL);
      fclose(f);
    }
    if (trusted == NULL) {
      fprintf(stderr, "capstan-phone: cannot read a PEM certificate from %s\n", o->tftp_cert);
      return 2;
    }
  }
  capstan_identity_t lsc = {0};
  if (pcfg->lsc.cert != NULL && capstan_identity_copy(&pcfg->lsc, &lsc) != 0) {
    X509_free(trusted);
    return 1;
  }
  int status = 1;
  for (int round = 0; round < 2; round++) {
    bc.trusted_tftp = trusted;
    bc.phone.lsc = lsc;
    capstan_phone_boot_result_t res;
    int rc = capstan_phone_boot_run_one(&bc, &res);
    if (rc != 0) {
      fprintf(stderr, "capstan-phone: cannot start the boot: %s\n", capstan_strerror(rc));
      break;
    }
    if (o->json) {
      char line[4096];
      capstan_phone_boot_result_json(&res, line, sizeof(line));
      printf("%s\n", line);
    } else {
      printf(
          "boot=%d result=%s failure=%s cert_hash=%s enrolled=%d decrypted=%d files=%u "
          "total_ms=%.1f%s%s\n",
          round + 1, res.failure == CAPSTAN_PHONE_BOOT_NONE ? "ok" : "error",
          capstan_phone_boot_failure_name(res.failure), capstan_phone_cert_hash_name(res.cert_hash),
          res.enrolled, res.decrypted, res.files, res.total_ms, res.detail[0] ? " detail=" : "",
          res.detail);
    }
    fflush(stdout);
    status = res.failure == CAPSTAN_PHONE_BOOT_NONE ? 0 : 1;
    /* The phone keeps what it learnt: its LSC and the ITL it trusts. */
    capstan_identity_cleanup(&lsc);
    lsc = res.lsc;
    memset(&res.lsc, 0, sizeof(res.lsc));
    if (res.itl_signer != NULL && trusted == NULL) {
      trusted = res.itl_signer;
      res.itl_signer = NULL;
    }
    if (status == 0 && o->save_config != NULL && res.config != NULL &&
        write_file(o->save_config, res.config, res.config_len) != 0) {
      status = 1;
    }
    int again = o->reboot && res.enrolled && status == 0;
    capstan_phone_boot_result_cleanup(&res);
    if (!again) break;
  }
  if (status == 0 && save_identity(&lsc, o->save_cert, o->save_key) != 0) status = 1;
  if (status == 0 && o->save_tftp_cert != NULL && trusted != NULL) {
    FILE *f = fopen(o->save_tftp_cert, "w");
    int ok = f != NULL && PEM_write_X509(f, trusted);
    if (f != NULL && fclose(f) != 0) ok = 0;
    if (!ok) status = 1;
  }
  capstan_identity_cleanup(&lsc);
  X509_free(trusted);
  return status;
}

int main(int argc, char **argv) {
  enum {
    OPT_CONNECT = 256,
    OPT_NAME,
    OPT_AUTH,
    OPT_AUTH_STRING,
    OPT_CERT,
    OPT_KEY,
    OPT_MIC_CERT,
    OPT_MIC_KEY,
    OPT_SUDI_CERT,
    OPT_SUDI_KEY,
    OPT_SAVE_CERT,
    OPT_SAVE_KEY,
    OPT_KEYGEN_DELAY,
    OPT_KEY_CACHE,
    OPT_CA_PEM,
    OPT_TIMEOUT,
    OPT_JSON,
    OPT_PROTO_VERSION,
    OPT_KEYGEN_FAIL,
    OPT_ANSWER_KEY,
    OPT_STORE_REASON,
    OPT_STALL,
    OPT_BAD_SESSION,
    OPT_CA_WAIT,
    OPT_KEY_FILE,
    OPT_REFUSE_STORE,
    OPT_CSR_MODE,
    OPT_BOOT,
    OPT_FILES,
    OPT_BOOT_ONLY,
    OPT_TFTP_CERT,
    OPT_SAVE_TFTP_CERT,
    OPT_REBOOT,
    OPT_SAVE_CONFIG,
    OPT_KEEP_ALIVE,
    OPT_HELP,
  };
  static const struct option opts[] = {
      {"connect", required_argument, NULL, OPT_CONNECT},
      {"name", required_argument, NULL, OPT_NAME},
      {"auth", required_argument, NULL, OPT_AUTH},
      {"auth-string", required_argument, NULL, OPT_AUTH_STRING},
      {"cert", required_argument, NULL, OPT_CERT},
      {"key", required_argument, NULL, OPT_KEY},
      {"mic-cert", required_argument, NULL, OPT_MIC_CERT},
      {"mic-key", required_argument, NULL, OPT_MIC_KEY},
      {"sudi-cert", required_argument, NULL, OPT_SUDI_CERT},
      {"sudi-key", required_argument, NULL, OPT_SUDI_KEY},
      {"save-cert", required_argument, NULL, OPT_SAVE_CERT},
      {"save-key", required_argument, NULL, OPT_SAVE_KEY},
      {"keygen-delay", required_argument, NULL, OPT_KEYGEN_DELAY},
      {"key-cache", required_argument, NULL, OPT_KEY_CACHE},
      {"ca-pem", required_argument, NULL, OPT_CA_PEM},
      {"timeout", required_argument, NULL, OPT_TIMEOUT},
      {"json", no_argument, NULL, OPT_JSON},
      {"proto-version", required_argument, NULL, OPT_PROTO_VERSION},
      {"keygen-fail", no_argument, NULL, OPT_KEYGEN_FAIL},
      {"answer-key", required_argument, NULL, OPT_ANSWER_KEY},
      {"store-reason", required_argument, NULL, OPT_STORE_REASON},
      {"stall", no_argument, NULL, OPT_STALL},
      {"bad-session-id", no_argument, NULL, OPT_BAD_SESSION},
      {"ca-wait", required_argument, NULL, OPT_CA_WAIT},
      {"key-file", required_argument, NULL, OPT_KEY_FILE},
      {"refuse-store", no_argument, NULL, OPT_REFUSE_STORE},
      {"csr-mode", required_argument, NULL, OPT_CSR_MODE},
      {"boot", required_argument, NULL, OPT_BOOT},
      {"files", required_argument, NULL, OPT_FILES},
      {"boot-only", no_argument, NULL, OPT_BOOT_ONLY},
      {"tftp-cert", required_argument, NULL, OPT_TFTP_CERT},
      {"save-tftp-cert", required_argument, NULL, OPT_SAVE_TFTP_CERT},
      {"reboot", no_argument, NULL, OPT_REBOOT},
      {"save-config", required_argument, NULL, OPT_SAVE_CONFIG},
      {"keep-alive", no_argument, NULL, OPT_KEEP_ALIVE},
      {"help", no_argument, NULL, OPT_HELP},
      {NULL, 0, NULL, 0},
  };
  const char *connect = NULL, *cert = NULL, *key = NULL, *mic_cert = NULL, *mic_key = NULL;
  const char *sudi_cert = NULL, *sudi_key = NULL, *save_cert = NULL, *save_key = NULL;
  const char *key_cache = NULL, *ca_pem = NULL;
  int json = 0;
  int boot = 0, boot_only = 0, reboot = 0, keep_alive = 0;
  capstan_phone_transport_t transport = CAPSTAN_PHONE_TRANSPORT_HTTP;
  const char *files = NULL, *tftp_cert = NULL, *save_tftp_cert = NULL, *save_config = NULL;
  capstan_phone_config_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.auth = CAPSTAN_PHONE_AUTH_NULL_STRING;
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    char *end = NULL;
    switch (c) {
      case OPT_CONNECT:
        connect = optarg;
        break;
      case OPT_NAME:
        cfg.device_name = optarg;
        break;
      case OPT_AUTH:
        if (capstan_phone_parse_auth(optarg, &cfg.auth) != 0) {
          fprintf(stderr, "capstan-phone: bad --auth %s\n", optarg);
          return 2;
        }
        break;
      case OPT_AUTH_STRING:
        cfg.auth_string = optarg;
        break;
      case OPT_CERT:
        cert = optarg;
        break;
      case OPT_KEY:
        key = optarg;
        break;
      case OPT_MIC_CERT:
        mic_cert = optarg;
        break;
      case OPT_MIC_KEY:
        mic_key = optarg;
        break;
      case OPT_SUDI_CERT:
        sudi_cert = optarg;
        break;
      case OPT_SUDI_KEY:
        sudi_key = optarg;
        break;
      case OPT_SAVE_CERT:
        save_cert = optarg;
        break;
      case OPT_SAVE_KEY:
        save_key = optarg;
        break;
      case OPT_KEYGEN_DELAY: {
        double s = strtod(optarg, &end);
        if (end == optarg || *end != '\0' || s < 0 || s > 86400) {
          fprintf(stderr, "capstan-phone: bad --keygen-delay %s\n", optarg);
          return 2;
        }
        cfg.keygen_delay_ms = (uint64_t)(s * 1000.0);
        break;
      }
      case OPT_KEY_CACHE:
        key_cache = optarg;
        break;
      case OPT_CA_PEM:
        ca_pem = optarg;
        break;
      case OPT_TIMEOUT: {
        double s = strtod(optarg, &end);
        if (end == optarg || *end != '\0' || s <= 0 || s > 86400) {
          fprintf(stderr, "capstan-phone: bad --timeout %s\n", optarg);
          return 2;
        }
        cfg.step_timeout_ms = (uint64_t)(s * 1000.0);
        if (cfg.step_timeout_ms == 0) cfg.step_timeout_ms = 1;
        break;
      }
      case OPT_JSON:
        json = 1;
        break;
      case OPT_PROTO_VERSION: {
        long v = strtol(optarg, &end, 10);
        if (end == optarg || *end != '\0' || v < 1 || v > 255) {
          fprintf(stderr, "capstan-phone: bad --proto-version %s\n", optarg);
          return 2;
        }
        cfg.version = (uint8_t)v;
        break;
      }
      case OPT_KEYGEN_FAIL:
        cfg.keygen_fail = 1;
        break;
      case OPT_ANSWER_KEY:
        if (capstan_phone_parse_key_spec(optarg, &cfg.answer_key_alg, &cfg.answer_key_bits) != 0) {
          fprintf(stderr, "capstan-phone: bad --answer-key %s\n", optarg);
          return 2;
        }
        break;
      case OPT_STORE_REASON: {
        long v = strtol(optarg, &end, 10);
        if (end == optarg || *end != '\0' || v < 0 || v > 255) {
          fprintf(stderr, "capstan-phone: bad --store-reason %s\n", optarg);
          return 2;
        }
        /* 0 in the config means "default 1"; REASON 0 is not a useful store
         * answer to simulate separately from 7. */
        cfg.store_reason = (int)v;
        break;
      }
      case OPT_STALL:
        cfg.stall = 1;
        break;
      case OPT_BAD_SESSION:
        cfg.bad_session_id = 1;
        break;
      case OPT_CA_WAIT: {
        double s = strtod(optarg, &end);
        if (end == optarg || *end != '\0' || s <= 0 || s > 86400) {
          fprintf(stderr, "capstan-phone: bad --ca-wait %s\n", optarg);
          return 2;
        }
        cfg.ca_wait_ms = (uint64_t)(s * 1000.0);
        if (cfg.ca_wait_ms == 0) cfg.ca_wait_ms = 1;
        break;
      }
      case OPT_KEY_FILE:
        cfg.key_file = optarg;
        break;
      case OPT_REFUSE_STORE:
        cfg.refuse_store = 1;
        break;
      case OPT_CSR_MODE:
        if (capstan_phone_parse_csr_mode(optarg, &cfg.csr_mode) != 0) {
          fprintf(stderr,
                  "capstan-phone: bad --csr-mode %s (ok, refuse, wrong-key, wrong-cn, "
                  "bad-signature, garbage, silent)\n",
                  optarg);
          return 2;
        }
        break;
      case OPT_BOOT:
        if (capstan_phone_parse_transport(optarg, &transport) != 0) {
          fprintf(stderr, "capstan-phone: bad --boot %s (http or tftp)\n", optarg);
          return 2;
        }
        boot = 1;
        break;
      case OPT_FILES:
        files = optarg;
        break;
      case OPT_BOOT_ONLY:
        boot_only = 1;
        break;
      case OPT_TFTP_CERT:
        tftp_cert = optarg;
        break;
      case OPT_SAVE_TFTP_CERT:
        save_tftp_cert = optarg;
        break;
      case OPT_REBOOT:
        reboot = 1;
        break;
      case OPT_SAVE_CONFIG:
        save_config = optarg;
        break;
      case OPT_KEEP_ALIVE:
        keep_alive = 1;
        break;
      case OPT_HELP:
        usage(stdout);
        return 0;
      default:
        usage(stderr);
        return 2;
    }
  }
  if (optind != argc || (connect == NULL && !boot) || cfg.device_name == NULL ||
      (boot && files == NULL)) {
    usage(stderr);
    return 2;
  }
  if (connect != NULL && capstan_phone_parse_addr(connect, &cfg.addr) != 0) {
    fprintf(stderr, "capstan-phone: bad --connect %s (HOST:PORT or [V6]:PORT)\n", connect);
    return 2;
  }
  if ((cert == NULL) != (key == NULL) || (mic_cert == NULL) != (mic_key == NULL) ||
      (sudi_cert == NULL) != (sudi_key == NULL)) {
    fprintf(stderr, "capstan-phone: certificates and keys go in pairs\n");
    return 2;
  }

  int status = 2;
  SSL_CTX *ctx = NULL;
  capstan_phone_keypool_t *keys = NULL;
  capstan_identity_t lsc = {0}, mic = {0}, sudi = {0};
  capstan_phone_result_t res;
  memset(&res, 0, sizeof(res));
  int rc;
  if (cert != NULL) {
    /* With --auth mic and no separate MIC, --cert is the MIC. */
    capstan_identity_t *dst =
        (cfg.auth == CAPSTAN_PHONE_AUTH_MIC && mic_cert == NULL) ? &mic : &lsc;
    if ((rc = load_identity(cert, key, dst)) != 0) {
      fprintf(stderr, "capstan-phone: cannot load %s / %s: %s\n", cert, key, capstan_strerror(rc));
      goto out;
    }
  }
  if (mic_cert != NULL && (rc = load_identity(mic_cert, mic_key, &mic)) != 0) {
    fprintf(stderr, "capstan-phone: cannot load %s / %s: %s\n", mic_cert, mic_key,
            capstan_strerror(rc));
    goto out;
  }
  if (sudi_cert != NULL && (rc = load_identity(sudi_cert, sudi_key, &sudi)) != 0) {
    fprintf(stderr, "capstan-phone: cannot load %s / %s: %s\n", sudi_cert, sudi_key,
            capstan_strerror(rc));
    goto out;
  }
  if ((cfg.auth == CAPSTAN_PHONE_AUTH_LSC || cfg.auth == CAPSTAN_PHONE_AUTH_MIC) &&
      lsc.cert == NULL && mic.cert == NULL) {
    fprintf(stderr, "capstan-phone: --auth %s needs --cert and --key\n",
            capstan_phone_auth_name(cfg.auth));
    goto out;
  }
  char err[256];
  ctx = capstan_phone_ssl_ctx_new(ca_pem, err, sizeof(err));
  if (ctx == NULL) {
    fprintf(stderr, "capstan-phone: %s\n", err);
    goto out;
  }
  keys = capstan_phone_keypool_new(key_cache, 1);
  if (keys == NULL) goto out;
  if (cfg.key_file != NULL) {
    /* A key file that is there must be a key: say so before connecting. */
    EVP_PKEY *pending = NULL;
    rc = capstan_phone_load_key_file(cfg.key_file, &pending);
    EVP_PKEY_free(pending);
    if (rc != 0 && rc != CAPSTAN_ENOENT) {
      fprintf(stderr, "capstan-phone: cannot read the key file %s: %s\n", cfg.key_file,
              capstan_strerror(rc));
      goto out;
    }
  }
  cfg.ssl_ctx = ctx;
  cfg.keys = keys;
  cfg.lsc = lsc;
  cfg.mic = mic;
  cfg.sudi = sudi;
  if (boot) {
    boot_opts_t bo = {transport,      files,       connect,   boot_only, reboot, tftp_cert,
                      save_tftp_cert, save_config, save_cert, save_key,  json,   keep_alive};
    status = run_boot(&cfg, &bo);
    goto out;
  }
  rc = capstan_phone_run_one(&cfg, &res);
  if (rc != 0) {
    fprintf(stderr, "capstan-phone: cannot start: %s\n", capstan_strerror(rc));
    status = 1;
    goto out;
  }
  status = res.kind == CAPSTAN_PHONE_RESULT_ERROR ? 1 : 0;

  /* The phone's state on disk follows the session. */
  if (status == 0 && (save_cert != NULL || save_key != NULL)) {
    if (res.lsc.cert != NULL) {
      uint8_t *cder = NULL, *kder = NULL;
      size_t clen = 0, klen = 0;
      rc = capstan_identity_to_der(&res.lsc, &cder, &clen, &kder, &klen);
      if (rc == 0 && save_cert != NULL) rc = write_file(save_cert, cder, clen);
      if (rc == 0 && save_key != NULL) rc = write_file(save_key, kder, klen);
      free(cder);
      if (kder != NULL) OPENSSL_cleanse(kder, klen);
      free(kder);
      if (rc != 0) {
        fprintf(stderr, "capstan-phone: cannot save the LSC: %s\n", capstan_strerror(rc));
        status = 1;
      }
    } else {
      if (save_cert != NULL) unlink(save_cert);
      if (save_key != NULL) unlink(save_key);
    }
  }
  if (json) {
    char line[2048];
    capstan_phone_result_json(&res, line, sizeof(line));
    printf("%s\n", line);
  } else {
    printf(
        "result=%s reason=%d operation=%s error=%s cert_md5=%s session_id=%u csr_sent=%d "
        "handover=%d store_refused=%u lsc_stored=%d retry_delay=%d total_ms=%.1f%s%s\n",
        capstan_phone_result_name(res.kind), res.end_reason,
        capstan_phone_operation_name(res.operation), capstan_phone_error_name(res.error),
        res.lsc_md5[0] ? res.lsc_md5 : "-", (unsigned)res.session_id, res.csr_sent, res.handover,
        res.stores_refused, res.lsc_stored, res.retry_delay, res.total_ms,
        res.detail[0] ? " detail=" : "", res.detail);
  }
  fflush(stdout);

out:
  capstan_phone_result_cleanup(&res);
  capstan_identity_cleanup(&lsc);
  capstan_identity_cleanup(&mic);
  capstan_identity_cleanup(&sudi);
  capstan_phone_keypool_free(keys);
  SSL_CTX_free(ctx);
  return status;
}

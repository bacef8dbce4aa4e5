/* The device API maps device records (storage/devices.h) to JSON: one of
 * the files that read the schema for a handler. */
#include "handlers/admin/devices_api.h"

#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/settings.h"
#include "core/base/log.h"
#include "core/files/encconf.h"
#include "handlers/admin/admin.h"
#include "handlers/admin/census.h"
#include "storage/devices.h"

#define JSON_TYPE "application/json; charset=utf-8"
#define QUERY_VALUE_MAX 128

/* ---- The query --------------------------------------------------------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes |n| bytes of |s| ('+' is a space) into |out| (|cap|
 * bytes with the NUL). -1 for a bad escape, a NUL, or no room. */
static int decode(const char *s, size_t n, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      if (i + 2 >= n) return -1;
      int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
      if (hi < 0 || lo < 0) return -1;
      c = (char)(hi * 16 + lo);
      i += 2;
    }
    if (c == '\0' || o + 1 >= cap) return -1;
    out[o++] = c;
  }
  out[o] = '\0';
  return 0;
}

int capstan_devices_query_parse(const char *query, capstan_devices_query_t *q, const char **why) {
  memset(q, 0, sizeof(*q));
  q->status = -1;
  q->limit = CAPSTAN_DEVICES_API_DEFAULT_LIMIT;
  *why = NULL;
  const char *p = query != NULL ? query : "";
  while (*p != '\0') {
    size_t n = strcspn(p, "&");
    const char *eq = memchr(p, '=', n);
    char key[16], value[QUERY_VALUE_MAX + 1];
    size_t klen = eq != NULL ? (size_t)(eq - p) : n;
    const char *v = eq != NULL ? eq + 1 : p + n;
    size_t vlen = eq != NULL ? n - klen - 1 : 0;
    if (n == 0) goto next; /* "a=1&&b=2" */
    if (decode(p, klen, key, sizeof(key)) < 0) {
      *why = "unknown parameter (accepted: status, limit, after)";
      return CAPSTAN_EINVAL;
    }
    if (decode(v, vlen, value, sizeof(value)) < 0) {
      *why = "a parameter value is malformed or too long";
      return CAPSTAN_EINVAL;
    }
    if (strcmp(key, "status") == 0) {
      for (char *c = value; *c; c++) {
        if (*c == '_') *c = '-';
      }
      Capstan__OpStatus st;
      if (capstan_op_status_parse(value, &st) < 0) {
        *why =
            "status must be one of pending, in-progress, throttled, succeeded, failed, expired, "
            "none";
        return CAPSTAN_EINVAL;
      }
      q->status = (int)st;
    } else if (strcmp(key, "limit") == 0) {
      unsigned long lim = 0;
      size_t digits = strspn(value, "0123456789");
      if (digits == 0 || value[digits] != '\0' || digits > 7) {
        *why = "limit must be a number from 1 to 1000";
        return CAPSTAN_EINVAL;
      }
      lim = strtoul(value, NULL, 10);
      if (lim < 1 || lim > CAPSTAN_DEVICES_API_MAX_LIMIT) {
        *why = "limit must be a number from 1 to 1000";
        return CAPSTAN_EINVAL;
      }
      q->limit = (unsigned)lim;
    } else if (strcmp(key, "after") == 0) {
      if (strlen(value) > CAPSTAN_DEVICE_NAME_MAX) {
        *why = "after must be a device name";
        return CAPSTAN_EINVAL;
      }
      strcpy(q->after, value);
    } else {
      *why = "unknown parameter (accepted: status, limit, after)";
      return CAPSTAN_EINVAL;
    }
  next:
    p += n;
    if (*p == '&') p++;
  }
  return 0;
}

/* ---- Devices as JSON ---------------------------------------------------- */

/* The members `capstan device show --json` prints, never the
 * authentication string. Leaves the object open. */
static void device_members(capstan_json_t *j, const Capstan__Device *d) {
  capstan_json_open(j, '{');
  capstan_json_kstr(j, "name", d->name);
  capstan_json_kstr(j, "operation", capstan_operation_name(d->operation));
  capstan_json_kstr(j, "auth_mode", capstan_auth_mode_name(d->auth_mode));
  capstan_json_kbool(j, "auth_string_set", d->auth_string != NULL && d->auth_string[0] != '\0');
  capstan_json_kstr(j, "key", capstan_key_name(d->key_alg, d->key_bits));
  /* null: the cluster's issuer setting (as `capstan device show --json`) */
  capstan_json_kstr(j, "issuer", d->issuer != 0 ? capstan_issuer_name(d->issuer - 1) : NULL);
  capstan_json_ktime(j, "completes_by", d->has_completes_by ? d->completes_by : 0);
  capstan_json_kbool(j, "encrypted_config", d->encrypted_config);
  capstan_json_kstr(j, "template",
                    d->template_name != NULL && d->template_name[0] ? d->template_name : NULL);
  capstan_json_kbool(j, "has_own_config", d->config_xml.len > 0);
  capstan_json_kstr(j, "encrypted_config_unavailable",
                    capstan_encconf_unavailable_reason(d->encrypted_config, d->public_key.data,
                                                       d->public_key.len));
  capstan_json_kstr(j, "status", capstan_op_status_name(d->status));
  capstan_json_kstr(j, "status_reason", d->status_reason);
  capstan_json_kstr(j, "last_operation", capstan_operation_name(d->last_operation));
  capstan_json_kuint(j, "attempts", d->attempts);
  capstan_json_kuint(j, "auth_failures", d->auth_failures);
  capstan_json_ktime(j, "created_at", d->has_created_at ? d->created_at : 0);
  capstan_json_ktime(j, "retry_after", d->has_retry_after ? d->retry_after : 0);
  capstan_json_ktime(j, "status_changed_at", d->has_status_changed_at ? d->status_changed_at : 0);
  capstan_json_ktime(j, "last_attempt_at", d->has_last_attempt_at ? d->last_attempt_at : 0);
  capstan_json_kstr(j, "cert_type", d->has_cert_der ? capstan_cert_type_name(d->cert_type) : NULL);
  capstan_json_kstr(j, "md5hash", d->md5hash);
  capstan_json_ktime(j, "cert_seen_at", d->has_cert_seen_at ? d->cert_seen_at : 0);
  capstan_json_kuint(j, "certs_issued", d->n_cert_history);
}

typedef struct list {
  const capstan_devices_query_t *q;
  capstan_json_t *j;
  unsigned count;
  int more;
  char last[CAPSTAN_DEVICE_NAME_MAX + 1];
} list_t;

static int list_one(const void *key, size_t klen, const ProtobufCMessage *msg, void *arg) {
  list_t *l = arg;
  const Capstan__Device *d = (const Capstan__Device *)msg;
  if (l->q->status >= 0 && (int)d->status != l->q->status) return 0;
  if (l->count == l->q->limit) {
    l->more = 1; /* one more matches: there is a next page */
    return 1;
  }
  device_members(l->j, d);
  capstan_json_close(l->j, '}');
  snprintf(l->last, sizeof(l->last), "%s", d->name);
  l->count++;
  return 0;
}

static int list_txn(capstan_txn_t *txn, void *arg) {
  list_t *l = arg;
  const char *after = l->q->after[0] ? l->q->after : NULL;
  return capstan_store_iterate_after(txn, CAPSTAN_DB_DEVICES, after, after ? strlen(after) : 0,
                                     &capstan__device__descriptor, list_one, l);
}

int capstan_devices_list_json(capstan_store_t *store, const capstan_devices_query_t *q,
                              capstan_json_t *j) {
  list_t l = {.q = q, .j = j};
  capstan_json_open(j, '{');
  capstan_json_key(j, "devices");
  capstan_json_open(j, '[');
  int rc = capstan_store_read(store, list_txn, &l);
  if (rc < 0) return rc;
  capstan_json_close(j, ']');
  capstan_json_kuint(j, "count", l.count);
  capstan_json_kuint(j, "limit", q->limit);
  capstan_json_kstr(
      j, "status",
      q->status >= 0 ? capstan_census_status_name((capstan_census_status_t)q->status) : NULL);
  capstan_json_kstr(j, "after", q->after[0] ? q->after : NULL);
  capstan_json_kstr(j, "next", l.more ? l.last : NULL);
  capstan_json_close(j, '}');
  return 0;
}

typedef struct show {
  const char *name;
  capstan_json_t *j;
} show_t;

static int show_txn(capstan_txn_t *txn, void *arg) {
  show_t *s = arg;
  Capstan__Device *d = NULL;
  int rc = capstan_store_device_get(txn, s->name, &d);
  if (rc < 0) return rc;
  capstan_json_t *j = s->j;
  device_members(j, d);
  capstan_json_key(j, "cert_history");
  capstan_json_open(j, '[');
  for (size_t i = 0; i < d->n_cert_history && rc == 0; i++) {
    if (d->cert_history[i].len != CAPSTAN_SERIAL_LEN) continue;
    char hex[2 * CAPSTAN_SERIAL_LEN + 1];
    for (size_t b = 0; b < CAPSTAN_SERIAL_LEN; b++) {
      snprintf(hex + 2 * b, 3, "%02x", d->cert_history[i].data[b]);
    }
    Capstan__IssuedCert *c = NULL;
    rc = capstan_store_cert_get(txn, d->cert_history[i].data, &c);
    if (rc == CAPSTAN_ENOENT) rc = 0;
    if (rc < 0) break;
    capstan_json_open(j, '{');
    capstan_json_kstr(j, "serial", hex);
    capstan_json_kstr(j, "status", c != NULL ? capstan_cert_status_name(c->status) : "removed");
    capstan_json_ktime(j, "issued_at", c != NULL ? c->issued_at : 0);
    capstan_json_ktime(j, "not_after", c != NULL ? c->not_after : 0);
    capstan_json_close(j, '}');
    capstan__issued_cert__free_unpacked(c, NULL);
  }
  capstan_json_close(j, ']');
  capstan_json_close(j, '}');
  capstan__device__free_unpacked(d, NULL);
  return rc;
}

int capstan_devices_show_json(capstan_store_t *store, const char *name, capstan_json_t *j) {
  if (name == NULL || name[0] == '\0' || strlen(name) > CAPSTAN_DEVICE_NAME_MAX) {
    return CAPSTAN_ENOENT;
  }
  show_t s = {name, j};
  return capstan_store_read(store, show_txn, &s);
}

/* ---- Routes: the reads run on the thread pool -------------------------- */

typedef struct job {
  uv_work_t req;
  capstan_http_response_t *res;
  capstan_store_t *store;
  int show;
  capstan_devices_query_t q;
  char name[CAPSTAN_DEVICE_NAME_MAX + 1];
  int rc;
  char *body;
  size_t len;
} job_t;

static void job_run(uv_work_t *req) {
  job_t *job = req->data;
  capstan_json_t j;
  capstan_json_init(&j);
  job->rc = job->show ? capstan_devices_show_json(job->store, job->name, &j)
                      : capstan_devices_list_json(job->store, &job->q, &j);
  if (job->rc == 0) {
    job->rc = capstan_json_take(&j, &job->body, &job->len);
  } else {
    capstan_json_cleanup(&j);
  }
}

static void job_done(uv_work_t *req, int status) {
  job_t *job = req->data;
  int rc = status < 0 ? status : job->rc;
  if (rc == 0) {
    capstan_admin_respond_owned(job->res, 200, JSON_TYPE, job->body, job->len);
    job->body = NULL;
  } else if (rc == CAPSTAN_ENOENT) {
    capstan_admin_json_error(job->res, 404, "no such device");
  } else {
    LOG_WARN("event=admin_devices_read_failed error=%s", capstan_strerror(rc));
    capstan_admin_json_error(job->res, 503, "the store could not be read");
  }
  free(job->body);
  free(job);
}

static void queue(const capstan_devices_api_t *api, job_t *job) {
  job->store = api->store;
  job->req.data = job;
  if (uv_queue_work(api->loop, &job->req, job_run, job_done) < 0) {
    capstan_admin_json_error(job->res, 503, "busy");
    free(job);
  }
}

void capstan_devices_api_list_route(void *arg, const capstan_http_request_t *req,
                                    capstan_http_response_t *res) {
  capstan_devices_query_t q;
  const char *why = NULL;
  if (capstan_devices_query_parse(req->query, &q, &why) < 0) {
    capstan_admin_json_error(res, 400, why);
    return;
  }
  job_t *job = calloc(1, sizeof(*job));
  if (job == NULL) {
    capstan_admin_json_error(res, 503, "out of memory");
    return;
  }
  job->res = res;
  job->q = q;
  queue(arg, job);
}

void capstan_devices_api_show_route(void *arg, const capstan_http_request_t *req,
                                    capstan_http_response_t *res) {
  static const char kPrefix[] = "/api/devices/";
  const char *name = req->path + strlen(kPrefix);
  if (strncmp(req->path, kPrefix, strlen(kPrefix)) != 0 || name[0] == '\0' ||
      strlen(name) > CAPSTAN_DEVICE_NAME_MAX || strchr(name, '/') != NULL) {
    capstan_admin_json_error(res, 404, "no such device");
    return;
  }
  job_t *job = calloc(1, sizeof(*job));
  if (job == NULL) {
    capstan_admin_json_error(res, 503, "out of memory");
    return;
  }
  job->res = res;
  job->show = 1;
  strcpy(job->name, name);
  queue(arg, job);
}

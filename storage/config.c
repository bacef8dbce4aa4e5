/* The configuration family: templates (Template, by name) and the live
 * settings (Settings, one record). */
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/phone.h"
#include "storage/internal.h"
#include "storage/records.h"

int capstan_store_template_get(capstan_txn_t *txn, const char *name, Capstan__Template **out) {
  size_t n;
  *out = NULL;
  int err = capstan_store_name_key(name, &n);
  if (err != 0) return err;
  return capstan_store_get(txn, CAPSTAN_DB_TEMPLATES, name, n, &capstan__template__descriptor,
                           (ProtobufCMessage **)out);
}

int capstan_store_template_put(capstan_txn_t *txn, const Capstan__Template *t) {
  size_t n;
  if (t == NULL || capstan_store_name_key(t->name, &n) != 0) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_TEMPLATES, t->name, n, &t->base);
}

int capstan_store_template_delete(capstan_txn_t *txn, const char *name) {
  size_t n;
  int err = capstan_store_name_key(name, &n);
  if (err != 0) return err;
  return capstan_store_del(txn, CAPSTAN_DB_TEMPLATES, name, n);
}

int capstan_store_template_iterate(capstan_txn_t *txn, capstan_store_template_fn fn, void *arg) {
  return capstan_store_iterate_typed(txn, CAPSTAN_DB_TEMPLATES, &capstan__template__descriptor,
                                     (int (*)(const void *, void *))fn, arg);
}

int capstan_store_settings_get(capstan_txn_t *txn, Capstan__Settings **out) {
  int err = capstan_store_get(txn, CAPSTAN_DB_SETTINGS, SETTINGS_KEY, strlen(SETTINGS_KEY),
                              &capstan__settings__descriptor, (ProtobufCMessage **)out);
  if (err != CAPSTAN_ENOENT) return err;
  /* Unpacking nothing gives a message with every default of the schema. */
  *out = capstan__settings__unpack(NULL, 0, NULL);
  return *out == NULL ? CAPSTAN_ENOMEM : 0;
}

int capstan_store_settings_put(capstan_txn_t *txn, const Capstan__Settings *s) {
  if (s == NULL) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_SETTINGS, SETTINGS_KEY, strlen(SETTINGS_KEY), &s->base);
}

static int settings_load_fn(capstan_txn_t *txn, void *arg) {
  return capstan_store_settings_get(txn, arg);
}

int capstan_store_settings_load(capstan_store_t *store, Capstan__Settings **out) {
  *out = NULL;
  return capstan_store_read(store, settings_load_fn, out);
}

int capstan_store_touch(capstan_txn_t *txn) {
  Capstan__Settings *s;
  int err = capstan_store_settings_get(txn, &s);
  if (err != 0) return err;
  err = capstan_store_settings_put(txn, s);
  capstan__settings__free_unpacked(s, NULL);
  return err;
}

/* Names for enums made from one X-macro list of X(ID, "name") entries, so
 * that logs and metrics print names, not numbers (docs/design.md). */
#ifndef CAPSTAN_CORE_BASE_NAMES_H
#define CAPSTAN_CORE_BASE_NAMES_H

#include <stddef.h>

#define CAPSTAN_NAME_OF_ENTRY_(id, name) name,

/* Defines `const char *fn(type value)`, preceded by |qualifier| (empty, or
 * static): the name of |value| in LIST, or |unknown| for a value outside
 * it. */
#define CAPSTAN_DEFINE_NAME_FN(qualifier, fn, type, LIST, unknown)                      \
  qualifier const char *fn(type value) {                                                \
    static const char *const names[] = {LIST(CAPSTAN_NAME_OF_ENTRY_)};                  \
    return (size_t)value < sizeof(names) / sizeof(names[0]) ? names[value] : (unknown); \
  }

#endif

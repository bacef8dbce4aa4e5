#!/usr/bin/env bash
# The storage schema stays behind the storage layer: no header of core/ or
# of a handler includes the generated records (storage/records.pb-c.h) or
# the record APIs (storage/records.h, storage/devices.h). Those layers take
# plain structs; only .c files that map records to them (and the admin CLI,
# which edits records) include the schema. Prints every offender.
set -uo pipefail
src=${1:?usage: schema_headers.sh SOURCE_DIR}
cd "$src" || exit 2
found=0
while IFS= read -r header; do
  case "$header" in handlers/cli/*) continue ;; esac
  if grep -nE '#include "storage/(records\.pb-c|records|devices)\.h"' "$header"; then
    echo "schema in a public header: $header" >&2
    found=1
  fi
done < <(find core handlers -name '*.h' | sort)
[ "$found" = 0 ] && echo "no header of core/ or handlers/ includes the storage schema"
exit $found

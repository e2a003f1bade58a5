#!/bin/sh
# One stored procedure's change between two of its versions (migrations/sql/<fn>/<rev>.sql):
#   make sql-diff FN=process_event_queue            the two newest files
#   make sql-diff FN=process_event_queue FROM=0005 TO=0008
# A version the function has no file for means the newest file at or before it (the body a
# database at that revision runs). Exit status as diff's: 1 when they differ.
set -eu
: "${FN:?name the function: make sql-diff FN=process_event_queue}"
dir="$(dirname "$0")/../migrations/sql/$FN"
[ -d "$dir" ] || { echo "no folder migrations/sql/$FN" >&2; exit 2; }
versions=$(ls "$dir" | sed -n 's/\.sql$//p' | sort)
at_or_before() {
    echo "$versions" | awk -v v="$1" '$0 <= v' | tail -n 1
}
to=${TO:-$(echo "$versions" | tail -n 1)}
to=$(at_or_before "$to")
if [ -n "${FROM:-}" ]; then
    from=$(at_or_before "$FROM")
else
    from=$(echo "$versions" | awk -v v="$to" '$0 < v' | tail -n 1)
fi
[ -n "$from" ] && [ -n "$to" ] || { echo "$FN has one version only: $versions" >&2; exit 2; }
exec diff -u --label "$FN/$from.sql" --label "$FN/$to.sql" "$dir/$from.sql" "$dir/$to.sql"

#!/usr/bin/env bash
# The Grafana dashboard (dashboards/*.json) against a real server's /metrics,
# and /metrics against promtool:
#   - after phone activity (an enrollment with an HTTP boot, a failed
#     authentication, a TFTP boot: the HTTP phone-file series exist only
#     after the first HTTP phone-file request), `promtool check metrics`
#     passes with no lint warning;
#   - each dashboard is valid JSON with unique panel ids, panels that do not
#     overlap on the 24-column grid, and every query on the ${datasource}
#     variable;
#   - every metric name its PromQL uses is a series name in /metrics;
#   - with Debian's Prometheus scraping the server every second, every query
#     (Grafana's $instance as .*, $__rate_interval as 15s) parses and returns
#     data.
. "$(dirname "$0")/lib.sh"
it_watchdog 300
it_require jq curl promtool
W="$IT_TMP/dash"
mkdir -p "$W"

shopt -s nullglob
DASHBOARDS=("$CAPSTAN_SOURCE_DIR"/dashboards/*.json)
[[ ${#DASHBOARDS[@]} -gt 0 ]] || fail "no dashboard in dashboards/"

# --- A server with some phone activity -----------------------------------------
srv_start main --files
cap main device add SEP0000DA5B0001 --operation install --auth null >/dev/null
cap main device add SEP0000DA5B0002 --operation install --auth string --auth-string 123456 >/dev/null
phone main --name SEP0000DA5B0001 --auth null --boot http --files "127.0.0.1:${SRV_HTTP[main]}"
json_expect "$PHONE_JSON" result ok enrolled true
phone main --name SEP0000DA5B0002 --auth string --auth-string 999999
json_expect "$PHONE_JSON" result end
phone main --name SEP0000DA5B0002 --boot tftp --files "127.0.0.1:${SRV_TFTP[main]}" --boot-only
metric_expect main 'capstan_capf_auth_failures_total{mode="string"}' 1

scrape() { curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/metrics" >"$1" || fail "GET /metrics"; }
scrape "$W/metrics.txt"
[[ $(grep -c '^# TYPE' "$W/metrics.txt") -gt 40 ]] || fail "/metrics holds too few families"

# --- promtool ------------------------------------------------------------------
rc=0
promtool check metrics <"$W/metrics.txt" >"$W/promtool.out" 2>&1 || rc=$?
[[ $rc -eq 0 && ! -s "$W/promtool.out" ]] ||
  fail "promtool check metrics (exit $rc): $(cat "$W/promtool.out")"
it_log "promtool check metrics: no problem in $(grep -c '^# TYPE' "$W/metrics.txt") families"

# Series names as /metrics has them (histograms: _bucket, _sum, _count).
grep -v '^#' "$W/metrics.txt" | sed 's/[{ ].*//' | sort -u >"$W/names"

for dash in "${DASHBOARDS[@]}"; do
  name=$(basename "$dash")
  # --- Structure -----------------------------------------------------------------
  jq -e . "$dash" >/dev/null || fail "$name is not JSON"
  dup=$(jq -r '[.panels[].id] | group_by(.) | map(select(length > 1) | .[0]) | join(" ")' "$dash")
  [[ -z "$dup" ]] || fail "$name: duplicate panel ids: $dup"
  overlap=$(jq -r '
    [.panels[] | . as $p | .gridPos as $g
     | range($g.x; $g.x + $g.w) as $x | range($g.y; $g.y + $g.h) as $y
     | {cell: "\($x),\($y)", title: $p.title}]
    | group_by(.cell) | map(select(length > 1) | map(.title) | unique | join(" / ")) | unique
    | join("; ")' "$dash")
  [[ -z "$overlap" ]] || fail "$name: panels overlap: $overlap"
  wide=$(jq -r '[.panels[] | select(.gridPos.x + .gridPos.w > 24) | .title] | join(", ")' "$dash")
  [[ -z "$wide" ]] || fail "$name: panels wider than the grid: $wide"
  nods=$(jq -r '[.panels[] | select(.type != "row") | .targets[]
                 | select(.datasource.uid != "${datasource}" or (.expr // "") == "") | .refId]
                | length' "$dash")
  [[ "$nods" == 0 ]] || fail "$name: $nods queries without an expression or not on \${datasource}"

  # --- Every metric name exists --------------------------------------------------
  jq -r '[.panels[] | .targets[]?.expr] + [.templating.list[] | .query | objects | .query] | .[]' \
    "$dash" >"$W/exprs"
  grep -oE '\b(capstan|process)_[a-zA-Z0-9_]+' "$W/exprs" | sort -u >"$W/used"
  missing=$(comm -23 "$W/used" "$W/names" | tr '\n' ' ')
  [[ -z "$missing" ]] || fail "$name uses metrics /metrics does not have: $missing"
  unused=$(comm -13 <(sed -E 's/_(bucket|sum|count)$//' "$W/used" | sort -u) \
    <(grep '^# TYPE' "$W/metrics.txt" | awk '{ print $3 }' | sort -u) | tr '\n' ' ')
  it_log "$name: $(wc -l <"$W/exprs") queries, $(wc -l <"$W/used") metric names, all in /metrics" \
    "(families not on it: ${unused:-none})"
done

# --- Every query returns data in Prometheus ------------------------------------
if ! command -v prometheus >/dev/null 2>&1; then
  it_log "prometheus not installed (package prometheus): queries not evaluated"
  srv_stop main
  it_pass
fi
PROM_PORT=$(it_free_port tcp)
cat >"$W/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: capstan
    static_configs:
      - targets: ["127.0.0.1:${SRV_ADMIN[main]}"]
EOF
prometheus --config.file="$W/prometheus.yml" --storage.tsdb.path="$W/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn </dev/null >"$W/prometheus.log" 2>&1 &
PROM_PID=$!
PROM="http://127.0.0.1:$PROM_PORT"
promq() { curl -sf --max-time 10 --get "$PROM/api/v1/query" --data-urlencode "query=$1"; }
it_wait_for 60 "curl -sf --max-time 2 '$PROM/-/ready' >/dev/null 2>&1" ||
  fail "prometheus not ready: $(tail -n 20 "$W/prometheus.log")"
# Enough samples for rate() over 15 s.
it_wait_for 60 "[[ \$(promq 'count_over_time(up{job=\"capstan\"}[1m])' | jq -r '.data.result[0].value[1] // 0') -ge 4 ]]" ||
  fail "prometheus did not scrape the server: $(tail -n 20 "$W/prometheus.log")"
[[ $(promq 'up{job="capstan"}' | jq -r '.data.result[0].value[1]') == 1 ]] || fail "up{job=\"capstan\"} != 1"
# The $instance variable's values come from capstan_build_info's instance label.
[[ $(promq 'count by (instance) (capstan_build_info)' | jq '.data.result | length') -ge 1 ]] ||
  fail "capstan_build_info has no instance label in Prometheus"
for dash in "${DASHBOARDS[@]}"; do
  name=$(basename "$dash")
  jq -r '.panels[] | select(.type != "row") | .title as $t | .targets[] | [$t, .expr] | @tsv' "$dash" >"$W/queries"
  bad=0 n=0
  while IFS=$'\t' read -r title expr; do
    n=$((n + 1))
    q=${expr//\$__rate_interval/15s}
    q=${q//\$instance/.*}
    out=$(curl -s --max-time 10 --get "$PROM/api/v1/query" --data-urlencode "query=$q")
    if [[ $(jq -r '.status' <<<"$out" 2>/dev/null) != success ]]; then
      echo "  '$title': $(jq -r '.error // .' <<<"$out" 2>/dev/null || echo "$out"): $q" >&2
      bad=$((bad + 1))
    elif [[ $(jq '.data.result | length' <<<"$out") -eq 0 ]]; then
      echo "  '$title': no data: $q" >&2
      bad=$((bad + 1))
    fi
  done <"$W/queries"
  [[ $bad -eq 0 ]] || fail "$name: $bad of $n queries fail or return nothing in Prometheus (above)"
  it_log "$name: all $n queries return data in Prometheus $(prometheus --version 2>&1 | awk 'NR == 1 { print $3 }')"
done
kill -TERM "$PROM_PID"
wait "$PROM_PID" 2>/dev/null
srv_stop main
it_pass

#!/usr/bin/env bash
# End to end on a Kubernetes cluster, the node tier's steps (tests/node/test_feed_on_a_node.py) with
# kubectl and helm only: the chart installs the operator, PostgreSQL and the simulator run as pods
# (backends.yaml), a feed (feed.yaml) makes collector pods that record, `kubectl scale` re-shards it,
# `optionfeed report` (in a pod of the image) must find rows and no unrecorded loss, and
# `helm upgrade` replaces the operator while the feed keeps running.
#
#   .github/kind/e2e.sh            run against the current kubectl context
#   .github/kind/e2e.sh cleanup    delete the feed, the namespace market-data and the release
#
# The optionfeed image must already be on the nodes (kind: `kind load image-archive
# build/image/optionfeed-<version>-amd64.oci.tar`) or pullable; PostgreSQL is the official
# postgres:15 image, pulled. The workflow .github/workflows/ci.yaml (job kind) runs it on a kind
# cluster. Environment:
#   IMAGE              default ghcr.io/optionfeed/optionfeed:<version of pyproject.toml>
#   IMAGE_PULL_POLICY  default Never (the image was loaded); IfNotPresent for a registry
#   RECORD_SECONDS     how long the feed records on 3 shards before the report, default 30
set -euo pipefail
cd "$(dirname "$0")/../.."

HERE=.github/kind
RELEASE=optionfeed
OPERATOR_NAMESPACE=optionfeed-system
NAMESPACE=market-data
FEED=eth
DB_SECRET=optionfeed-db
DATABASE_URL="postgresql://postgres@postgres.$NAMESPACE.svc:5432/postgres"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
IMAGE="${IMAGE:-ghcr.io/optionfeed/optionfeed:$VERSION}"
IMAGE_PULL_POLICY="${IMAGE_PULL_POLICY:-Never}"
RECORD_SECONDS="${RECORD_SECONDS:-30}"
TIMEOUT=180s

started=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }
fail() { echo "e2e: $*" >&2; exit 1; }
k() { kubectl -n "$NAMESPACE" "$@"; }

if [[ "${1:-}" == cleanup ]]; then
    kubectl delete optionfeed "$FEED" -n "$NAMESPACE" --ignore-not-found --wait=true || true
    kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=false
    helm uninstall "$RELEASE" --namespace "$OPERATOR_NAMESPACE" || true
    exit 0
fi

diagnose() {
    echo "--- what the cluster holds" >&2
    kubectl get optionfeeds,deployments,pods,services -A -o wide >&2 || true
    kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 60 >&2 || true
    k describe optionfeed "$FEED" >&2 || true
    echo "--- operator log" >&2
    kubectl -n "$OPERATOR_NAMESPACE" logs -l app.kubernetes.io/component=operator --tail=100 >&2 || true
    echo "--- collector logs" >&2
    k logs -l "optionfeed.io/feed=$FEED" --tail=50 --prefix >&2 || true
}
trap 'status=$?; if (( status != 0 )); then diagnose; fi' EXIT

# until SECONDS WHAT COMMAND...: run COMMAND every 2 s until it succeeds.
until_ok() {
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$(( $(date +%s) + seconds ))
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || fail "timed out after ${seconds}s waiting for $what"
        sleep 2
    done
}

pod_count() { k get pods -l "optionfeed.io/feed=$FEED" --no-headers 2>/dev/null | wc -l; }
has_pods() { [[ "$(pod_count)" == "$1" ]]; }
no_pods() { [[ "$(pod_count)" == 0 ]]; }

# The feed's N shards rolled out, their N collector pods Ready, the feed Ready.
wait_shards() {
    local n=$1
    k wait --for=jsonpath='{.status.readyShards}'="$n" "optionfeed/$FEED" --timeout=$TIMEOUT
    k wait --for=condition=Ready "optionfeed/$FEED" --timeout=$TIMEOUT
    until_ok 180 "$n collector pods" has_pods "$n"
    k wait --for=condition=Ready pod -l "optionfeed.io/feed=$FEED" --timeout=$TIMEOUT
    k get optionfeed "$FEED"
    k get pods -l "optionfeed.io/feed=$FEED" -o wide
}

phase() { k get pod "$1" -o jsonpath='{.status.phase}'; }
finished() { [[ "$(phase "$1")" =~ ^(Succeeded|Failed)$ ]]; }

sql() { k exec deploy/postgres -- psql -U postgres -h 127.0.0.1 -tAc "$1"; }
has_rows() { [[ "$(sql "SELECT count(*) FROM $1")" -gt 0 ]]; }

step "helm install ($IMAGE, pullPolicy $IMAGE_PULL_POLICY)"
# The node tier's values, less its API server address (a kind cluster routes the kubernetes Service).
helm install "$RELEASE" charts/optionfeed --namespace "$OPERATOR_NAMESPACE" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
    --set image.pullPolicy="$IMAGE_PULL_POLICY" --set resyncInterval=10 \
    --wait --timeout $TIMEOUT
kubectl -n "$OPERATOR_NAMESPACE" wait --for=condition=Ready pod \
    -l app.kubernetes.io/component=operator --timeout=$TIMEOUT

step "PostgreSQL and the simulator"
sed -e "s|image: ghcr.io/optionfeed/optionfeed:.*|image: $IMAGE|" \
    -e "s|imagePullPolicy: Never|imagePullPolicy: $IMAGE_PULL_POLICY|" \
    "$HERE/backends.yaml" | kubectl apply -f -
k wait --for=condition=Available deployment/postgres deployment/simulator --timeout=$TIMEOUT

step "the feed: 2 shards"
k create secret generic "$DB_SECRET" --from-literal=url="$DATABASE_URL"
kubectl apply -f "$HERE/feed.yaml"
wait_shards 2
until_ok 120 "the first ticker rows" has_rows option_tickers
echo "option_tickers: $(sql 'SELECT count(*) FROM option_tickers') rows"

step "kubectl scale of/$FEED --replicas=3"
k scale "optionfeed/$FEED" --replicas=3
wait_shards 3
echo "recording for ${RECORD_SECONDS}s"
sleep "$RECORD_SECONDS"
until_ok 120 "the first trade rows" has_rows option_trades

step "suspend: every collector stops cleanly, writing what it received"
k patch optionfeed "$FEED" --type merge -p '{"spec":{"suspend":true}}'
until_ok 120 "every collector pod gone" no_pods

step "optionfeed report, in a pod of the image"
k delete pod optionfeed-report --ignore-not-found --wait=true
k run optionfeed-report --restart=Never --image="$IMAGE" --image-pull-policy="$IMAGE_PULL_POLICY" \
    --command -- optionfeed report --database-url "$DATABASE_URL" --since 1h --json
until_ok 180 "the report pod to finish" finished optionfeed-report
report="$(k logs pod/optionfeed-report)"
[[ "$(phase optionfeed-report)" == Succeeded ]] || fail "optionfeed report failed: $report"
k delete pod optionfeed-report --wait=false
REPORT="$report" python3 - <<'EOF'
import json, os, sys

report = json.loads(os.environ["REPORT"])
totals = report["totals"]
rows = totals["rows"]
print(f"verdict {report['verdict']}; rows {rows}; instruments {totals['instruments']}; "
      f"gaps {totals['gaps']} ({totals['open_gaps']} open, {totals['rows_recovered']} rows "
      f"recovered); missing trades {totals['missing_trades']}; unrecorded {totals['unrecorded']}; "
      f"collectors {len(report['collectors'])}")
problems = []
if rows.get("option_tickers", 0) == 0:
    problems.append("no ticker rows")
if rows.get("option_trades", 0) == 0:
    problems.append("no trade rows")
if totals["unrecorded"] or report["verdict"] in ("no_data", "unrecorded_loss"):
    lost = [c for c in report["channels"] if c["verdict"] in ("no_data", "unrecorded_loss")]
    problems.append(f"verdict {report['verdict']}, {totals['unrecorded']} unrecorded: {lost[:5]}")
if problems:
    sys.exit("e2e: the report shows " + "; ".join(problems))
EOF

step "resume: 3 shards again"
k patch optionfeed "$FEED" --type merge -p '{"spec":{"suspend":false}}'
wait_shards 3

step "helm upgrade: a new operator pod, the feed still Ready"
old="$(kubectl -n "$OPERATOR_NAMESPACE" get pods -l app.kubernetes.io/component=operator \
    -o jsonpath='{.items[0].metadata.name}')"
helm upgrade "$RELEASE" charts/optionfeed --namespace "$OPERATOR_NAMESPACE" \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
    --set image.pullPolicy="$IMAGE_PULL_POLICY" --set resyncInterval=15 \
    --wait --timeout $TIMEOUT
kubectl -n "$OPERATOR_NAMESPACE" wait --for=delete "pod/$old" --timeout=$TIMEOUT
kubectl -n "$OPERATOR_NAMESPACE" wait --for=condition=Ready pod \
    -l app.kubernetes.io/component=operator --timeout=$TIMEOUT
wait_shards 3

step "done"

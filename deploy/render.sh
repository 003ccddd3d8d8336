#!/usr/bin/env bash
# Renders deploy/rbac.yaml and deploy/operator.yaml from the Helm chart in charts/optionfeed, with
# its default values, as release "optionfeed" in namespace optionfeed-system (deploy/namespace.yaml).
# The chart is the one source of the operator's RBAC and Deployment; these files are its rendering
# for `kubectl apply` without Helm. tests/kube/test_chart.py fails when they differ from it.
#
#   deploy/render.sh         rewrite deploy/rbac.yaml and deploy/operator.yaml
#   deploy/render.sh DIR     write the two files to DIR instead
#
# helm is $HELM if set, else the one cached for the tests (tests/harness/build-control-plane.sh),
# else helm on PATH.
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$DEPLOY_DIR")
CHART="$ROOT/charts/optionfeed"
RELEASE=optionfeed
NAMESPACE=optionfeed-system
OUT=${1:-$DEPLOY_DIR}

find_helm() {
    if [[ -n ${HELM:-} ]]; then
        echo "$HELM"
        return
    fi
    local bin_dir
    if bin_dir=$(bash "$ROOT/tests/harness/build-control-plane.sh" --print-bin-dir 2>/dev/null) \
        && [[ -x "${bin_dir##*$'\n'}/helm" ]]; then
        echo "${bin_dir##*$'\n'}/helm"
        return
    fi
    if command -v helm >/dev/null; then
        command -v helm
        return
    fi
    echo "render.sh: no helm: set HELM, run \`make k8s\`, or put helm on PATH" >&2
    exit 1
}

HELM_BIN=$(find_helm)

# render FILE TEMPLATE...: FILE gets a header and the chart's rendering of the templates. The
# labels that say Helm manages an object are left out: whoever applies these files manages them.
render() {
    local file=$1
    shift
    local show_only=()
    local template
    for template in "$@"; do
        show_only+=(--show-only "templates/$template")
    done
    local rendered
    rendered=$("$HELM_BIN" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${show_only[@]}")
    {
        echo "# Rendered from the Helm chart charts/optionfeed by deploy/render.sh (default values,"
        echo "# namespace $NAMESPACE): edit the chart, then run deploy/render.sh. To install without Helm:"
        echo "#   kubectl apply --server-side -f crds/"
        echo "#   kubectl apply -f deploy/namespace.yaml -f deploy/rbac.yaml -f deploy/operator.yaml"
        grep -Ev '^ +(helm\.sh/chart: |app\.kubernetes\.io/managed-by: Helm$)' <<<"$rendered"
    } >"$OUT/$file.tmp"
    mv "$OUT/$file.tmp" "$OUT/$file"
}

mkdir -p "$OUT"
render rbac.yaml serviceaccount.yaml clusterrole.yaml clusterrolebinding.yaml
render operator.yaml deployment.yaml

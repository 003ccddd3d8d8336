#!/usr/bin/env bash
# Build the OTLP receiver that the tracing tests export to, from Go modules, and cache it by
# version outside the work tree:
#   ${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}/otelcol-<OTELCOL_VERSION>/bin/otelcol-optionfeed
#
# It is an OpenTelemetry Collector with only the pieces the tests use: the OTLP receiver (HTTP and
# gRPC) and the file exporter (one OTLP/JSON document per line), so a test reads what arrived.
#
# Usage: build-otel-receiver.sh [--print-bin]
#   Progress goes to stderr; the last line on stdout is the binary's path.
#   --print-bin prints the binary's path and exits 0 if it is built, 1 if not (never builds).
#   Versions can be overridden with OTELCOL_VERSION (collector core) and OTELCOL_CONTRIB_VERSION.
#
# What turned out true on the 2-core machine (go1.26.8, Go module proxy only), 2026-12:
# - The collector core's own distribution (cmd/otelcorecol) is not a published module: the proxy
#   does not serve it. A main module written here that requires the components is what the
#   collector's builder (ocb) would generate, without building the builder first.
# - Jaeger v1.75.0 (`cmd/jaeger`, itself an OpenTelemetry Collector distribution) has a replace
#   directive in its go.mod (sarama), so `go install` refuses it, and it requires some 340
#   modules; it would build from a wrapper module too, but the tests need only a receiver whose
#   spans they can read back, which the file exporter gives. Jaeger was not timed here.
# - `go mod tidy` also resolves the tests of every imported package, and the proxy refuses one of
#   those modules (contrib's otlpencodingextension v0.165.0: "403 Forbidden"), hence `go get`.
# - Cold build with empty module and build caches (GOMODCACHE and GOCACHE pointed at empty
#   directories): 202 s wall, 130 s user + 24 s sys CPU, run at nice 19 while the control-plane
#   build kept the load at 7; on an idle 2-core machine its 154 s of CPU would take about 80 s
#   plus the downloads.
#   193 modules downloaded (139 MB of zips, 503 MB unpacked), Go build cache 592 MB, binary 36 MB.
#   Modules already downloaded, empty build cache, normal priority beside that build: 143 s.
#   A change of the main module below (RECIPE) with warm caches: 10 s. Warm no-op run: 5 ms.
set -Eeuo pipefail

OTELCOL_VERSION="${OTELCOL_VERSION:-v0.165.0}"
OTELCOL_CONTRIB_VERSION="${OTELCOL_CONTRIB_VERSION:-$OTELCOL_VERSION}"

CACHE_ROOT="${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}"
VERSION_DIR="$CACHE_ROOT/otelcol-$OTELCOL_VERSION"
BIN="$VERSION_DIR/bin/otelcol-optionfeed"
STAMP="$VERSION_DIR/build-complete"
# RECIPE counts changes to the main module below: a cached binary built from an older one is rebuilt.
RECIPE=2
STAMP_CONTENT="collector=$OTELCOL_VERSION contrib=$OTELCOL_CONTRIB_VERSION recipe=$RECIPE"

is_complete() {
    [[ -f "$STAMP" && "$(<"$STAMP")" == "$STAMP_CONTENT" && -x "$BIN" ]]
}

if [[ "${1:-}" == "--print-bin" ]]; then
    echo "$BIN"
    is_complete
    exit
fi

if is_complete; then
    echo "OTLP receiver $STAMP_CONTENT already built" >&2
    echo "$BIN"
    exit 0
fi

. "$(dirname "$0")/build-steps.sh"
begin_build build-otel-receiver
go_settings

WORK="$VERSION_DIR/work"
mkdir -p "$(dirname "$BIN")" "$WORK"
rm -f "$STAMP"
log "building $STAMP_CONTENT into $BIN with $(go version)"

cat >"$WORK/go.mod" <<GOMOD
module optionfeed.invalid/otelcol

go 1.26.0

require (
	go.opentelemetry.io/collector/otelcol $OTELCOL_VERSION
	go.opentelemetry.io/collector/receiver/otlpreceiver $OTELCOL_VERSION
	go.opentelemetry.io/collector/service $OTELCOL_VERSION
	github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter $OTELCOL_CONTRIB_VERSION
)
GOMOD

cat >"$WORK/main.go" <<'GO'
// Program otelcol-optionfeed is an OpenTelemetry Collector with an OTLP receiver and a file
// exporter, for optionfeed's tracing tests.
package main

import (
	"os"

	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func components() (otelcol.Factories, error) {
	factories := otelcol.Factories{Telemetry: otelconftelemetry.NewFactory()}
	var err error
	if factories.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory()); err != nil {
		return otelcol.Factories{}, err
	}
	if factories.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](fileexporter.NewFactory()); err != nil {
		return otelcol.Factories{}, err
	}
	return factories, nil
}

func main() {
	set := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol-optionfeed",
			Description: "OTLP receiver for optionfeed's tracing tests",
			Version:     "OTELCOL_VERSION",
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
				},
				// Bare ${VAR} in a config file means an environment variable.
				DefaultScheme: "env",
			},
		},
	}
	if err := otelcol.NewCommand(set).Execute(); err != nil {
		os.Exit(1)
	}
}
GO
sed -i "s/\"OTELCOL_VERSION\"/\"$OTELCOL_VERSION\"/" "$WORK/main.go"

# `go get` rather than `go mod tidy` (see the header): the components at the versions asked for...
log "resolving modules (go get)"
(cd "$WORK" && go get \
    "go.opentelemetry.io/collector/otelcol@$OTELCOL_VERSION" \
    "go.opentelemetry.io/collector/receiver/otlpreceiver@$OTELCOL_VERSION" \
    "go.opentelemetry.io/collector/service@$OTELCOL_VERSION" \
    "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$OTELCOL_CONTRIB_VERSION")
# ...then the rest of what main.go's packages import, at the versions those modules require.
(cd "$WORK" && go get .)
log "compiling"
(cd "$WORK" && with_heartbeat "otelcol-optionfeed" go build -trimpath -ldflags "-s -w" -o "$BIN" .)

out="$("$BIN" --version 2>&1)"
[[ "$out" == *"${OTELCOL_VERSION#v}"* ]] || { log "$BIN --version reports: $out"; exit 1; }

echo "$STAMP_CONTENT" >"$STAMP"
log "complete: $(du -sh "$BIN" | cut -f1)"
echo "$BIN"

//go:build tools

// Package tools pins promtool's module (and, through go.sum, every module it
// builds from) for hack/install-promtool.sh. Prometheus's own go.mod has
// `exclude` directives, so `go install ...promtool@version` refuses to build
// it; as a dependency of this module it builds with the versions pinned here.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"

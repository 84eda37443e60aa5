// Package deploy holds what operators apply besides the Helm chart: plain
// Kubernetes manifests for the sidecar pattern, and proxy recipes for
// ingress-nginx, Traefik, nginx and Envoy. It has no Go code; its tests
// render the chart in charts/portcullis with a real helm, decode every
// manifest into the Kubernetes API types, load every Portcullis
// configuration with the binary itself, check that the proxy recipes name
// endpoints a running Portcullis serves, and check that scripts/build.sh
// builds the static binary the Dockerfile builds.
package deploy

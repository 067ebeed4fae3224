// Package check validates contrib/kubernetes's manifests offline; it is its
// own module, so that Kubernetes' API types stay out of baton's
// dependencies.
//
// kubectl cannot do this without a cluster: `kubectl apply --dry-run=client`
// and `kubectl create --dry-run=client` both ask the API server for its
// resource list (and `--validate` for its OpenAPI schema) before they look at
// a file. So the test decodes every document strictly into Kubernetes' own Go
// types (k8s.io/api: an unknown or misspelt field, a wrong type or a kind
// this package does not know fails), checks that the pieces fit together
// (selectors, named ports, the probes on metrics_bind's port), runs the
// ConfigMap's baton.toml through the real `baton check`, and checks that
// terminationGracePeriodSeconds exceeds shutdown_delay + graceful_timeout.
//
//	cd contrib/kubernetes/check && go test ./...
package check
